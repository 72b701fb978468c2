"""The CipherTrust Manager client, wired by ``client.CtmClient.create``. Nothing is imported here:
handlers import ``ctm.errors`` at cold start, and ``requests`` only when a client is built."""
