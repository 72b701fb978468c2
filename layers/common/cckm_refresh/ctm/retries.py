"""Which CTM answers are retried, how long to wait, and when to stop (CONTRACT 4.4).

The shape follows botocore's ``retries/standard.py``: retryable conditions are data, the
backoff is capped exponential with full jitter, and a retry budget shared by the whole client
turns an outage into fast failures instead of a retry storm.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from cckm_refresh import backoff

SUCCESS_STATUSES = frozenset({200, 201, 202, 203, 204, 206})
THROTTLE_STATUSES = frozenset({429})
# Every 5xx is transient: CTM is a cluster behind a load balancer, and CCKM wraps OCI errors.
TRANSIENT_STATUSES = frozenset(range(500, 600))
NOT_FOUND_STATUSES = frozenset({404})
UNAUTHORIZED_STATUSES = frozenset({401})
# OCI's throttling error code, passed through by CCKM with whatever HTTP status it chooses
# (Terraform's provider matches on this text for the same reason).
THROTTLE_BODY_MARKER = "TooManyRequests"
# OCI's answer for a key it does not have or will not show, passed through by CCKM under
# whatever status CCKM picks (404, 400, 409, even 500): the key is gone, retrying cannot help.
NOT_FOUND_BODY_MARKER = "NotAuthorizedOrNotFound"
# OCI's answer while the vault is being updated: it passes (Terraform's provider retries it).
VAULT_BUSY_BODY_MARKER = "Vault must be in one of the following states"
# A 2xx key object with this field true is a key CCKM knows is deleted in OCI.
GONE_FIELD = "gone"
GONE_ERROR_CODE = "GONE"


class Verdict(Enum):
    """What one HTTP answer means for the call."""

    OK = "ok"
    THROTTLED = "throttled"  # transient, and the pacer should slow down
    TRANSIENT = "transient"
    UNAUTHORIZED = "unauthorized"  # re-authenticate once, then permanent
    NOT_FOUND = "not_found"
    PERMANENT = "permanent"

    @property
    def transient(self) -> bool:
        return self in (Verdict.THROTTLED, Verdict.TRANSIENT)


@dataclass(frozen=True)
class BodyRule:
    """An error body naming a condition decides the verdict, whatever the HTTP status."""

    marker: str
    verdict: Verdict
    error_code: str | None = None  # the result's error_code; None: CTM's codeDesc or HTTP_<n>


# Checked in order, first match wins: a vanished key is not retried even if CCKM wrapped it
# in a 5xx; throttling slows the pacer down, a busy vault is only retried.
BODY_RULES = (
    BodyRule(NOT_FOUND_BODY_MARKER, Verdict.NOT_FOUND, NOT_FOUND_BODY_MARKER),
    BodyRule(THROTTLE_BODY_MARKER, Verdict.THROTTLED),
    BodyRule(VAULT_BUSY_BODY_MARKER, Verdict.TRANSIENT),
)


def body_rule(status: int, body: str) -> BodyRule | None:
    """The rule an error answer's body triggers, if any (never for a 2xx answer)."""
    if status in SUCCESS_STATUSES:
        return None
    return next((rule for rule in BODY_RULES if rule.marker in body), None)


# Without a body rule, the status decides (first match wins); anything else is permanent.
STATUS_RULES = (
    (THROTTLE_STATUSES, Verdict.THROTTLED),
    (TRANSIENT_STATUSES, Verdict.TRANSIENT),
    (UNAUTHORIZED_STATUSES, Verdict.UNAUTHORIZED),
    (NOT_FOUND_STATUSES, Verdict.NOT_FOUND),
)


def classify(status: int, body: str) -> Verdict:
    """Classify an answer by its status and body text (CONTRACT 4.4)."""
    # A 2xx body is a key object whose names or tags may say anything, even TooManyRequests.
    if status in SUCCESS_STATUSES:
        return Verdict.OK
    rule = body_rule(status, body)
    if rule is not None:
        return rule.verdict
    return next((v for statuses, v in STATUS_RULES if status in statuses), Verdict.PERMANENT)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and backoff of one call.

    ``base_delay`` 0.5 s matches Terraform's CCKM retry (0.5/1/2/4 s); ``max_delay`` 20 s keeps
    one wait no longer than one default ``CTM_TIMEOUT_SECONDS``, so a call with the maximum
    10 attempts still ends well inside a Lambda's 15 minutes, while OCI throttling (which
    recommends backing off up to 60 s) gets several seconds of air per retry.
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < self.base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")

    def ceiling(self, retry: int) -> float:
        """The upper bound of the wait before retry number ``retry`` (0 for the first retry)."""
        # min() before the power would overflow for large retry numbers: clamp the exponent.
        return backoff.ceiling(retry, self.base_delay, self.max_delay)

    def delay(self, retry: int, rng: Callable[[], float]) -> float:
        """Full jitter: uniform in [0, ceiling(retry)], with ``rng`` uniform in [0, 1)."""
        return backoff.full_jitter(retry, self.base_delay, self.max_delay, rng)


class RetryBudget:
    """A token bucket of retries shared by every call of one client (botocore's retry quota).

    Each retry takes ``retry_cost`` (``timeout_cost`` after a timeout, which held a connection
    for a whole timeout); a call that succeeds gives back what it took, or ``success_refund``
    when it took nothing. When the bucket cannot pay for a retry, the call fails at once.
    """

    def __init__(
        self,
        capacity: int = 500,
        retry_cost: int = 5,
        timeout_cost: int = 10,
        success_refund: int = 1,
    ) -> None:
        self.capacity = capacity
        self.retry_cost = retry_cost
        self.timeout_cost = timeout_cost
        self.success_refund = success_refund
        self._available = capacity
        self._lock = threading.Lock()

    @property
    def available(self) -> int:
        return self._available

    def acquire(self, *, after_timeout: bool) -> int:
        """Take the cost of one retry; return it, or 0 when the budget cannot pay."""
        cost = self.timeout_cost if after_timeout else self.retry_cost
        with self._lock:
            if cost > self._available:
                return 0
            self._available -= cost
            return cost

    def release(self, spent: int) -> None:
        """A call succeeded after spending ``spent``: give it back (or the small refund)."""
        with self._lock:
            self._available = min(self.capacity, self._available + (spent or self.success_refund))
