"""Per-tenancy pacing of refresh calls: OCI allows 10 key-management reads per second per
tenancy and one refresh costs at least two, so every attempt (first tries and retries) of a
key's refresh reserves a slot in its tenancy's schedule.

Shape borrowed from botocore's standard retry mode: the limits are data, the backoff is
additive-increase / multiplicative-decrease. Slots are spaced ``1 / (rate x headroom)``: a
call leaves on its slot but reaches OCI a few milliseconds later or earlier than its
neighbours, and pacing exactly at OCI's limit would turn every such jitter into a throttle
(measured: 5.2 % of calls throttled at headroom 1.0, 1.3 % at 0.97, none at 0.95).
A slot is reserved when a call is handed out, but an attempt leaves only when it claims one:
one spacing after the tenancy's previous attempt really left, so attempts held up after their
slot (a JWT fetched at a cold start) never leave together. A claim takes the earliest slot
still unclaimed, not necessarily its own: calls held up together are released in whatever
order their threads wake, and the one holding the latest slot must not push the others out
behind it (measured at a cold start, 8 calls released at once by the JWT: a 1.05 s gap, five
slots lost, in 2 runs of 5). A reservation never claimed is released.
A limiter lives in one container; a tenancy's next invocation may run in another, so the
time of its latest attempt is handed on (``seconds_since_sent`` / ``sent_ago``) through the
table.
A ``TooManyRequests`` multiplies the tenancy's rate by ``decrease`` (never below
``min_rate``) and pushes its next slot out by ``throttle_penalty`` (one slot by default);
each answered call then wins back ``recovery_step`` of the rate until the configured ceiling.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cckm_refresh.runtime import Deadline

UNKNOWN_TENANCY = "~unknown"


@dataclass
class _Bucket:
    rate: float
    next_free: float = 0.0
    last_sent: float = float("-inf")  # when the tenancy's latest attempt actually left
    reserved: list[float] = field(default_factory=list)  # slots not yet claimed (a heap)
    throttled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class TenancyRateLimiter:
    """Slot reservations per tenancy; thread-safe; clock and sleep injectable for tests."""

    def __init__(
        self,
        rate: float,
        *,
        min_rate: float | None = None,
        headroom: float = 0.95,
        decrease: float = 0.75,
        throttle_penalty: float | None = None,
        recovery_step: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if not 0 < headroom <= 1 or not 0 < decrease < 1:
            raise ValueError("headroom must be in (0, 1] and decrease in (0, 1)")
        self.max_rate = rate
        self.min_rate = min_rate if min_rate is not None else max(rate / 8, 0.1)
        self.headroom = headroom
        self.decrease = decrease
        self.throttle_penalty = throttle_penalty
        self.recovery_step = recovery_step if recovery_step is not None else rate / 40
        self.clock = clock
        self.sleep = sleep
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, tenancy: str | None) -> _Bucket:
        name = tenancy or UNKNOWN_TENANCY
        with self._lock:
            bucket = self._buckets.get(name)
            if bucket is None:
                bucket = self._buckets[name] = _Bucket(rate=self.max_rate, next_free=self.clock())
            return bucket

    def next_free(self, tenancy: str | None) -> float:
        """When the tenancy's next slot opens (monotonic seconds)."""
        return self._bucket(tenancy).next_free

    def reserve(self, tenancy: str | None) -> float:
        """Reserve the tenancy's next slot and return its start time (does not wait)."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            start = max(self.clock(), bucket.next_free)
            bucket.next_free = start + self._spacing(bucket)
            heapq.heappush(bucket.reserved, start)
            return start

    def release(self, tenancy: str | None, slot: float) -> None:
        """A reserved slot that will not be claimed (its call did not go ahead)."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            _drop(bucket.reserved, slot)

    def take_by(self, tenancy: str | None, latest_start: float) -> float | None:
        """Reserve and claim at once the tenancy's next moment to send (its next slot, one
        spacing after its latest attempt) if that comes by ``latest_start``; else None, and
        nothing is taken: the slot stays free for another call."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            start = self._earliest(bucket, max(self.clock(), bucket.next_free))
            return None if start > latest_start else self._claim(bucket, start)

    def claim_by(self, tenancy: str | None, slot: float, latest_start: float) -> float | None:
        """The moment an attempt reserved for ``slot`` may leave, recorded as the tenancy's
        latest send: not before the earliest slot still unclaimed (its own or an earlier one,
        which it takes), not before now, and one spacing after the attempt that left last;
        None when that is after ``latest_start``, and its reservation is released. A
        reservation is made ahead of the call; an attempt held up between the two (a JWT
        being fetched, a connection opened) must not leave together with the next one."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            earliest = bucket.reserved[0] if bucket.reserved else slot
            start = self._earliest(bucket, earliest)
            if start > latest_start:
                _drop(bucket.reserved, slot)
                return None
            if bucket.reserved:
                heapq.heappop(bucket.reserved)  # its own, or an earlier one it uses instead
            return self._claim(bucket, start)

    def _spacing(self, bucket: _Bucket) -> float:
        """Seconds between two of the tenancy's attempts at its current rate."""
        return 1.0 / (bucket.rate * self.headroom)

    def _earliest(self, bucket: _Bucket, slot: float) -> float:
        return max(slot, self.clock(), bucket.last_sent + self._spacing(bucket))

    def _claim(self, bucket: _Bucket, start: float) -> float:
        bucket.last_sent = start
        bucket.next_free = max(bucket.next_free, start + self._spacing(bucket))
        return start

    def wait_until(self, start: float) -> None:
        delay = start - self.clock()
        if delay > 0:
            self.sleep(delay)

    def throttled(self, tenancy: str | None) -> None:
        """Slow the tenancy down and let its window clear before the next slot."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            bucket.throttled += 1
            bucket.rate = max(self.min_rate, bucket.rate * self.decrease)
            penalty = self.throttle_penalty
            if penalty is None:
                penalty = self._spacing(bucket)
            bucket.next_free = max(bucket.next_free, self.clock() + penalty)

    def answered(self, tenancy: str | None) -> None:
        """A call was answered without a throttle: win back some rate."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            bucket.rate = min(self.max_rate, bucket.rate + self.recovery_step)

    def rate(self, tenancy: str | None) -> float:
        return self._bucket(tenancy).rate

    def seconds_since_sent(self, tenancy: str | None) -> float | None:
        """How long ago the tenancy's latest attempt left this limiter (None: never)."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            if bucket.last_sent == float("-inf"):
                return None
            return max(0.0, self.clock() - bucket.last_sent)

    def sent_ago(self, tenancy: str | None, seconds: float) -> None:
        """The tenancy's latest attempt left ``seconds`` ago elsewhere (the invocation that
        worked on it before, in another container): its next one leaves one spacing after."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            bucket.last_sent = max(bucket.last_sent, self.clock() - max(0.0, seconds))
            bucket.next_free = max(bucket.next_free, bucket.last_sent + self._spacing(bucket))

    def unclaimed(self, tenancy: str | None) -> int:
        """Slots reserved and neither claimed nor released yet (calls handed out, not sent)."""
        bucket = self._bucket(tenancy)
        with bucket.lock:
            return len(bucket.reserved)

    def throttle_count(self) -> int:
        with self._lock:
            return sum(b.throttled for b in self._buckets.values())

    def pacer(self, tenancy: str | None, first_slot: float | None = None) -> TenancyPacer:
        """A Pacer for one key's call; ``first_slot`` is a slot already reserved for it."""
        return TenancyPacer(self, tenancy, first_slot)


def _drop(slots: list[float], slot: float) -> None:
    """One reservation fewer in the heap ``slots``: ``slot`` if it is still there, else the
    latest (another call claimed ``slot`` in its stead)."""
    if not slots:
        return
    slots.remove(slot if slot in slots else max(slots))
    heapq.heapify(slots)


class TenancyPacer:
    """The ``cckm_refresh.ctm.pacing.Pacer`` of one key of one tenancy."""

    def __init__(self, limiter: TenancyRateLimiter, tenancy: str | None, first: float | None):
        self._limiter = limiter
        self._tenancy = tenancy
        self._reserved = first

    def wait(self, latest_start: Deadline) -> bool:
        """Wait for this call's slot if it opens by ``latest_start`` (a call that must end by
        a deadline); else return False at once, without waiting."""
        slot = self._reserved
        self._reserved = None
        if slot is None:
            start = self._limiter.take_by(self._tenancy, latest_start.at)
        else:
            start = self._limiter.claim_by(self._tenancy, slot, latest_start.at)
        if start is None:
            return False
        self._limiter.wait_until(start)
        return True

    def release(self) -> None:
        """The call ends without having claimed its reserved slot: free it."""
        if self._reserved is not None:
            self._limiter.release(self._tenancy, self._reserved)
            self._reserved = None

    def throttled(self) -> None:
        self._limiter.throttled(self._tenancy)

    def answered(self) -> None:
        self._limiter.answered(self._tenancy)
