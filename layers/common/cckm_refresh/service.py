"""The run story: a delivery is either a request to resolve (intake) or a chunk to refresh.

Data flows one way: delivery -> request -> chunks -> outcomes -> store. This module owns the
run rules of CONTRACT 4.3 and 4.4 and decides, for every SQS message, what happens to it (a
``MessageVerdict``: done, back in N seconds, dead-letter) for the handler to apply. The
resolver owns listing, the engine pacing and deadlines, the store DynamoDB, the work queue
SQS, the CTM client HTTP.

- **Intake** (a schedule, an EventBridge event, a pipeline's message, the CLI): the run item,
  then the request resolved into chunks of one tenancy each, each registered with the run and
  queued to the tenancy queue (or, without one, the work queue) as it fills. A small request
  without a tenancy queue, or any request with no queue at all, is refreshed in place.
- **Chunk work** (a message carrying a registered chunk): every record of an SQS batch goes
  through one engine pass; each outcome is recorded as it arrives; a chunk whose keys are all
  terminal is closed, adding its counts to the run, which completes with its last chunk.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from cckm_refresh import backoff
from cckm_refresh.clock import iso_now
from cckm_refresh.config import RefreshSettings
from cckm_refresh.engine import RefreshEngine, WorkItem
from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, Status, Trigger
from cckm_refresh.observability import logger
from cckm_refresh.ratelimit import UNKNOWN_TENANCY
from cckm_refresh.request import (
    RefreshRequest,
    RequestError,
    chunk_message,
    continuation_message,
    parse_request,
    parse_request_body,
)
from cckm_refresh.resolution import Chunk, Resolver
from cckm_refresh.store import (
    FIRST_SEGMENT,
    MAX_CHUNK_KEYS,
    ChunkTally,
    RecordedResult,
    ResultStore,
    RunCounts,
    described,
)
from cckm_refresh.triggers import Delivery
from cckm_refresh.workqueue import SEND_BATCH, QueueMessage, WorkQueue

RETRY_DELAY_BASE = 30
RETRY_DELAY_CAP = 900
DIRECT_PASS_CHUNKS = 10  # without any queue, chunks are refreshed ten at a time


class Action(StrEnum):
    DONE = "done"  # delete the message
    RETRY = "retry"  # deliver it again in ``delay`` seconds (keys are PENDING)
    DEAD_LETTER = "dead_letter"  # its last delivery gave up on keys: let SQS dead-letter it


@dataclass(frozen=True)
class MessageVerdict:
    """What happens to the SQS message a delivery came in."""

    action: Action = Action.DONE
    delay: int = 0

    @classmethod
    def retry(cls, receive_count: int) -> MessageVerdict:
        """30 s, 60 s, 120 s... capped at 15 minutes, rather than the visibility timeout."""
        delay = backoff.ceiling(receive_count - 1, RETRY_DELAY_BASE, RETRY_DELAY_CAP)
        return cls(Action.RETRY, int(delay))


DONE = MessageVerdict()


@dataclass(frozen=True)
class Rejection:
    """The delivery's request was invalid: recorded, copied to the DLQ, never retried."""

    source_id: str
    error: str
    verdict: MessageVerdict = DONE


@dataclass(frozen=True)
class RunReport:
    """What one delivery did to its run, and what must happen to its message."""

    run_id: str
    requested: int
    recorded: tuple[RecordedResult, ...] = ()
    pending: int = 0
    handed_off: int = 0
    fanned_out: int = 0
    throttled: int = 0
    gave_up: int = 0
    completed: RunCounts | None = None
    status: str = "RUNNING"
    counts: RunCounts | None = None  # the run's counts as the table holds them, when known
    latencies_ms: tuple[int, ...] = ()
    verdict: MessageVerdict = DONE

    def count(self, status: Status) -> int:
        return sum(1 for r in self.recorded if r.outcome.status is status)

    @property
    def rotated(self) -> int:
        return sum(1 for r in self.recorded if r.version_changed)

    @property
    def must_retry(self) -> bool:
        return self.verdict.action is not Action.DONE


Result = RunReport | Rejection


@dataclass
class _Job:
    """One chunk being worked in this invocation, and what happened to each of its keys."""

    run: RunInfo
    chunk_id: str
    key_ids: tuple[str, ...]
    delivery: Delivery | None  # None: registered and refreshed in this same invocation
    tenancy: str | None = None
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

    def tally(self) -> ChunkTally:
        tally = ChunkTally()
        for status, rotated in self.final.values():
            tally = tally.add(status, rotated)
        return tally


@dataclass
class _Pass:
    """What the engine passes of one delivery did, for its report."""

    throttled: int = 0
    latencies_ms: list[int] = field(default_factory=list)
    jobs: list[_Job] = field(default_factory=list)
    requeued: int = 0  # keys owed by chunks refreshed in place, queued again


class RefreshService:
    """Processes deliveries; built once per container and shared by its invocations."""

    def __init__(
        self,
        *,
        settings: RefreshSettings,
        resolver: Resolver,
        engine: RefreshEngine,
        store: ResultStore,
        queue: WorkQueue,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._resolver = resolver
        self._engine = engine
        self._store = store
        self._queue = queue
        self._clock = clock
        self._chunk_size = min(settings.fanout_chunk_size, MAX_CHUNK_KEYS)
        self._chunk_limit = settings.fanout_chunk_size

    # --- entry points -----------------------------------------------------------------------

    def process(self, delivery: Delivery, seconds_left: Callable[[], float]) -> Result:
        """Process one delivery. ``seconds_left`` is the invocation's remaining time."""
        return self.process_batch([delivery], seconds_left)[0]

    def process_batch(
        self, deliveries: Sequence[Delivery], seconds_left: Callable[[], float]
    ) -> list[Result]:
        """Process the records of one SQS batch (or one delivery): intakes one by one, then
        every chunk in one engine pass. One result per delivery, in order."""
        results: list[Result | None] = [None] * len(deliveries)
        jobs: list[_Job] = []
        for index, delivery in enumerate(deliveries):
            request = self._parse(delivery)
            if isinstance(request, Rejection):
                results[index] = request
                continue
            run = _run_of(delivery, request)
            logger.append_keys(run_id=run.run_id, trigger=str(run.trigger))
            if request.chunk is not None:
                jobs.append(self._job(delivery, request, run))
            elif delivery.trigger is not Trigger.SQS:
                results[index] = self._intake(delivery, request, run, seconds_left)
            else:
                results[index] = self._sqs_intake(delivery, request, run, seconds_left)
        if jobs:
            done = self._work(jobs, seconds_left)
            for index, delivery in enumerate(deliveries):
                if results[index] is None:
                    job = next(j for j in jobs if j.delivery is delivery)
                    results[index] = self._job_report(job, done, delivery.receive_count)
        return [r for r in results if r is not None]

    def queue_url_of(self, queue_arn: str) -> str | None:
        """The URL of the queue an SQS record came from (``eventSourceARN``)."""
        return self._queue.url_of(queue_arn)

    def retry_later(self, queue_url: str | None, receipt_handle: str, delay: int) -> int:
        """Make a message still owing keys visible again in ``delay`` seconds; 0 when SQS
        refused (the visibility timeout then applies)."""
        return delay if self._queue.retry_later(queue_url, receipt_handle, delay) else 0

    # --- intake -----------------------------------------------------------------------------

    def _sqs_intake(
        self,
        delivery: Delivery,
        request: RefreshRequest,
        run: RunInfo,
        seconds_left: Callable[[], float],
    ) -> RunReport:
        """An intake from the work queue: its failure (CTM unreachable while resolving, say)
        is its own message's, delivered again, never its batch neighbours'."""
        try:
            return self._intake(delivery, request, run, seconds_left)
        except Exception:
            logger.exception("request could not be resolved now; SQS delivers it again")
            return RunReport(run.run_id, 0, verdict=MessageVerdict.retry(delivery.receive_count))

    def _parse(self, delivery: Delivery) -> RefreshRequest | Rejection:
        try:
            if delivery.trigger is Trigger.SQS:
                return parse_request_body(delivery.raw)
            return parse_request(delivery.document)
        except RequestError as error:
            logger.warning(
                "request rejected", extra={"source_id": delivery.source_id, "error": str(error)}
            )
            self._store.record_rejected(delivery.source_id, str(error), delivery.raw)
            self._queue.dead_letter(delivery.raw, str(error))
            return Rejection(delivery.source_id, str(error))

    def _intake(
        self,
        delivery: Delivery,
        request: RefreshRequest,
        run: RunInfo,
        seconds_left: Callable[[], float],
    ) -> RunReport:
        created = self._store.start_run(run)
        margin = self._settings.deadline_margin_seconds
        if _last_chance(delivery, self._settings.max_receive_count) and seconds_left() <= margin:
            return self._give_up_intake(run, delivery, request)
        fan_out = self._fans_out(request)
        if not created:
            state = self._store.run_state(run.run_id)
            if state is not None and state.completed:
                logger.info("run already completed: nothing to do")
                return _replay(run, state.counts)
            if state is not None and not state.resolving and fan_out is True:
                logger.info("run already resolved and queued: nothing to do")
                return RunReport(run.run_id, state.counts.requested, status=state.status)
        router = _Router(self, run, delivery, seconds_left, fan_out)
        resolution = self._resolver.resolve(
            request,
            run.run_id,
            chunk_size=self._chunk_size,
            sink=router.route,
            seconds_left=lambda: seconds_left() - margin,
            calls_end_within=lambda: seconds_left() - self._settings.recording_reserve_seconds,
        )
        router.flush_sends()
        recorded = router.recorded
        not_found = self._store.record_found_nothing(run, resolution.not_found)
        recorded += [RecordedResult(o, None, False) for o in resolution.not_found[:not_found]]
        if resolution.mismatched or resolution.malformed:
            logger.warning(
                "keys left out of the run",
                extra={"mismatched": resolution.mismatched, "malformed": resolution.malformed},
            )
        handed_on = 0
        segment = _segment(request.resume)
        if resolution.resume is not None and request.selector is not None:
            handed_on = self._continue(run, request, segment, resolution.resume)
        router.refresh_kept()
        if resolution.finished and not self._store.finish_resolution(run.run_id, segment):
            logger.info("another delivery owns this run's resolution; it finishes it")
        return self._intake_report(
            run,
            delivery,
            resolution.keys + not_found,
            recorded,
            router.done,
            fanned_out=resolution.keys if router.fanning else 0,
            handed_on=handed_on + router.done.requeued,
        )

    def _give_up_intake(
        self, run: RunInfo, delivery: Delivery, request: RefreshRequest
    ) -> RunReport:
        """The last delivery of a request, with too little time to resolve it: the keys it
        names fail with ``DEADLINE`` (nothing stays PENDING), the message is dead-lettered.
        A selector cannot be listed without time: the dead-letter queue keeps its message."""
        outcomes = [
            RefreshOutcome(
                key_id=key_id,
                status=Status.FAILED,
                error_code="DEADLINE",
                error_message="the last delivery had too little time left to resolve the key",
                oci_key_id=key_id if key_id in request.ocids else None,
                recorded_at=iso_now(),
            )
            for key_id in (*request.key_ids, *request.ocids)
        ]
        self._store.record_found_nothing(run, outcomes)
        if request.selector is None:
            self._store.finish_resolution(run.run_id)
        completed = self._store.complete_if_done(run.run_id)
        logger.warning("last delivery out of time: its keys failed", extra={"keys": len(outcomes)})
        return RunReport(
            run_id=run.run_id,
            requested=len(outcomes),
            recorded=tuple(RecordedResult(o, None, False) for o in outcomes),
            gave_up=len(outcomes) or 1,
            completed=completed,
            status="COMPLETED" if completed else "RUNNING",
            counts=completed,
            verdict=MessageVerdict(Action.DEAD_LETTER),
        )

    def _fans_out(self, request: RefreshRequest) -> bool | None:
        """Queue the run's chunks rather than refresh them here? Always with a tenancy queue
        (one invocation at a time per tenancy is what holds its rate deployment-wide); never
        without any queue; with the work queue only, when the run has more keys than
        ``FANOUT_CHUNK_SIZE`` (None: known once resolution gets there)."""
        if self._queue.tenancy_queue_url:
            return True
        if not self._queue.queue_url:
            return False
        return None

    def _continue(
        self, run: RunInfo, request: RefreshRequest, segment: str, resume: dict[str, object]
    ) -> int:
        """Hand the rest of a selector's listing on to a continuation message."""
        if not self._queue.can_hand_on or request.selector is None:
            logger.error("deadline reached while resolving, and no queue to hand on to")
            return 0
        if not self._store.hand_on_resolution(run.run_id, segment, _segment(resume)):
            logger.info("another delivery owns this run's resolution; not handed on")
            return 0
        body = continuation_message(
            request.selector,
            dict(resume),
            run_id=run.run_id,
            reason=run.reason,
            dry_run=run.dry_run,
        )
        position = json.dumps(resume, sort_keys=True, default=str)
        dedup = hashlib.sha256(f"{run.run_id}\n{position}".encode()).hexdigest()
        self._queue.send([QueueMessage(body, f"resolve:{run.run_id}", dedup)])
        logger.info("resolution handed on", extra={"resume": resume})
        return 1

    def _direct_pass(
        self,
        jobs: list[_Job],
        delivery: Delivery,
        seconds_left: Callable[[], float],
        outcome: _Pass,
        recorded: list[RecordedResult],
    ) -> None:
        for job in jobs:
            job.delivery = None
            job.last_chance = _last_chance(delivery, self._settings.max_receive_count)
        done = self._work(jobs, seconds_left)
        outcome.throttled += done.throttled
        outcome.latencies_ms += done.latencies_ms
        for job in jobs:
            recorded += job.recorded
            outcome.requeued += self._after_direct_job(job, delivery)
        outcome.jobs += jobs

    def _after_direct_job(self, job: _Job, delivery: Delivery) -> int:
        """A chunk refreshed in place with keys still owed: SQS delivers its message again;
        anything else queues the chunk again (how many keys it still owes), or leaves them
        PENDING when there is no queue."""
        if delivery.trigger is Trigger.SQS or job.done:
            return 0
        owed = list(job.pending) + [item.key_id for item in job.leftovers]
        if not owed or not self._queue.can_hand_on:
            return 0
        self._send_chunk(job, owed, reason="re-queued")
        job.leftovers = []
        job.pending = {}
        return len(owed)

    def _intake_report(
        self,
        run: RunInfo,
        delivery: Delivery,
        requested: int,
        recorded: list[RecordedResult],
        done: _Pass,
        *,
        fanned_out: int,
        handed_on: int,
    ) -> RunReport:
        jobs = done.jobs
        pending = sum(len(j.pending) + len(j.leftovers) for j in jobs)
        gave_up = sum(j.gave_up for j in jobs)
        completed = next((j.completed for j in jobs if j.completed), None)
        if completed is None and all(j.done for j in jobs):
            completed = self._store.complete_if_done(run.run_id)
        if completed:
            logger.info("run completed", extra={"counts": completed.__dict__})
        verdict = DONE
        if delivery.trigger is Trigger.SQS and (pending or gave_up):
            verdict = (
                MessageVerdict(Action.DEAD_LETTER)
                if gave_up and not pending
                else MessageVerdict.retry(delivery.receive_count)
            )
        _log_outcomes(recorded)
        return RunReport(
            run_id=run.run_id,
            requested=requested,
            recorded=tuple(recorded),
            pending=pending,
            handed_off=handed_on,
            fanned_out=fanned_out,
            throttled=done.throttled,
            gave_up=gave_up,
            completed=completed,
            status="COMPLETED" if completed else "RUNNING",
            counts=completed,
            latencies_ms=tuple(done.latencies_ms),
            verdict=verdict,
        )

    # --- chunk work -------------------------------------------------------------------------

    def _job(self, delivery: Delivery, request: RefreshRequest, run: RunInfo) -> _Job:
        return _Job(
            run=run,
            chunk_id=str(request.chunk),
            key_ids=request.key_ids,
            delivery=delivery,
            last_chance=_last_chance(delivery, self._settings.max_receive_count),
        )

    def _work(self, jobs: Sequence[_Job], seconds_left: Callable[[], float]) -> _Pass:
        """Refresh every key the jobs still owe in one engine pass, recording as it goes."""
        items: list[WorkItem] = []
        for job in jobs:
            items += self._owed(job)
        margin = self._settings.deadline_margin_seconds
        reserve = self._settings.recording_reserve_seconds
        done = _Pass()
        if items and any(j.last_chance for j in jobs) and seconds_left() <= margin:
            late = [i for i in items if i.context.last_chance]
            items = [i for i in items if not i.context.last_chance]
            for item in late:
                self._give_up(item, "DEADLINE", "the last delivery had too little time left")
        if items:
            result = self._engine.run(
                items,
                lambda: seconds_left() - margin,
                self._record,
                calls_end_within=seconds_left() - reserve,
            )
            done.throttled = result.throttled
            done.latencies_ms = result.latencies_ms
            for item in result.leftovers:
                job = item.context
                if job.last_chance:
                    self._give_up(item, "DEADLINE", "the last delivery ran out of time")
                else:
                    job.leftovers.append(item)
        for job in jobs:
            self._settle(job)
        return done

    def _owed(self, job: _Job) -> list[WorkItem]:
        """The chunk's keys that are not terminal yet; the terminal ones are counted."""
        existing = self._store.results_of(job.run.run_id, list(job.key_ids))
        items = []
        for key_id in job.key_ids:
            item = existing.get(key_id)
            status = _status_of(item)
            if item is not None and status is not None and status is not Status.PENDING:
                job.final[key_id] = (status, bool(item.get("version_changed")))
                continue
            known = _known_before(item) if item else None
            if known is not None and known.tenancy and job.tenancy is None:
                job.tenancy = known.tenancy
            work = WorkItem(key_id, known, job)
            if job.run.dry_run:
                self._record(work, described(RefreshOutcome(key_id, Status.SKIPPED), known))
            else:
                items.append(work)
        if len(job.final) and len(job.final) == len(job.key_ids):
            logger.info("chunk already done: nothing to refresh", extra={"chunk": job.chunk_id})
        return items

    def _record(self, item: WorkItem, outcome: RefreshOutcome) -> None:
        """Record one outcome as soon as it is known (in the engine's worker thread)."""
        job: _Job = item.context
        if outcome.status is Status.PENDING and job.last_chance:
            outcome = _given_up(outcome, job.delivery.receive_count if job.delivery else 1)
            with job.lock:
                job.gave_up += 1
        recorded = self._store.record(job.run, outcome, item.known)
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

    def _give_up(self, item: WorkItem, code: str, message: str) -> None:
        job: _Job = item.context
        outcome = described(
            RefreshOutcome(
                item.key_id,
                Status.FAILED,
                error_code=code,
                error_message=message,
                recorded_at=iso_now(),
            ),
            item.known,
        )
        with job.lock:
            job.gave_up += 1
        self._record(item, outcome)

    def _settle(self, job: _Job) -> None:
        """After the pass: learn what lost races became, close a finished chunk, complete."""
        if job.lost:
            existing = self._store.results_of(job.run.run_id, sorted(job.lost))
            for key_id, item in existing.items():
                status = _status_of(item)
                if status is not None and status is not Status.PENDING:
                    job.final[key_id] = (status, bool(item.get("version_changed")))
                    job.pending.pop(key_id, None)
        if job.done:
            self._store.finish_chunk(job.run.run_id, job.chunk_id, job.tally())
            # Whether or not this delivery closed the chunk: one killed between closing the
            # last chunk and completing would otherwise leave the run RUNNING for ever.
            job.completed = self._store.complete_if_done(job.run.run_id)

    def _job_report(self, job: _Job, done: _Pass, receive_count: int) -> RunReport:
        verdict = DONE
        handed_off = 0
        if job.pending:
            verdict = MessageVerdict.retry(receive_count)
        elif job.gave_up:
            verdict = MessageVerdict(Action.DEAD_LETTER)
        elif job.leftovers:
            self._send_chunk(job, [item.key_id for item in job.leftovers], reason="handed on")
            handed_off = len(job.leftovers)
        _log_outcomes(job.recorded)
        if job.completed:
            logger.info("run completed", extra={"counts": job.completed.__dict__})
        return RunReport(
            run_id=job.run.run_id,
            requested=len(job.key_ids),
            recorded=tuple(job.recorded),
            pending=len(job.pending),
            handed_off=handed_off,
            throttled=done.throttled,
            gave_up=job.gave_up,
            completed=job.completed,
            status="COMPLETED" if job.completed else "RUNNING",
            counts=job.completed,
            latencies_ms=tuple(done.latencies_ms),
            verdict=verdict,
        )

    def _send_chunk(self, job: _Job, owed: Sequence[str], *, reason: str) -> None:
        """Queue the chunk again (all its keys: the next delivery skips the finished ones)."""
        body = chunk_message(
            list(job.key_ids),
            run_id=job.run.run_id,
            chunk=job.chunk_id,
            reason=job.run.reason,
            dry_run=job.run.dry_run,
        )
        group = job.tenancy or UNKNOWN_TENANCY
        dedup = f"{job.chunk_id}-{time.time_ns()}"
        self._queue.send([QueueMessage(body, group, dedup)])
        logger.info(f"keys {reason}", extra={"keys": len(owed), "chunk": job.chunk_id})


def _segment(resume: dict[str, object] | None) -> str:
    """The name of a resolution segment: where its listing starts."""
    if resume is None:
        return FIRST_SEGMENT
    return "at:" + json.dumps(resume, sort_keys=True, separators=(",", ":"), default=str)


def _status_of(item: dict[str, object] | None) -> Status | None:
    try:
        return Status(str(item["status"])) if item else None
    except (KeyError, ValueError):
        return None


class _Router:
    """Where an intake's chunks go as resolution hands them over: queued, or kept to be
    refreshed in place. Without a tenancy queue (``fan_out`` None), a run that turns out no
    larger than ``FANOUT_CHUNK_SIZE`` keys is refreshed in place, and the first chunk past
    that sends every chunk to the work queue."""

    def __init__(
        self,
        service: RefreshService,
        run: RunInfo,
        delivery: Delivery,
        seconds_left: Callable[[], float],
        fan_out: bool | None,
    ) -> None:
        self._service = service
        self._run = run
        self._delivery = delivery
        self._seconds_left = seconds_left
        self._decided = fan_out is not None
        self.fanning = fan_out is True
        self._keys = 0
        self._sends: list[QueueMessage] = []
        self._kept: list[_Job] = []
        self.done = _Pass()
        self.recorded: list[RecordedResult] = []

    def route(self, chunk: Chunk) -> None:
        """Register ``chunk`` with the run, then queue it or keep it."""
        service, run = self._service, self._run
        entries = service._store.register_chunk(run, chunk.chunk_id, chunk.tenancy, chunk.entries)
        if not entries:
            return
        job = _Job(run, chunk.chunk_id, tuple(e.key_id for e in entries), None, chunk.tenancy)
        self._keys += len(entries)
        if not self._decided and self._keys > service._chunk_limit:
            self._decided = self.fanning = True
            for kept in self._kept:
                self._send(kept)
            self._kept.clear()
        if self.fanning:
            self._send(job)
            return
        self._kept.append(job)
        if not service._queue.can_hand_on and len(self._kept) >= DIRECT_PASS_CHUNKS:
            self.refresh_kept()

    def refresh_kept(self) -> None:
        """Refresh the chunks kept here (in one engine pass)."""
        if self._kept:
            self._service._direct_pass(
                self._kept, self._delivery, self._seconds_left, self.done, self.recorded
            )
            self._kept = []

    def flush_sends(self) -> None:
        if self._sends:
            self._service._queue.send(self._sends)
            self._sends = []

    def _send(self, job: _Job) -> None:
        body = chunk_message(
            list(job.key_ids),
            run_id=self._run.run_id,
            chunk=job.chunk_id,
            reason=self._run.reason,
            dry_run=self._run.dry_run,
        )
        self._sends.append(QueueMessage(body, job.tenancy or UNKNOWN_TENANCY, job.chunk_id))
        if len(self._sends) >= SEND_BATCH:
            self.flush_sends()


def _run_of(delivery: Delivery, request: RefreshRequest) -> RunInfo:
    return RunInfo(
        run_id=request.run_id or request.request_id or delivery.default_run_id,
        trigger=delivery.trigger,
        request_id=request.request_id,
        reason=request.reason,
        dry_run=request.dry_run,
    )


def _last_chance(delivery: Delivery, max_receive_count: int) -> bool:
    # Only SQS redelivers: a schedule's or the CLI's pending keys are re-queued instead.
    return delivery.trigger is Trigger.SQS and delivery.receive_count >= max_receive_count


def _replay(run: RunInfo, counts: RunCounts) -> RunReport:
    return RunReport(run.run_id, counts.requested, status="COMPLETED", counts=counts)


def _known_before(item: dict[str, object]) -> KeyInfo:
    """What the run knew of a key before touching it, from its ``PENDING`` result item: where
    it lives, and the version it had (``previous_key_version``)."""

    def text(name: str) -> str | None:
        value = item.get(name)
        return str(value) if value is not None else None

    return KeyInfo(
        key_id=str(item["key_id"]),
        oci_key_id=text("oci_key_id"),
        display_name=text("display_name"),
        tenancy=text("tenancy"),
        region=text("region"),
        vault_name=text("vault_name"),
        current_key_version=text("previous_key_version"),
    )


def _given_up(outcome: RefreshOutcome, deliveries: int) -> RefreshOutcome:
    return replace(
        outcome,
        status=Status.FAILED,
        error_message=(
            f"transient errors outlasted {deliveries} deliveries: {outcome.error_message or ''}"
        ).strip(": "),
        recorded_at=outcome.recorded_at or iso_now(),
    )


def _log_outcomes(recorded: Sequence[RecordedResult]) -> None:
    """One line per key that needs a look (rotated, not found, failed, pending), with its id."""
    for result in recorded:
        outcome = result.outcome
        fields = {"key_id": outcome.key_id, "status": str(outcome.status)}
        if outcome.status is Status.REFRESHED:
            if result.version_changed:
                logger.info(
                    "key rotated in OCI",
                    extra=fields
                    | {
                        "previous_key_version": result.previous_key_version,
                        "current_key_version": outcome.current_key_version,
                    },
                )
            else:
                logger.debug("key refreshed", extra=fields)
        elif outcome.status is not Status.SKIPPED:
            logger.warning(
                "key not refreshed",
                extra=fields
                | {
                    "error_code": outcome.error_code,
                    "http_status": outcome.http_status,
                    "attempts": outcome.attempts,
                },
            )
