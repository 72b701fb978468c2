"""Typed CTM errors: one class per failure class, each carrying the contract's ``error_code``.

Messages never contain a credential or a JWT: they are built from the status, CTM's
``codeDesc``/``message`` and our own words only, and CTM's words may quote what it was sent,
so every error scrubs the secrets registered with ``register_secret`` from its message.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping

from cckm_refresh.ctm.retries import Verdict, body_rule
from cckm_refresh.text import MAX_MESSAGE

REDACTED = "[redacted]"
# Shorter values would scrub ordinary words out of CTM's messages (and say little anyway).
MIN_SECRET_LENGTH = 4
# JWTs are registered every few minutes in a warm container: the oldest, long expired, go.
MAX_REGISTERED_SECRETS = 256

_secrets: dict[str, None] = {}  # insertion-ordered: the oldest first
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from every CtmError message from now on (process-wide, thread-safe).

    Registering a value again makes it the newest, so the secret in use is never evicted.
    """
    if value is None or len(value) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        _secrets.pop(value, None)
        _secrets[value] = None
        while len(_secrets) > MAX_REGISTERED_SECRETS:
            del _secrets[next(iter(_secrets))]


def forget_secrets() -> None:
    """Empty the registry (tests: one process runs many secrets' worth of runs)."""
    with _secrets_lock:
        _secrets.clear()


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]``.

    A text as long as the message limit may have been cut inside a secret: if it ends with
    the start of one, that start goes too.
    """
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)  # a secret may contain another
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if len(text) >= MAX_MESSAGE:
        cut = max((_cut_secret_at_end(text, secret) for secret in known), default=0)
        if cut:
            text = text[:-cut] + REDACTED
    return text


def _cut_secret_at_end(text: str, secret: str) -> int:
    """The length of the longest start of ``secret`` (at least the minimum) ending ``text``."""
    tail = text[-MIN_SECRET_LENGTH:]
    longest, start = 0, secret.find(tail)
    while start != -1:
        length = start + MIN_SECRET_LENGTH
        if length < len(secret) and text.endswith(secret[:length]):
            longest = length
        start = secret.find(tail, start + 1)
    return longest


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
        message = scrub(message)[:MAX_MESSAGE]
        super().__init__(message)
        self.message = message
        self.error_code = scrub(error_code)
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


class CtmDeadlineError(CtmTransientError):
    """No attempt could start (or finish) before the caller's deadline: the key stays PENDING."""


class CtmBadResponseError(CtmPermanentError):
    """CTM answered 2xx with a body that is not what the call returns (``BAD_RESPONSE``)."""


# --- CTM's answers as typed errors (hvac's ``exceptions.py``: the status, CTM's body, the class)

_CODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)bearer\s+\S+")


def redact(text: str) -> str:
    """Remove anything shaped like a JWT or a bearer credential from ``text``."""
    return _BEARER.sub("Bearer [redacted]", _JWT_LIKE.sub("[redacted]", text))


def ctm_error_fields(text: str) -> tuple[str | None, str | None]:
    """``(codeDesc name, message)`` from a CTM error body, each None when absent.

    ``"NCERRResourceNotFound: Resource not found"`` gives ``NCERRResourceNotFound``. Bodies that
    are not CTM's JSON shape give nothing: an unknown body (a proxy's page) might echo headers.
    """
    try:
        document = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    code_name = None
    code_desc = document.get("codeDesc")
    if isinstance(code_desc, str):
        candidate = code_desc.split(":", 1)[0].strip()
        if _CODE_NAME.fullmatch(candidate):
            code_name = candidate
    message = document.get("message")
    if not isinstance(message, str) or not message.strip():
        return code_name, None
    return code_name, redact(message.strip())[:MAX_MESSAGE]


_ERROR_CLASSES: Mapping[Verdict, type[CtmError]] = {
    Verdict.THROTTLED: CtmThrottledError,
    Verdict.TRANSIENT: CtmTransientError,
    Verdict.UNAUTHORIZED: CtmAuthError,
    Verdict.NOT_FOUND: CtmNotFoundError,
    Verdict.PERMANENT: CtmPermanentError,
}


def error_for_response(what: str, status: int, text: str, verdict: Verdict) -> CtmError:
    """The typed error for a non-successful answer; ``error_code`` is CTM's codeDesc if any."""
    code_name, message = ctm_error_fields(text)
    rule = body_rule(status, text)
    if rule is not None and rule.error_code is not None:
        code_name = rule.error_code  # OCI's own name for the condition says more than CTM's
    default_code = {Verdict.THROTTLED: "THROTTLED", Verdict.UNAUTHORIZED: "UNAUTHORIZED"}.get(
        verdict, f"HTTP_{status}"
    )
    summary = f"{what} answered HTTP {status}"
    if code_name:
        summary += f" {code_name}"
    if message:
        summary += f": {message}"
    return _ERROR_CLASSES[verdict](
        summary, error_code=code_name or default_code, http_status=status
    )
