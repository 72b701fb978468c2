"""CipherTrust Manager client: authentication, transport, typed errors and CCKM OCI operations."""
