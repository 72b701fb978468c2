"""The CipherTrust Manager client: ``client.CtmClient.create(...)`` wires the parts, each
module owning one concern. Nothing is imported here: handlers import ``ctm.errors`` at cold
start, and ``requests`` only when a client is built."""
