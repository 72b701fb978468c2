"""Each OCI tenancy's pace: when its next refresh attempt may leave (first tries and retries).

OCI allows 10 key-management reads per second per tenancy and one refresh costs at least two,
so attempts are spaced ``1 / (rate x headroom)`` apart: a call leaves on its slot but reaches
OCI a few milliseconds early or late, and pacing exactly at OCI's limit turns that jitter into
throttles (measured: 5.2 % of calls throttled at headroom 1.0, 1.3 % at 0.97, none at 0.95).

Slots are derived, never accumulated: the next one is one spacing after the tenancy's latest
attempt (or a throttle's penalty), plus one spacing per call handed out and not yet sent
(``reserve_by``), so the schedule never runs ahead of real time by more than the calls really
waiting. Calls take the earliest slot, whichever they reserved: calls held up together (by a
JWT being fetched) leave one spacing apart in whatever order their threads wake.

A ``TooManyRequests`` multiplies the tenancy's rate by ``decrease`` (never below ``min_rate``)
and holds its next slot back one spacing; each answered call wins back ``recovery_step``, up
to the configured rate (botocore's standard mode: additive increase, multiplicative
decrease). The time of a tenancy's latest attempt crosses to its next invocation's container
through the table (``seconds_since_sent``/``sent_ago``).
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
            if name not in self._buckets:
                self._buckets[name] = _Bucket(rate=self.max_rate)
            return self._buckets[name]

    def _spacing(self, bucket: _Bucket) -> float:
        return 1.0 / (bucket.rate * self.headroom)

    def _first_free(self, bucket: _Bucket) -> float:
        """The earliest moment the tenancy's next attempt may leave."""
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
        """Reserve the slot of a call about to be handed out and return its start, if it
        opens by ``latest_start``; else None, reserving nothing."""
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

    def take_by(self, tenancy: str | None, latest_start: float, *, claim: bool) -> float | None:
        """An attempt's moment to leave (the earliest slot; the calls reserved leave one
        spacing later each), recorded as the tenancy's latest attempt; None, taking nothing,
        when that is after ``latest_start``. ``claim``: the call's reservation is used up."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            if claim:
                bucket.reserved = max(0, bucket.reserved - 1)
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
        return self._bucket(tenancy).reserved

    def seconds_since_sent(self, tenancy: str | None) -> float | None:
        """How long ago the tenancy's latest attempt left this limiter (None: never)."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            if bucket.last_sent == NEVER:
                return None
            return max(0.0, self.runtime.monotonic() - bucket.last_sent)

    def sent_ago(self, tenancy: str | None, seconds: float) -> None:
        """The tenancy's latest attempt left ``seconds`` ago, in another container."""
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


@dataclass
class TenancyPacer:
    """The ``cckm_refresh.ctm.transport.Pacer`` of one key of one tenancy."""

    limiter: TenancyRateLimiter
    tenancy: str | None
    reserved: bool

    def wait(self, latest_start: Deadline) -> bool:
        """Wait for this attempt's slot if it opens by ``latest_start``; else return False at
        once (a reservation is given back)."""
        start = self.limiter.take_by(self.tenancy, latest_start.at, claim=self.reserved)
        self.reserved = False
        if start is None:
            return False
        self.limiter.runtime.sleep(start - self.limiter.runtime.monotonic())
        return True

    def release(self) -> None:
        """The call ends without having claimed its reservation: give it back."""
        if self.reserved:
            self.reserved = False
            self.limiter.release(self.tenancy)

    def throttled(self) -> None:
        self.limiter.throttled(self.tenancy)

    def answered(self) -> None:
        self.limiter.answered(self.tenancy)
