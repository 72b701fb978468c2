"""Chunk work: chunks refreshed in one engine pass, each outcome recorded as it arrives, a chunk
closed once its keys are terminal (docs/architecture.md, "Exactly-once bookkeeping")."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cckm_refresh.config import RefreshSettings
from cckm_refresh.engine import EngineResult, RefreshEngine, WorkItem
from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, Status, Trigger
from cckm_refresh.observability import logger
from cckm_refresh.ratelimit import UNKNOWN_TENANCY
from cckm_refresh.request import chunk_message
from cckm_refresh.run.report import DEAD_LETTER, DONE, MessageVerdict, RunReport, log_outcomes
from cckm_refresh.runtime import SYSTEM, Deadline, Runtime, iso_now
from cckm_refresh.table.items import (
    ChunkTally,
    RecordedResult,
    RunCounts,
    TenancyPace,
    known_before,
    status_of,
)
from cckm_refresh.triggers import Delivery
from cckm_refresh.workqueue import QueueMessage

if TYPE_CHECKING:
    from cckm_refresh.run.ports import RunQueues, RunTable


@dataclass
class ChunkJob:
    """One chunk being worked in this invocation, and what happened to each of its keys."""

    run: RunInfo
    chunk_id: str
    key_ids: tuple[str, ...]
    delivery: Delivery | None  # None: registered and refreshed in this same invocation
    tenancy: str | None = None
    handoffs: int = 0  # hand-offs without progress before this delivery
    last_chance: bool = False
    final: dict[str, tuple[Status, bool]] = field(default_factory=dict)  # terminal: rotated?
    pending: dict[str, RefreshOutcome] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)  # another delivery recorded them first
    recorded: list[RecordedResult] = field(default_factory=list)
    leftovers: list[WorkItem] = field(default_factory=list)
    gave_up: int = 0
    completed: RunCounts | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def done(self) -> bool:
        return len(self.final) == len(self.key_ids)

    @property
    def group(self) -> str | None:
        """The tenancy queue's message group it came in: its pacing group, handed on."""
        return self.delivery.group if self.delivery is not None else None


SignIn = Callable[[Deadline], object]
"""Obtains a CTM token (at once when one is held), ending before the instant it is given."""


@contextmanager
def _beside(sign_in: SignIn | None, deadline: Deadline, runtime: Runtime) -> Iterator[None]:
    """Sign in to CTM in a thread while the block reads the chunks' keys, so that a cold start's
    secret and login do not wait for that read; ends before ``deadline``, joined after the
    block. A failure is left to the engine's first call, which signs in again."""
    if sign_in is None or deadline.passed():
        yield
        return

    def run() -> None:
        try:
            sign_in(deadline)
        except Exception as error:  # the engine's first call meets it again
            logger.debug("signing in beside the read failed", extra={"error": type(error).__name__})

    task = runtime.start(run, "ctm-sign-in")
    try:
        yield
    finally:
        task.join(timeout=max(0.0, deadline.remaining()))


def last_chance(delivery: Delivery, handoffs: int, max_receive_count: int) -> bool:
    """The message's last delivery: its SQS deliveries and the hand-offs without progress
    before it reach ``MAX_RECEIVE_COUNT`` (only SQS redelivers; other triggers re-queue).
    A shell run is always its own last delivery: nothing would try its keys again."""
    if delivery.trigger is Trigger.CLI:
        return True
    return (
        delivery.trigger is Trigger.SQS and delivery.receive_count + handoffs >= max_receive_count
    )


@dataclass(frozen=True)
class ChunkWorker:
    """Refreshes and records chunks; built once per container."""

    settings: RefreshSettings
    engine: RefreshEngine
    store: RunTable
    queue: RunQueues
    _: KW_ONLY
    sign_in: SignIn | None = None
    runtime: Runtime = SYSTEM

    def job(
        self, delivery: Delivery, run: RunInfo, chunk_id: str, keys: Sequence[str], handoffs: int
    ) -> ChunkJob:
        """The job of a chunk message (``handoffs``: hand-offs without progress before it)."""
        last = last_chance(delivery, handoffs, self.settings.max_receive_count)
        return ChunkJob(run, chunk_id, tuple(keys), delivery, handoffs=handoffs, last_chance=last)

    def work(self, jobs: Sequence[ChunkJob], end: Deadline) -> EngineResult:
        """Refresh every key the jobs still owe in one engine pass, recording as it goes;
        ``end`` is the invocation's."""
        start_by = end.before(self.settings.deadline_margin_seconds)
        calls_end = end.before(self.settings.recording_reserve_seconds)
        with _beside(self.sign_in, calls_end, self.runtime):
            items = [item for job in jobs for item in self._owed(job)]
            if start_by.passed():
                items = self._without_late(items, "the last delivery had too little time left")
            result = self.engine.run(items, start_by, calls_end, self._record)
            for item in self._without_late(result.leftovers, "the last delivery ran out of time"):
                item.context.leftovers.append(item)
            for job in jobs:
                self._settle(job)
            return result

    def _without_late(self, items: Sequence[WorkItem], why: str) -> list[WorkItem]:
        """``items`` less those of last deliveries, which fail (``DEADLINE``) untried."""
        kept = []
        for item in items:
            job: ChunkJob = item.context
            if not job.last_chance:
                kept.append(item)
                continue
            outcome = RefreshOutcome(
                KeyInfo(item.key_id).filled_from(item.known),
                Status.FAILED,
                error_code="DEADLINE",
                error_message=why,
                recorded_at=iso_now(self.runtime),
            )
            with job.lock:
                job.gave_up += 1
            self._record(item, outcome)
        return kept

    def report(self, job: ChunkJob, throttled: int = 0) -> RunReport:
        """A chunk message's report and verdict: back later while keys are PENDING; to the
        dead-letter queue when its last delivery gave up on some; else done (what was not
        started is handed on in a new message of the same chunk). ``throttled``: the throttles
        of the pass to count on this report (metrics add every report of a batch up)."""
        verdict = DONE
        handed_off = 0
        receive_count = job.delivery.receive_count if job.delivery else 1
        if job.pending:
            verdict = MessageVerdict.retry(receive_count)
        elif job.gave_up and receive_count >= self.settings.max_receive_count:
            verdict = DEAD_LETTER  # SQS's redrive moves it
        elif job.gave_up and job.delivery is not None:
            # Its last delivery by the hand-offs it carried: SQS would deliver it again, so
            # it is deleted, and a copy kept in the dead-letter queue says why.
            why = f"{job.handoffs} hand-offs without progress, then this delivery gave up"
            self.queue.dead_letter(job.delivery.raw, why)
        elif job.leftovers:
            # No outcome recorded here: the hand-off counts as a delivery (liveness).
            handoffs = 0 if job.recorded else job.handoffs + 1
            handed_off = self.send_again(job, len(job.leftovers), "handed on", handoffs)
        log_outcomes(job.recorded, job.completed)
        return RunReport(
            run_id=job.run.run_id,
            requested=len(job.key_ids),
            recorded=tuple(job.recorded),
            pending=len(job.pending),
            handed_off=handed_off,
            throttled=throttled,
            gave_up=job.gave_up,
            counts=job.completed,
            completed_now=job.completed is not None,
            verdict=verdict,
        )

    def send_again(self, job: ChunkJob, owed: int, reason: str, handoffs: int = 0) -> int:
        """Queue the chunk again, all its keys (the next delivery skips the finished ones), in
        its tenancy's group; returns ``owed``."""
        body = chunk_message(job.run, job.chunk_id, job.key_ids, handoffs)
        # One hand-on per delivery: a delivery retried after sending it sends nothing twice.
        source = job.delivery.source_id if job.delivery else iso_now(self.runtime)
        dedup = f"{job.chunk_id}:{source}"
        self.queue.send([QueueMessage(body, job.tenancy or UNKNOWN_TENANCY, dedup)])
        logger.info(
            f"keys {reason}", extra={"keys": owed, "chunk": job.chunk_id, "handoffs": handoffs}
        )
        return owed

    # --- steps ------------------------------------------------------------------------------

    def _owed(self, job: ChunkJob) -> list[WorkItem]:
        """The chunk's keys that are not terminal yet; the terminal ones are counted (and a
        dry run's are recorded ``SKIPPED`` here)."""
        existing, pace = self.store.results_and_pace(job.run.run_id, list(job.key_ids), job.group)
        if pace is not None:
            ago = self.runtime.time() - pace.last_sent_ms / 1000
            self.engine.limiter.sent_ago(pace.tenancy, ago)
        owed = [item for key_id in job.key_ids if (item := self._owed_key(job, key_id, existing))]
        if job.final and job.done:
            logger.info("chunk already done: nothing to refresh", extra={"chunk": job.chunk_id})
        if job.run.dry_run:
            for work in owed:
                key = KeyInfo(work.key_id).filled_from(work.known)
                self._record(work, RefreshOutcome(key, Status.SKIPPED))
            return []
        return owed

    def _owed_key(
        self, job: ChunkJob, key_id: str, existing: Mapping[str, Mapping[str, Any]]
    ) -> WorkItem | None:
        item = existing.get(key_id)
        final = _final(item)
        if final is not None:
            job.final[key_id] = final
            return None
        known = known_before(item) if item else None
        if known is not None and known.tenancy and job.tenancy is None:
            job.tenancy = known.tenancy
        return WorkItem(key_id, known, job)

    def _record(self, item: WorkItem, outcome: RefreshOutcome) -> None:
        """Record one outcome as soon as it is known (in the engine's worker thread)."""
        job: ChunkJob = item.context
        if outcome.status is Status.PENDING and job.last_chance:
            # A transient failure on the last delivery: FAILED, saying why.
            deliveries = job.handoffs + (job.delivery.receive_count if job.delivery else 1)
            why = (
                f"transient errors outlasted {deliveries} deliveries: {outcome.error_message or ''}"
            )
            outcome = replace(
                outcome,
                status=Status.FAILED,
                error_message=why.strip(": "),
                recorded_at=outcome.recorded_at or iso_now(self.runtime),
            )
            with job.lock:
                job.gave_up += 1
        recorded = self.store.record(job.run, outcome, item.known)
        with job.lock:
            if recorded is None:
                job.lost.add(item.key_id)
            elif outcome.status is Status.PENDING:
                job.pending[item.key_id] = outcome
                job.recorded.append(recorded)
            else:
                job.final[item.key_id] = (outcome.status, recorded.version_changed)
                job.pending.pop(item.key_id, None)
                job.recorded.append(recorded)

    def _settle(self, job: ChunkJob) -> None:
        """After the pass: learn what lost races became, close a finished chunk, complete;
        hand the tenancy's pace on to its next invocation (with the close, or alone)."""
        if job.lost:
            existing, _ = self.store.results_and_pace(job.run.run_id, sorted(job.lost), None)
            for key_id, item in existing.items():
                if (final := _final(item)) is not None:
                    job.final[key_id] = final
                    job.pending.pop(key_id, None)
        pace = self._pace_of(job)
        if job.done:
            tally = ChunkTally.of(job.final.values())
            closed = self.store.finish_chunk(job.run.run_id, job.chunk_id, tally, pace)
            if pace is not None and not closed:
                self.store.record_pace(pace)
            # Whether or not this delivery closed the chunk: one killed between closing the
            # last chunk and completing would otherwise leave the run RUNNING for ever.
            job.completed = self.store.complete_if_done(job.run.run_id)
        elif pace is not None:
            self.store.record_pace(pace)

    def _pace_of(self, job: ChunkJob) -> TenancyPace | None:
        """When this container last sent a call of the job's tenancy queue group (None:
        never, or not a tenancy queue chunk)."""
        if job.group is None:
            return None
        ago = self.engine.limiter.seconds_since_sent(job.group)
        if ago is None:
            return None
        return TenancyPace(job.group, round((self.runtime.time() - ago) * 1000))


def _final(item: Mapping[str, Any] | None) -> tuple[Status, bool] | None:
    """A result item's terminal status and whether its key rotated; None while it is owed."""
    status = status_of(item)
    if item is None or status is None or status is Status.PENDING:
        return None
    return status, bool(item.get("version_changed"))
