"""Which CTM answers are retried, how long to wait, when to stop (docs/reference.md 4.4), as
botocore's standard retry mode: conditions are data (the error class an answer raises), capped
exponential back-off with full jitter, and a quota shared by a client's calls."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from cckm_refresh import backoff
from cckm_refresh.ctm.errors import (
    CtmAuthError,
    CtmError,
    CtmNotFoundError,
    CtmPermanentError,
    CtmThrottledError,
    CtmTransientError,
    ctm_error_fields,
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
# Without a body rule (first match wins; any other status is permanent). Every 5xx passes: CTM
# is a cluster behind a load balancer, and CCKM wraps OCI's errors. A 401 is the JWT's: the
# transport re-sends it with the newest one, or once after a renewal.
STATUS_RULES: tuple[tuple[range, type[CtmError]], ...] = (
    (range(429, 430), CtmThrottledError),
    (range(500, 600), CtmTransientError),
    (range(401, 402), CtmAuthError),
    (range(404, 405), CtmNotFoundError),
)
# error_code when neither a rule nor CTM's codeDesc names the error: else HTTP_<status>
DEFAULT_CODES: dict[type[CtmError], str] = {
    CtmThrottledError: "THROTTLED",
    CtmAuthError: "UNAUTHORIZED",
}


def error_for_response(what: str, status: int, text: str) -> CtmError | None:
    """The typed error of an answer: None for a success, whatever its body says (a key's tags
    may say anything); ``error_code`` the rule's, else CTM's codeDesc, else a default."""
    if status in SUCCESS_STATUSES:
        return None
    by_status = next((kind for statuses, kind in STATUS_RULES if status in statuses), None)
    kind, code = next(
        ((kind, code) for marker, kind, code in BODY_RULES if marker in text),
        (by_status or CtmPermanentError, None),
    )
    code_name, message = ctm_error_fields(text)
    code = code or code_name or DEFAULT_CODES.get(kind, f"HTTP_{status}")
    summary = f"{what} answered HTTP {status}" + (f" {code}" if code != f"HTTP_{status}" else "")
    summary += f": {message}" if message else ""
    return kind(summary, error_code=code, http_status=status)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts of one call and the back-off between them. ``base_delay`` 0.5 s is Terraform's
    CCKM retry (0.5/1/2/4 s); ``max_delay`` 20 s keeps a wait within one CTM_TIMEOUT_SECONDS."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or not 0 <= self.base_delay <= self.max_delay:
            raise ValueError("need max_attempts >= 1 and 0 <= base_delay <= max_delay")

    def delay(self, retry: int, rng: Callable[[], float]) -> float:
        """The wait before retry number ``retry`` (0 for the first), ``rng`` uniform in [0, 1)."""
        return backoff.full_jitter(retry, self.base_delay, self.max_delay, rng)


class RetryBudget:
    """botocore's retry quota: a retry takes ``retry_cost`` (``timeout_cost`` after a timeout,
    which held a connection for a whole timeout); a call that succeeds gives back what it took,
    or ``success_refund``. When the bucket cannot pay, the call fails at once."""

    def __init__(self, capacity: int = 500, retry_cost: int = 5, timeout_cost: int = 10) -> None:
        self.capacity, self.retry_cost, self.timeout_cost = capacity, retry_cost, timeout_cost
        self.success_refund = 1
        self.available = capacity
        self._lock = threading.Lock()

    def acquire(self, *, after_timeout: bool) -> int:
        """Take the cost of one retry; return it, or 0 when the budget cannot pay."""
        cost = self.timeout_cost if after_timeout else self.retry_cost
        with self._lock:
            if cost > self.available:
                return 0
            self.available -= cost
            return cost

    def release(self, spent: int) -> None:
        with self._lock:
            self.available = min(self.capacity, self.available + (spent or self.success_refund))
