"""Each OCI tenancy's pace: when its next refresh attempt may leave (first tries and retries).

OCI allows 10 key-management reads per second per tenancy and one refresh costs at least two,
so attempts are spaced ``1 / (rate x headroom)`` apart: a call leaves on its slot but reaches
OCI a few milliseconds early or late, and pacing exactly at OCI's limit turns that jitter into
throttles (measured: 5.2 % of calls throttled at headroom 1.0, 1.3 % at 0.97, none at 0.95).

A tenancy's slots are derived, never accumulated: the next one is one spacing after its
latest attempt (or after a throttle's penalty), plus one spacing per call handed out and not
yet sent (``reserve_by``). A call reserves only a slot it will leave on; a reservation given
back (``release``) or claimed (``claim_by``) moves the schedule back or on by one spacing, so
the schedule never runs ahead of real time by more than the calls really waiting. Calls
claim the earliest slot, whichever they reserved: calls held up together (by a JWT being
fetched) leave one spacing apart in whatever order their threads wake.

A ``TooManyRequests`` multiplies the tenancy's rate by ``decrease`` (never below ``min_rate``)
and holds its next slot back one spacing; each answered call wins back ``recovery_step``,
up to the configured rate (botocore's standard mode: additive increase, multiplicative
decrease). A limiter lives in one container; the time of a tenancy's latest attempt crosses
to its next invocation's container through the table (``seconds_since_sent``/``sent_ago``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from cckm_refresh.runtime import SYSTEM, Deadline, Runtime

UNKNOWN_TENANCY = "~unknown"
NEVER = float("-inf")


@dataclass
class _Bucket:
    rate: float
    last_sent: float = NEVER  # when the tenancy's latest attempt left
    not_before: float = NEVER  # a throttle holds the next slot back until then
    reserved: int = 0  # calls handed out with a slot, not yet sent
    throttled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class TenancyRateLimiter:
    """Every tenancy's slots; thread-safe; the runtime's clock."""

    def __init__(
        self,
        rate: float,
        *,
        min_rate: float | None = None,
        headroom: float = 0.95,
        decrease: float = 0.75,
        recovery_step: float | None = None,
        runtime: Runtime = SYSTEM,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if not 0 < headroom <= 1 or not 0 < decrease < 1:
            raise ValueError("headroom must be in (0, 1] and decrease in (0, 1)")
        self.max_rate = rate
        self.min_rate = min_rate if min_rate is not None else max(rate / 8, 0.1)
        self.headroom = headroom
        self.decrease = decrease
        self.recovery_step = recovery_step if recovery_step is not None else rate / 40
        self.runtime = runtime
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, tenancy: str | None) -> _Bucket:
        name = tenancy or UNKNOWN_TENANCY
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None:
                bucket = self._buckets[name] = _Bucket(rate=self.max_rate)
            return bucket

    def _spacing(self, bucket: _Bucket) -> float:
        """Seconds between two of the tenancy's attempts at its current rate."""
        return 1.0 / (bucket.rate * self.headroom)

    def _first_free(self, bucket: _Bucket) -> float:
        """The earliest moment the tenancy's next attempt may leave (its first reserved slot)."""
        spacing = self._spacing(bucket)
        return max(self.runtime.monotonic(), bucket.not_before, bucket.last_sent + spacing)

    def _after_reserved(self, bucket: _Bucket) -> float:
        return self._first_free(bucket) + bucket.reserved * self._spacing(bucket)

    def next_free(self, tenancy: str | None) -> float:
        """When a call handed out now would leave (monotonic seconds)."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            return self._after_reserved(bucket)

    def reserve_by(self, tenancy: str | None, latest_start: float) -> float | None:
        """Reserve the slot of a call about to be handed out, if it opens by ``latest_start``;
        its start. None (nothing reserved) when it would open later."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            start = self._after_reserved(bucket)
            if start > latest_start:
                return None
            bucket.reserved += 1
            return start

    def release(self, tenancy: str | None) -> None:
        """A reservation that will not be claimed (its call did not go ahead)."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            bucket.reserved = max(0, bucket.reserved - 1)

    def claim_by(self, tenancy: str | None, latest_start: float) -> float | None:
        """A reserved call's moment to leave (the earliest slot), recorded as the tenancy's
        latest attempt; None when that is after ``latest_start`` (its reservation released)."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            bucket.reserved = max(0, bucket.reserved - 1)
            start = self._first_free(bucket)
            if start > latest_start:
                return None
            bucket.last_sent = start
            return start

    def take_by(self, tenancy: str | None, latest_start: float) -> float | None:
        """An attempt without a reservation (a retry): the earliest slot, as a claim takes it
        (the calls reserved leave one spacing later each); None, taking nothing, when that is
        after ``latest_start``."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            start = self._first_free(bucket)
            if start > latest_start:
                return None
            bucket.last_sent = start
            return start

    def throttled(self, tenancy: str | None) -> None:
        """Slow the tenancy down and let its window clear before the next slot."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            bucket.throttled += 1
            bucket.rate = max(self.min_rate, bucket.rate * self.decrease)
            penalty_end = self.runtime.monotonic() + self._spacing(bucket)
            bucket.not_before = max(bucket.not_before, penalty_end)

    def answered(self, tenancy: str | None) -> None:
        """A call was answered without a throttle: win back some rate."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            bucket.rate = min(self.max_rate, bucket.rate + self.recovery_step)

    def rate(self, tenancy: str | None) -> float:
        return self._bucket(tenancy).rate

    def reserved(self, tenancy: str | None) -> int:
        """Calls handed out with a slot and neither sent nor released yet."""
        return self._bucket(tenancy).reserved

    def seconds_since_sent(self, tenancy: str | None) -> float | None:
        """How long ago the tenancy's latest attempt left this limiter (None: never)."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            if bucket.last_sent == NEVER:
                return None
            return max(0.0, self.runtime.monotonic() - bucket.last_sent)

    def sent_ago(self, tenancy: str | None, seconds: float) -> None:
        """The tenancy's latest attempt left ``seconds`` ago elsewhere (the invocation that
        worked on it before, in another container): its next one leaves one spacing after."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            sent = self.runtime.monotonic() - max(0.0, seconds)
            bucket.last_sent = max(bucket.last_sent, sent)

    def throttle_count(self) -> int:
        with self._lock:
            return sum(b.throttled for b in self._buckets.values())

    def pacer(self, tenancy: str | None, *, reserved: bool = False) -> TenancyPacer:
        """The pacer of one key's call; ``reserved``: a slot was reserved for its first attempt."""
        return TenancyPacer(self, tenancy, reserved)


class TenancyPacer:
    """The ``cckm_refresh.ctm.transport.Pacer`` of one key of one tenancy."""

    def __init__(self, limiter: TenancyRateLimiter, tenancy: str | None, reserved: bool) -> None:
        self._limiter = limiter
        self._tenancy = tenancy
        self._reserved = reserved

    def wait(self, latest_start: Deadline) -> bool:
        """Wait for this attempt's slot if it opens by ``latest_start``; else return False at
        once, without waiting (a reservation is given back)."""
        limiter, reserved = self._limiter, self._reserved
        self._reserved = False
        if reserved:
            start = limiter.claim_by(self._tenancy, latest_start.at)
        else:
            start = limiter.take_by(self._tenancy, latest_start.at)
        if start is None:
            return False
        limiter.runtime.sleep(start - limiter.runtime.monotonic())
        return True

    def release(self) -> None:
        """The call ends without having claimed its reservation: give it back."""
        if self._reserved:
            self._reserved = False
            self._limiter.release(self._tenancy)

    def throttled(self) -> None:
        self._limiter.throttled(self._tenancy)

    def answered(self) -> None:
        self._limiter.answered(self._tenancy)
