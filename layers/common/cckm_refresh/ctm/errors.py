"""Typed CTM errors: one class per failure class, each carrying the contract's ``error_code``.

Messages never contain a credential or a JWT: they are built from the status, CTM's
``codeDesc``/``message`` and our own words only.
"""

from __future__ import annotations

MAX_MESSAGE = 1000


class CtmError(Exception):
    """Base class. ``transient`` errors may be retried; the others are permanent."""

    transient = False

    def __init__(
        self,
        message: str,
        *,
        error_code: str,
        http_status: int | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message[:MAX_MESSAGE])
        self.message = message[:MAX_MESSAGE]
        self.error_code = error_code
        self.http_status = http_status
        self.attempts = attempts


class CtmTransientError(CtmError):
    """Connection errors, timeouts, 429, 5xx and OCI ``TooManyRequests`` passed through."""

    transient = True


class CtmThrottledError(CtmTransientError):
    """OCI or CTM said too many requests; the rate limiter slows down on it."""


class CtmTimeoutError(CtmTransientError):
    """The call did not answer within ``CTM_TIMEOUT_SECONDS``."""


class CtmConnectionError(CtmTransientError):
    """The connection could not be made or was dropped."""


class CtmPermanentError(CtmError):
    """400, 403, 409, 422 and other answers that retrying will not change."""


class CtmNotFoundError(CtmPermanentError):
    """404: the key is not (or no longer) known to CCKM."""


class CtmAuthError(CtmPermanentError):
    """401 that survived one re-authentication, or credentials CTM refused."""


class CtmTokenExpiredError(CtmAuthError):
    """A bare JWT in the secret has expired; only a refresh token or a password can renew it."""


class CtmTlsError(CtmPermanentError):
    """CTM's certificate did not verify. Never silently retried without verification."""


class CtmCredentialsError(CtmPermanentError):
    """The secret holds no usable way to authenticate (or is malformed)."""


class CtmSecretUnavailableError(CtmTransientError):
    """Secrets Manager could not be read just now (throttling, network): try again later."""


class RetryBudgetExhaustedError(CtmTransientError):
    """Too many retries in a short window: stop amplifying an outage."""
