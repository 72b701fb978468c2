"""CipherTrust Manager client: authentication, transport, typed errors and CCKM OCI operations.

``client.CtmClient.create(...)`` wires the parts; ``auth`` (TokenSource), ``transport``
(session, TLS, retries), ``retries`` (classification, backoff, budget) and ``credentials``
(the secret) each hold one concern. Nothing is imported here: the handlers import
``ctm.errors`` and ``keyids`` at cold start, and ``requests`` only when a client is built.
"""
