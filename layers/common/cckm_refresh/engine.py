"""The refresh engine: ``REFRESH_CONCURRENCY`` calls in flight, each paced by its tenancy.

Workers ask a scheduler for the next key; the scheduler hands out the key whose tenancy has
the earliest free slot (so a slow tenancy never idles the others) and stops handing out keys
once a call could no longer finish before the invocation's deadline margin. What was not
started is returned as ``leftovers``, for the caller to hand on; nothing is dropped.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cckm_refresh.ctm.errors import (
    CtmAuthError,
    CtmCredentialsError,
    CtmError,
    CtmNotFoundError,
    CtmSecretUnavailableError,
    CtmTlsError,
)
from cckm_refresh.ctm.pacing import Pacer
from cckm_refresh.model import KeyInfo, RefreshOutcome, Status
from cckm_refresh.ratelimit import UNKNOWN_TENANCY, TenancyRateLimiter

# Errors that will fail every other key the same way: stop starting refreshes on the first.
# The rest are recorded like the key that met the error: FAILED, or PENDING when transient.
_RUN_FATAL = (CtmAuthError, CtmTlsError, CtmCredentialsError, CtmSecretUnavailableError)


class RefreshResponse(Protocol):
    @property
    def body(self) -> dict[str, Any]: ...
    @property
    def http_status(self) -> int: ...
    @property
    def attempts(self) -> int: ...


RefreshCall = Callable[[str, Pacer], RefreshResponse]


@dataclass(frozen=True)
class WorkItem:
    """A key to refresh, with what is known of it before the call (its tenancy paces it)."""

    key_id: str
    known: KeyInfo | None = None

    @property
    def tenancy(self) -> str:
        return (self.known.tenancy if self.known else None) or UNKNOWN_TENANCY


@dataclass
class EngineResult:
    outcomes: list[RefreshOutcome] = field(default_factory=list)
    leftovers: list[WorkItem] = field(default_factory=list)
    throttled: int = 0  # attempts answered with a throttle (429 / TooManyRequests)


class _Scheduler:
    def __init__(
        self,
        items: Iterable[WorkItem],
        limiter: TenancyRateLimiter,
        deadline: Callable[[], float],
    ) -> None:
        self._queues: dict[str, deque[WorkItem]] = {}
        for item in items:
            self._queues.setdefault(item.tenancy, deque()).append(item)
        self._limiter = limiter
        self._deadline = deadline
        self._lock = threading.Lock()
        self.stopped: CtmError | None = None

    def next(self) -> tuple[WorkItem, float] | None:
        with self._lock:
            if self.stopped is not None:
                return None
            waiting = [t for t, q in self._queues.items() if q]
            if not waiting:
                return None
            tenancy = min(waiting, key=self._limiter.next_free)
            start = self._limiter.reserve(tenancy)
            if start > self._deadline():
                return None
            return self._queues[tenancy].popleft(), start

    def stop(self, reason: CtmError) -> None:
        with self._lock:
            if self.stopped is None:
                self.stopped = reason

    def remaining(self) -> list[WorkItem]:
        with self._lock:
            items = [item for q in self._queues.values() for item in q]
            for q in self._queues.values():
                q.clear()
            return items


class RefreshEngine:
    """Refreshes keys concurrently within per-tenancy rates and the invocation's deadline."""

    def __init__(
        self,
        refresh: RefreshCall,
        limiter: TenancyRateLimiter,
        *,
        concurrency: int,
        clock: Callable[[], float] = time.monotonic,
        on_outcome: Callable[[RefreshOutcome], None] | None = None,
    ) -> None:
        self._refresh = refresh
        self._on_outcome = on_outcome
        self._limiter = limiter
        self._concurrency = concurrency
        self._clock = clock

    def run(
        self,
        items: Sequence[WorkItem],
        seconds_left: Callable[[], float],
        on_outcome: Callable[[RefreshOutcome], None] | None = None,
    ) -> EngineResult:
        """Refresh ``items`` while starting a call leaves ``seconds_left() >= 0`` afterwards.

        ``seconds_left`` is the time remaining before the margin the caller keeps for
        recording (CONTRACT 4.3: ``2 x CTM_TIMEOUT_SECONDS + 5 s``), counted from now.
        ``on_outcome`` is called in the worker's thread as each outcome is known, so the
        caller can record it while other calls wait for their slot.
        """
        listeners = [f for f in (self._on_outcome, on_outcome) if f is not None]
        result = EngineResult()
        if not items:
            return result
        throttled_before = self._limiter.throttle_count()
        deadline = self._clock() + seconds_left()
        scheduler = _Scheduler(items, self._limiter, lambda: deadline)
        lock = threading.Lock()

        def work() -> None:
            while (picked := scheduler.next()) is not None:
                item, slot = picked
                outcome, fatal = self._refresh_one(item, self._limiter.pacer(item.tenancy, slot))
                with lock:
                    result.outcomes.append(outcome)
                for listener in listeners:
                    listener(outcome)
                if fatal is not None:
                    scheduler.stop(fatal)

        workers = min(self._concurrency, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="refresh") as pool:
            for future in [pool.submit(work) for _ in range(workers)]:
                future.result()

        result.throttled = self._limiter.throttle_count() - throttled_before
        rest = scheduler.remaining()
        if scheduler.stopped is not None:
            error = scheduler.stopped
            for outcome in (_failed_like(item, error) for item in rest):
                result.outcomes.append(outcome)
                for listener in listeners:
                    listener(outcome)
        else:
            result.leftovers = rest
        return result

    def _refresh_one(self, item: WorkItem, pacer: Pacer) -> tuple[RefreshOutcome, CtmError | None]:
        """The key's outcome, and the error when it means every other key would fail too."""
        started = self._clock()
        try:
            response = self._refresh(item.key_id, pacer)
        except CtmError as error:
            outcome = _outcome_from_error(item, error, started, self._clock())
            return outcome, error if isinstance(error, _RUN_FATAL) else None
        except Exception as error:  # a bug must not lose the key: keep it PENDING, retried later
            outcome = _with_known(
                RefreshOutcome(
                    key_id=item.key_id,
                    status=Status.PENDING,
                    attempts=1,
                    duration_ms=_ms(started, self._clock()),
                    error_code="INTERNAL_ERROR",
                    error_message=f"unexpected {type(error).__name__}",
                ),
                item.known,
            )
            return outcome, None
        info = KeyInfo.from_ctm(dict(response.body)) if response.body.get("id") else item.known
        refreshed = RefreshOutcome(
            key_id=item.key_id,
            status=Status.REFRESHED,
            attempts=response.attempts,
            duration_ms=_ms(started, self._clock()),
            http_status=response.http_status,
        )
        return _with_known(refreshed, info), None


def _ms(start: float, end: float) -> int:
    return max(0, round((end - start) * 1000))


def _outcome_from_error(
    item: WorkItem, error: CtmError, started: float, ended: float
) -> RefreshOutcome:
    if isinstance(error, CtmNotFoundError):
        status = Status.NOT_FOUND
    elif error.transient:
        status = Status.PENDING
    else:
        status = Status.FAILED
    return _with_known(
        RefreshOutcome(
            key_id=item.key_id,
            status=status,
            attempts=error.attempts,
            duration_ms=_ms(started, ended),
            http_status=error.http_status,
            error_code=error.error_code,
            error_message=error.message,
        ),
        item.known,
    )


def _failed_like(item: WorkItem, error: CtmError) -> RefreshOutcome:
    return _with_known(
        RefreshOutcome(
            key_id=item.key_id,
            status=Status.PENDING if error.transient else Status.FAILED,
            attempts=0,
            error_code=error.error_code,
            error_message=error.message,
        ),
        item.known,
    )


def _with_known(outcome: RefreshOutcome, info: KeyInfo | None) -> RefreshOutcome:
    if info is None:
        return outcome
    return replace(
        outcome,
        oci_key_id=info.oci_key_id,
        display_name=info.display_name,
        tenancy=info.tenancy,
        region=info.region,
        vault_name=info.vault_name,
        lifecycle_state=info.lifecycle_state if outcome.status is Status.REFRESHED else None,
        current_key_version=(
            info.current_key_version if outcome.status is Status.REFRESHED else None
        ),
        refreshed_at=info.refreshed_at if outcome.status is Status.REFRESHED else None,
    )
