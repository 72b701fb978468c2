"""Which CTM answers are retried, how long to wait, and when to stop (docs/reference.md 4.4).

As botocore's standard retry mode: what an answer means is data (``BODY_RULES``, then
``STATUS_RULES``), the wait is capped exponential back-off with full jitter, and a quota
shared by the client's calls turns an outage into fast failures instead of a retry storm.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from cckm_refresh import backoff

SUCCESS_STATUSES = frozenset({200, 201, 202, 203, 204, 206})
GONE_FIELD, GONE_ERROR_CODE = "gone", "GONE"  # a 2xx key object CCKM knows is gone from OCI


class Verdict(Enum):
    OK = "ok"
    THROTTLED = "throttled"  # transient, and the pacer slows down
    TRANSIENT = "transient"
    UNAUTHORIZED = "unauthorized"  # the JWT: the newest one, or one renewal, then transient
    NOT_FOUND = "not_found"
    PERMANENT = "permanent"

    @property
    def transient(self) -> bool:
        return self in (Verdict.THROTTLED, Verdict.TRANSIENT)


@dataclass(frozen=True)
class BodyRule:
    """OCI's words passed through by CCKM decide, whatever HTTP status CCKM chose."""

    marker: str
    verdict: Verdict
    error_code: str | None = None  # None: CTM's codeDesc, else the verdict's default


# First match wins. NotAuthorizedOrNotFound: OCI cannot tell a deleted key from a refused one,
# and a lost policy must not read as keys gone, so it is a permanent failure, even in a 5xx.
BODY_RULES = (
    BodyRule("NotAuthorizedOrNotFound", Verdict.PERMANENT, "NotAuthorizedOrNotFound"),
    BodyRule("TooManyRequests", Verdict.THROTTLED),
    BodyRule("Vault must be in one of the following states", Verdict.TRANSIENT),
)
# Without a body rule (first match wins); any other status is permanent. Every 5xx passes:
# CTM is a cluster behind a load balancer, and CCKM wraps OCI's errors.
STATUS_RULES = (
    (frozenset({429}), Verdict.THROTTLED),
    (frozenset(range(500, 600)), Verdict.TRANSIENT),
    (frozenset({401}), Verdict.UNAUTHORIZED),
    (frozenset({404}), Verdict.NOT_FOUND),
)


def body_rule(status: int, body: str) -> BodyRule | None:
    """The rule an error answer's body triggers (never a 2xx: a key's tags may say anything)."""
    if status in SUCCESS_STATUSES:
        return None
    return next((rule for rule in BODY_RULES if rule.marker in body), None)


def classify(status: int, body: str) -> Verdict:
    if status in SUCCESS_STATUSES:
        return Verdict.OK
    rule = body_rule(status, body)
    if rule is not None:
        return rule.verdict
    return next((v for statuses, v in STATUS_RULES if status in statuses), Verdict.PERMANENT)


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts of one call and the back-off between them.

    ``base_delay`` 0.5 s is Terraform's CCKM retry (0.5/1/2/4 s); ``max_delay`` 20 s keeps one
    wait within one default ``CTM_TIMEOUT_SECONDS`` while OCI throttling gets air.
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or not 0 <= self.base_delay <= self.max_delay:
            raise ValueError("need max_attempts >= 1 and 0 <= base_delay <= max_delay")

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (0 for the first)."""
        return backoff.ceiling(retry, self.base_delay, self.max_delay)

    def delay(self, retry: int, rng: Callable[[], float]) -> float:
        return backoff.full_jitter(retry, self.base_delay, self.max_delay, rng)


class RetryBudget:
    """botocore's retry quota: each retry takes ``retry_cost`` (``timeout_cost`` after a timeout,
    which held a connection for a whole timeout); a call that succeeds gives back what it took,
    or ``success_refund``. When the bucket cannot pay, the call fails at once."""

    def __init__(
        self,
        capacity: int = 500,
        retry_cost: int = 5,
        timeout_cost: int = 10,
        success_refund: int = 1,
    ) -> None:
        self.capacity, self.retry_cost = capacity, retry_cost
        self.timeout_cost, self.success_refund = timeout_cost, success_refund
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
