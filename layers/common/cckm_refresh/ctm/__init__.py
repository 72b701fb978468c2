"""CipherTrust Manager client: authentication, transport, typed errors and CCKM OCI operations.

``CtmClient.create(...)`` wires the parts; ``auth`` (TokenSource), ``transport`` (session,
TLS, retries), ``retries`` (classification, backoff, budget) and ``credentials`` (the secret)
each hold one concern.
"""

from cckm_refresh.ctm.auth import TokenSource
from cckm_refresh.ctm.client import SELECTOR_FILTERS, CtmClient
from cckm_refresh.ctm.credentials import CtmCredentials
from cckm_refresh.ctm.transport import CtmResponse, Transport

__all__ = [
    "SELECTOR_FILTERS",
    "CtmClient",
    "CtmCredentials",
    "CtmResponse",
    "TokenSource",
    "Transport",
]
