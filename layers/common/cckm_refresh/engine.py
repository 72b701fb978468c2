"""The refresh engine: calls in flight sized by Little's law, each paced by its tenancy.

Workers ask a scheduler for the next key; the scheduler hands out the key whose tenancy has
the earliest free slot (so a slow tenancy never idles the others), keeps no more calls in
flight than the active tenancies can use (``sum(rate) x latency observed``, plus one waiting
per tenancy, up to ``REFRESH_CONCURRENCY``), and stops handing out keys once no slot opens
before the start-by deadline. Every call ends by the calls' deadline, retries included. What
was not started is returned as ``leftovers``, for the caller to hand on; nothing is dropped.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cckm_refresh.ctm.errors import (
    CtmAuthError,
    CtmCredentialsError,
    CtmError,
    CtmNotFoundError,
    CtmSecretUnavailableError,
    CtmTlsError,
)
from cckm_refresh.ctm.transport import CtmResponse, Pacer
from cckm_refresh.model import KeyInfo, RefreshOutcome, Status
from cckm_refresh.ratelimit import UNKNOWN_TENANCY, TenancyRateLimiter
from cckm_refresh.runtime import Deadline, map_concurrently

# Errors that will fail every other key the same way: stop starting refreshes on the first.
# The rest are recorded like the key that met the error: FAILED, or PENDING when transient.
_RUN_FATAL = (CtmAuthError, CtmTlsError, CtmCredentialsError, CtmSecretUnavailableError)
INITIAL_LATENCY = 1.0  # seconds, until calls have been observed
LATENCY_WEIGHT = 0.2  # exponentially weighted moving average of call durations
RETARGET_SECONDS = 0.5  # how often a worker held back re-reads the calls in flight allowed


# (key id, pacer, deadline): the call ends before ``deadline``, retries included.
RefreshCall = Callable[[str, Pacer, Deadline], CtmResponse]
OutcomeListener = Callable[["WorkItem", RefreshOutcome], None]


@dataclass(frozen=True)
class WorkItem:
    """A key to refresh, with what is known of it before the call (its tenancy paces it),
    and the caller's context for it (which message and run it belongs to)."""

    key_id: str
    known: KeyInfo | None = None
    context: Any = field(default=None, compare=False, repr=False)

    @property
    def tenancy(self) -> str:
        return (self.known.tenancy if self.known else None) or UNKNOWN_TENANCY


@dataclass
class EngineResult:
    outcomes: list[RefreshOutcome] = field(default_factory=list)
    leftovers: list[WorkItem] = field(default_factory=list)
    throttled: int = 0  # attempts answered with a throttle (429 / TooManyRequests)


class _Scheduler:
    """Hands out keys, tenancy by tenancy, while a slot opens before ``start_by``."""

    def __init__(
        self,
        items: Iterable[WorkItem],
        limiter: TenancyRateLimiter,
        start_by: Deadline,
        in_flight_target: Callable[[int], int],
    ) -> None:
        self._queues: dict[str, deque[WorkItem]] = {}
        for item in items:
            self._queues.setdefault(item.tenancy, deque()).append(item)
        self._limiter = limiter
        self._start_by = start_by
        self._target = in_flight_target
        self._ready = limiter.runtime.condition()
        self._in_flight = 0
        self.stopped: CtmError | None = None

    def next(self) -> WorkItem | None:
        """The next key, its slot reserved; None when there is none, or no slot in time."""
        with self._ready:
            while True:
                if self.stopped is not None:
                    return None
                waiting = [t for t, q in self._queues.items() if q]
                if not waiting:
                    return None
                if self._in_flight < self._target(len(waiting)):
                    break
                self._ready.wait(RETARGET_SECONDS)
            tenancy = min(waiting, key=self._limiter.next_free)
            if self._limiter.reserve_by(tenancy, self._start_by.at) is None:
                return None
            self._in_flight += 1
            return self._queues[tenancy].popleft()

    def done(self) -> None:
        with self._ready:
            self._in_flight -= 1
            self._ready.notify_all()

    def stop(self, reason: CtmError) -> None:
        with self._ready:
            if self.stopped is None:
                self.stopped = reason
            self._ready.notify_all()

    def remaining(self) -> list[WorkItem]:
        """What was not handed out (read once every worker has ended)."""
        return [item for queue in self._queues.values() for item in queue]


class RefreshEngine:
    """Refreshes keys concurrently within per-tenancy rates and the invocation's deadline.
    It lives as long as its container: the ``latency`` it observes (the moving average of
    answered calls, seconds) sizes later invocations' calls in flight too."""

    def __init__(
        self,
        refresh: RefreshCall,
        limiter: TenancyRateLimiter,
        *,
        concurrency: int,
        on_outcome: OutcomeListener | None = None,
    ) -> None:
        self._refresh = refresh
        self._on_outcome = on_outcome
        self.limiter = limiter
        self._runtime = limiter.runtime
        self._concurrency = concurrency
        self.latency = INITIAL_LATENCY
        self._latency_lock = threading.Lock()

    def in_flight_target(self, tenancies: int) -> int:
        """Little's law: each active tenancy keeps ``rate x latency`` calls busy, plus one
        waiting for its next slot; never more than ``REFRESH_CONCURRENCY``."""
        busy = tenancies * self.limiter.max_rate * self.latency
        return max(1, min(self._concurrency, math.ceil(busy * 1.25) + tenancies))

    def run(
        self,
        items: Sequence[WorkItem],
        start_by: Deadline,
        calls_end_by: Deadline,
        on_outcome: OutcomeListener | None = None,
    ) -> EngineResult:
        """Refresh ``items`` while a call can start by ``start_by``; every call, retries
        included, ends by ``calls_end_by``. ``on_outcome`` is called in the worker's thread
        as each outcome is known, so the caller records it while other calls wait."""
        listeners = [f for f in (self._on_outcome, on_outcome) if f is not None]
        result = EngineResult()
        throttled_before = self.limiter.throttle_count()
        scheduler = _Scheduler(items, self.limiter, start_by, self.in_flight_target)
        lock = threading.Lock()

        def record(item: WorkItem, outcome: RefreshOutcome) -> None:
            with lock:
                result.outcomes.append(outcome)
            for listener in listeners:
                listener(item, outcome)

        def work(_thread: int) -> None:
            while (item := scheduler.next()) is not None:
                outcome, fatal = self._call(scheduler, item, calls_end_by)
                record(item, outcome)
                if fatal is not None:
                    scheduler.stop(fatal)

        # Threads are cheap; the scheduler keeps only ``in_flight_target`` of them busy.
        threads = min(self._concurrency, len(items))
        map_concurrently(self._runtime, work, range(threads), threads, "refresh")
        result.throttled = self.limiter.throttle_count() - throttled_before
        # What was not started: handed back, or, after a run-fatal error, recorded like the
        # key that met it (no more calls).
        if scheduler.stopped is None:
            result.leftovers = scheduler.remaining()
            return result
        for item in scheduler.remaining():
            record(item, _outcome_from_error(item, scheduler.stopped, tried=False))
        return result

    def _call(
        self, scheduler: _Scheduler, item: WorkItem, deadline: Deadline
    ) -> tuple[RefreshOutcome, CtmError | None]:
        """Refresh one key in its reserved slot: its outcome, and the error when it means
        every other key would fail too. The scheduler learns the call is over."""
        pacer = self.limiter.pacer(item.tenancy, reserved=True)
        clock = self._runtime.monotonic
        started = clock()
        try:
            response = self._refresh(item.key_id, pacer, deadline)
        except CtmError as error:
            outcome = _outcome_from_error(item, error, _ms(started, clock()))
            return outcome, error if isinstance(error, _RUN_FATAL) else None
        except Exception as error:  # a bug must not lose the key: keep it PENDING, retried later
            outcome = RefreshOutcome(
                key=KeyInfo(item.key_id),
                status=Status.PENDING,
                attempts=1,
                duration_ms=_ms(started, clock()),
                error_code="INTERNAL_ERROR",
                error_message=f"unexpected {type(error).__name__}",
            )
            return _with_known(outcome, item.known), None
        else:
            with self._latency_lock:
                self.latency += LATENCY_WEIGHT * (response.elapsed - self.latency)
            info = KeyInfo.from_ctm(dict(response.body)) if response.body.get("id") else item.known
            refreshed = RefreshOutcome(
                key=KeyInfo(item.key_id),
                status=Status.REFRESHED,
                attempts=response.attempts,
                duration_ms=_ms(started, clock()),
                http_status=response.http_status,
            )
            return _with_known(refreshed, info), None
        finally:
            pacer.release()  # a call that never got to send gives its slot back
            scheduler.done()


def _ms(start: float, end: float) -> int:
    return max(0, round((end - start) * 1000))


def _outcome_from_error(
    item: WorkItem, error: CtmError, duration_ms: int = 0, *, tried: bool = True
) -> RefreshOutcome:
    """The key's outcome after ``error``: its own call's, or (``tried`` False) a run-fatal
    error met by another key before this one was tried."""
    if isinstance(error, CtmNotFoundError):
        status = Status.NOT_FOUND
    elif error.transient:
        status = Status.PENDING
    else:
        status = Status.FAILED
    outcome = RefreshOutcome(
        key=KeyInfo(item.key_id),
        status=status,
        attempts=error.attempts if tried else 0,
        duration_ms=duration_ms,
        http_status=error.http_status if tried else None,
        error_code=error.error_code,
        error_message=error.message,
    )
    return _with_known(outcome, item.known)


def _with_known(outcome: RefreshOutcome, info: KeyInfo | None) -> RefreshOutcome:
    """The outcome with the key as known: CCKM's answer after a refresh; otherwise only where
    the key lives (its state and version are what the refresh would have told)."""
    if info is None:
        return outcome
    return replace(outcome, key=info if outcome.status is Status.REFRESHED else info.location())
