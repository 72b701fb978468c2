"""What a CTM call can fail with and whether it is retried (docs/reference.md 4.4, 5): typed errors,
the rules typing an answer, the retry policy and quota, and secrets scrubbed from messages."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cckm_refresh import backoff
from cckm_refresh.text import MAX_MESSAGE

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 4  # shorter values would scrub ordinary words out of CTM's messages
MAX_REGISTERED_SECRETS = 256  # JWTs are registered every few minutes: the oldest go

_secrets: dict[str, None] = {}  # insertion-ordered: the oldest first
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from every CtmError message from now on; again: the newest, not evicted."""
    if value is None or len(value) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        _secrets.pop(value, None)
        _secrets[value] = None
        while len(_secrets) > MAX_REGISTERED_SECRETS:
            del _secrets[next(iter(_secrets))]


def forget_secrets() -> None:
    """Empty the registry (for tests)."""
    with _secrets_lock:
        _secrets.clear()


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced, and a secret's start ending a text as long
    as the message limit (it may have been cut inside the secret)."""
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)  # a secret may contain another
    for secret in known:
        text = text.replace(secret, REDACTED)
    if len(text) >= MAX_MESSAGE:
        cut = max((_start_at_end(text, secret) for secret in known), default=0)
        if cut:
            text = text[:-cut] + REDACTED
    return text


def _start_at_end(text: str, secret: str) -> int:
    """The length of the longest start of ``secret`` (at least the minimum) ending ``text``."""
    tail = text[-MIN_SECRET_LENGTH:]
    longest, at = 0, secret.find(tail)
    while at != -1:
        length = at + MIN_SECRET_LENGTH
        if length < len(secret) and text.endswith(secret[:length]):
            longest = length
        at = secret.find(tail, at + 1)
    return longest


class CtmError(Exception):
    """Base class. ``transient`` errors may be retried; the others are permanent."""

    transient = False

    def __init__(
        self, message: str, *, error_code: str, http_status: int | None = None, attempts: int = 1
    ) -> None:
        message = scrub(message)[:MAX_MESSAGE]
        super().__init__(message)
        self.message = message
        self.error_code = scrub(error_code)
        self.http_status = http_status
        self.attempts = attempts

    def copy(self, kind: type[CtmError] | None = None, message: str | None = None) -> CtmError:
        """A fresh instance (a traceback is per raise), optionally of another kind or message."""
        return (kind or type(self))(
            self.message if message is None else message,
            error_code=self.error_code,
            http_status=self.http_status,
            attempts=self.attempts,
        )


class CtmTransientError(CtmError):
    """Connection errors, timeouts, 429, 5xx, throttling passed through; a 401 on a fresh JWT."""

    transient = True


class CtmThrottledError(CtmTransientError):
    """OCI or CTM said too many requests; the pacer slows down on it."""


class CtmTimeoutError(CtmTransientError):
    """No answer within the attempt's time limit."""


class CtmConnectionError(CtmTransientError):
    """The connection could not be made or was dropped."""


class CtmSecretUnavailableError(CtmTransientError):
    """Secrets Manager could not be read just now (throttling, network)."""


class RetryBudgetExhaustedError(CtmTransientError):
    """Too many retries in a short window: stop amplifying an outage."""


class CtmDeadlineError(CtmTransientError):
    """No attempt could start (or finish) before the caller's deadline (``DEADLINE``)."""


class CtmPermanentError(CtmError):
    """400, 403, 409, 422, OCI's NotAuthorizedOrNotFound: retrying will not change them."""


class CtmNotFoundError(CtmPermanentError):
    """CCKM does not know the key: 404 without OCI's words, or ``gone: true`` (``GONE``)."""


class CtmAuthError(CtmPermanentError):
    """A 401; from the token endpoint (or a 400, 403 there), the credentials are refused."""


class CtmTokenExpiredError(CtmAuthError):
    """CTM refused the secret's own JWT; only a refresh token or a password can renew one."""


class CtmTlsError(CtmPermanentError):
    """CTM's certificate did not verify. Never retried without verification."""


class CtmCredentialsError(CtmPermanentError):
    """The secret holds no usable way to authenticate (or is malformed)."""


class CtmBadResponseError(CtmPermanentError):
    """CTM answered 2xx with a body that is not what the call returns (``BAD_RESPONSE``)."""


class CtmListingError(CtmPermanentError):
    """The key list cannot be read completely (``LISTING_INCOMPLETE``); the message says why."""


def bad_response(what: str, status: int, problem: str, attempts: int = 1) -> CtmBadResponseError:
    message = f"{what} answered HTTP {status} with {problem}"
    return CtmBadResponseError(
        message, error_code="BAD_RESPONSE", http_status=status, attempts=attempts
    )


SUCCESS_STATUSES = frozenset({200, 201, 202, 203, 204, 206})
# OCI's words passed through by CCKM decide, whatever status CCKM chose (first match wins),
# and name the error when a code is given. NotAuthorizedOrNotFound: OCI cannot tell a deleted
# key from a refused one, and a lost policy must not read as keys gone: permanent, even a 5xx.
BODY_RULES: tuple[tuple[str, type[CtmError], str | None], ...] = (
    ("NotAuthorizedOrNotFound", CtmPermanentError, "NotAuthorizedOrNotFound"),
    ("TooManyRequests", CtmThrottledError, None),
    ("Vault must be in one of the following states", CtmTransientError, None),
)
# Without a body rule (any other status is permanent). Every 5xx passes: CTM is a cluster behind
# a load balancer, and CCKM wraps OCI's errors. A 401 is the JWT's: the transport re-sends it
# with the newest one, or once after a renewal.
STATUS_RULES: dict[int, type[CtmError]] = dict.fromkeys(range(500, 600), CtmTransientError)
STATUS_RULES |= {429: CtmThrottledError, 401: CtmAuthError, 404: CtmNotFoundError}
# error_code when neither a rule nor CTM's codeDesc names the error: else HTTP_<status>
DEFAULT_CODES = {CtmThrottledError: "THROTTLED", CtmAuthError: "UNAUTHORIZED"}


def error_for_response(what: str, status: int, text: str) -> CtmError | None:
    """The typed error of an answer: None for a success, whatever its body says (a key's tags
    may say anything); ``error_code`` the rule's, else CTM's codeDesc, else a default."""
    if status in SUCCESS_STATUSES:
        return None
    kind, code = next(
        ((kind, code) for marker, kind, code in BODY_RULES if marker in text),
        (STATUS_RULES.get(status, CtmPermanentError), None),
    )
    code_name, message = ctm_error_fields(text)
    code = code or code_name or DEFAULT_CODES.get(kind, f"HTTP_{status}")
    summary = f"{what} answered HTTP {status}" + (f" {code}" if code != f"HTTP_{status}" else "")
    summary += f": {message}" if message else ""
    return kind(summary, error_code=code, http_status=status)


_CODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)bearer\s+\S+")


def ctm_error_fields(text: str) -> tuple[str | None, str | None]:
    """``(codeDesc name, message)`` of a CTM error body, each None when absent, no JWT or bearer
    quoted. Bodies not in CTM's JSON shape give nothing: a proxy's page might echo headers."""
    try:
        document = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    code_desc, message = document.get("codeDesc"), document.get("message")
    name = code_desc.split(":")[0].strip() if isinstance(code_desc, str) else ""
    code_name = name if _CODE_NAME.fullmatch(name) else None
    if not isinstance(message, str) or not message.strip():
        return code_name, None
    message = _BEARER.sub("Bearer [redacted]", _JWT_LIKE.sub(REDACTED, message.strip()))
    return code_name, message[:MAX_MESSAGE]


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts of one call and the back-off between them. ``base_delay`` 0.5 s is Terraform's
    CCKM retry (0.5/1/2/4 s); ``max_delay`` 20 s keeps a wait within one CTM_TIMEOUT_SECONDS."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, retry: int, rng: Callable[[], float]) -> float:
        return backoff.full_jitter(retry, self.base_delay, self.max_delay, rng)


class RetryBudget:
    """botocore's retry quota: a retry takes ``retry_cost`` (``timeout_cost`` after a timeout);
    a call that succeeds gives back what it took, or ``success_refund``."""

    def __init__(self, capacity: int = 500, retry_cost: int = 5, timeout_cost: int = 10) -> None:
        self.capacity, self.retry_cost, self.timeout_cost = capacity, retry_cost, timeout_cost
        self.success_refund = 1
        self.available = capacity
        self._lock = threading.Lock()

    def acquire(self, *, after_timeout: bool) -> int:
        """The cost of one retry, taken; 0 when the budget cannot pay (no retry)."""
        cost = self.timeout_cost if after_timeout else self.retry_cost
        with self._lock:
            if cost > self.available:
                return 0
            self.available -= cost
            return cost

    def release(self, spent: int) -> None:
        with self._lock:
            self.available = min(self.capacity, self.available + (spent or self.success_refund))
