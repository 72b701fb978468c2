"""Intake: a request becomes a run, its keys resolved into chunks of one tenancy each, registered
and queued, or refreshed in place (docs/architecture.md, "The flow")."""

from __future__ import annotations

import hashlib
import json
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING

from cckm_refresh.config import RefreshSettings
from cckm_refresh.ctm.errors import CtmError
from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, Status, Trigger
from cckm_refresh.observability import logger
from cckm_refresh.ratelimit import UNKNOWN_TENANCY
from cckm_refresh.request import RefreshRequest, chunk_message, continuation_message
from cckm_refresh.run.chunks import ChunkJob, ChunkWorker, last_chance
from cckm_refresh.run.report import DEAD_LETTER, DONE, MessageVerdict, RunReport, log_outcomes
from cckm_refresh.run.resolution import Chunk, Resolution, Resolver
from cckm_refresh.runtime import SYSTEM, Deadline, Runtime, iso_now
from cckm_refresh.table.items import MAX_CHUNK_KEYS, RecordedResult, segment_of
from cckm_refresh.triggers import Delivery
from cckm_refresh.workqueue import SEND_BATCH, QueueMessage

if TYPE_CHECKING:
    from cckm_refresh.run.ports import RunQueues, RunTable

DIRECT_PASS_CHUNKS = 10  # without any queue, chunks are refreshed ten at a time


@dataclass(frozen=True)
class Intake:
    """Turns requests into runs; built once per container."""

    settings: RefreshSettings
    resolver: Resolver
    worker: ChunkWorker
    store: RunTable
    queue: RunQueues
    _: KW_ONLY
    runtime: Runtime = SYSTEM

    def take(
        self, delivery: Delivery, request: RefreshRequest, run: RunInfo, end: Deadline
    ) -> RunReport:
        """Start (or continue, or replay) ``run`` from ``request`` (``end``: the invocation's).
        From the work queue, a failure (CTM unreachable while resolving, say) is its own
        message's, delivered again, never its batch neighbours'."""
        try:
            return _Taking(self, delivery, request, run, end).take()
        except Exception:
            if delivery.trigger is not Trigger.SQS:
                raise
            logger.exception("request could not be resolved now; SQS delivers it again")
            return RunReport(run.run_id, 0, verdict=MessageVerdict.retry(delivery.receive_count))


@dataclass
class _Taking:
    """One request taken in: its keys resolved into chunks, each registered with the run, then
    queued (always with a tenancy queue; with the work queue only, once the run passes
    ``FANOUT_CHUNK_SIZE`` keys) or kept and refreshed in place; what was not found recorded,
    the listing handed on if time ran short."""

    intake: Intake
    delivery: Delivery
    request: RefreshRequest
    run: RunInfo
    end: Deadline
    jobs: list[ChunkJob] = field(default_factory=list)  # refreshed in place
    requeued: int = 0  # keys they owed, queued again
    throttled: int = 0
    recorded: list[RecordedResult] = field(default_factory=list)
    last: bool = field(init=False)  # the message's last delivery
    # A chunk kept and refreshed here: the message's own deliveries, none of its hand-offs.
    _kept_last: bool = field(init=False)
    fanning: bool = field(init=False)  # chunks are queued, not refreshed here
    _keys: int = 0
    _sends: list[QueueMessage] = field(default_factory=list)
    _groups_started: set[str] = field(default_factory=set)  # sent a chunk already
    _kept: list[ChunkJob] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fanning = bool(self.intake.queue.tenancy_queue_url)
        self.last = last_chance(
            self.delivery, self.request.handoffs, self.intake.settings.max_receive_count
        )
        self._kept_last = last_chance(self.delivery, 0, self.intake.settings.max_receive_count)

    def take(self) -> RunReport:
        request, settings, store = self.request, self.intake.settings, self.intake.store
        start_by = self.end.before(settings.deadline_margin_seconds)
        answer = self._start(start_by)
        if answer is not None:
            return answer
        try:
            resolution = self.intake.resolver.resolve(
                request,
                self.run.run_id,
                chunk_size=min(settings.fanout_chunk_size, MAX_CHUNK_KEYS),
                sink=self.route,
                list_until=start_by,
                calls_end_by=self.end.before(settings.recording_reserve_seconds),
            )
        except CtmError as error:
            self.flush_sends()  # what was listed is refreshed
            if error.transient and not self.last:
                raise  # delivered again
            return self.give_up(error.error_code, error.message)
        self.flush_sends()
        settled = self._record_settled(resolution)
        handed_on = self._continue(resolution)
        self.refresh_kept()
        finished = resolution.resume is None
        if finished and not store.finish_resolution(self.run.run_id, segment_of(request.resume)):
            logger.info("another delivery owns this run's resolution; it finishes it")
        return self._report(resolution.keys, settled, handed_on + self.requeued)

    def _start(self, start_by: Deadline) -> RunReport | None:
        """Register the run (with the delivery of an original request); then the answer when
        there is nothing to resolve: a last delivery with too little time left gives up, a
        run taken in before answers as it stands."""
        original = self.request.chunk is None and self.request.resume is None
        created = self.intake.store.start_run(self.run, self.delivery.raw if original else None)
        if self.last and start_by.passed():
            why = "the last delivery had too little time left to resolve the request"
            return self.give_up("DEADLINE", why)
        return None if created else self._done_before()

    def _done_before(self) -> RunReport | None:
        """The answer for a run taken in before, when there is nothing left to do: a completed
        run answers as it finished; one resolved and queued already, with its state."""
        run_id, store = self.run.run_id, self.intake.store
        state = store.run_state(run_id)
        if state is not None and state.completed:
            logger.info("run already completed: nothing to do")
            return RunReport.replay(run_id, state.counts)
        if state is not None and not state.resolving and self.intake.queue.tenancy_queue_url:
            # A delivery killed between finishing the resolution and completing the run
            # (its chunks all done already) leaves the completion to this one.
            completed = store.complete_if_done(run_id)
            if completed is not None:
                return RunReport.replay(run_id, completed)
            logger.info("run already resolved and queued: nothing to do")
            return RunReport(run_id, state.counts.requested)
        return None

    def _record_settled(self, resolution: Resolution) -> int:
        """Keys found terminal while resolving (missing, or their lookup refused) are recorded
        at once; keys left out are logged. How many were new to the run."""
        store = self.intake.store
        settled = store.record_found_nothing(self.run, resolution.terminal)
        self.recorded += [RecordedResult(o, None, False) for o in resolution.terminal[:settled]]
        if resolution.mismatched:
            logger.warning(
                "keys CTM listed that do not match the selector were left out",
                extra={"mismatched": resolution.mismatched},
            )
        if resolution.malformed:
            # Items that are not key objects cannot be refreshed: the listing was not whole.
            why = f"CTM listed {resolution.malformed} items that are not key objects"
            store.record_listing_failure(self.run.run_id, "BAD_RESPONSE", why)
            logger.error("listing incomplete", extra={"malformed": resolution.malformed})
        return settled

    def give_up(self, error_code: str, why: str) -> RunReport:
        """A request that cannot be resolved (its last delivery out of time, or CTM's listing
        refused for good): the keys it names fail (nothing stays PENDING), a selector's
        listing failure is recorded on the run, and its resolution ends, so the run completes
        with what was listed, and says so (an ERROR). The message is dead-lettered."""
        request, run_id, store = self.request, self.run.run_id, self.intake.store
        outcomes = [
            RefreshOutcome(
                KeyInfo(key_id, oci_key_id=key_id if key_id in request.ocids else None),
                status=Status.FAILED,
                error_code=error_code,
                error_message=why,
                recorded_at=iso_now(self.intake.runtime),
            )
            for key_id in (*request.key_ids, *request.ocids)
        ]
        store.record_found_nothing(self.run, outcomes)
        if request.selector is not None:
            store.record_listing_failure(run_id, error_code, why)
        store.finish_resolution(run_id, segment_of(request.resume))
        completed = store.complete_if_done(run_id)
        logger.error("request given up", extra={"error_code": error_code, "keys": len(outcomes)})
        return RunReport(
            run_id=run_id,
            requested=len(outcomes),
            recorded=tuple(RecordedResult(o, None, False) for o in outcomes),
            gave_up=len(outcomes) or 1,
            counts=completed,
            completed_now=completed is not None,
            listing_error=(error_code, why) if request.selector is not None else None,
            verdict=DEAD_LETTER,
        )

    def _continue(self, resolution: Resolution) -> int:
        """Hand the rest of a selector's listing, when resolution stopped short of its end, on
        to a continuation message. How many were sent."""
        request, run, resume = self.request, self.run, resolution.resume
        if resume is None or request.selector is None:
            return 0
        if not self.intake.queue.can_hand_on:
            logger.error("deadline reached while resolving, and no queue to hand on to")
            return 0
        segment = segment_of(request.resume)
        if not self.intake.store.hand_on_resolution(run.run_id, segment, segment_of(resume)):
            logger.info("another delivery owns this run's resolution; not handed on")
            return 0
        # A continuation that read no page counts its hand-off as a delivery (liveness).
        handoffs = 0 if resolution.pages else request.handoffs + 1
        body = continuation_message(run, request.selector, dict(resume), handoffs)
        position = json.dumps(resume, sort_keys=True, default=str)
        dedup = hashlib.sha256(f"{run.run_id}\n{position}".encode()).hexdigest()
        self.intake.queue.send([QueueMessage(body, f"resolve:{run.run_id}", dedup)])
        logger.info("resolution handed on", extra={"resume": resume})
        return 1

    def _report(self, resolved: int, settled: int, handed_on: int) -> RunReport:
        """``resolved`` keys in chunks, ``settled`` found terminal, ``handed_on`` queued."""
        jobs = self.jobs
        pending = sum(len(j.pending) + len(j.leftovers) for j in jobs)
        gave_up = sum(j.gave_up for j in jobs)
        completed = next((j.completed for j in jobs if j.completed), None)
        if completed is None and all(j.done for j in jobs):
            completed = self.intake.store.complete_if_done(self.run.run_id)
        log_outcomes(self.recorded, completed)
        return RunReport(
            run_id=self.run.run_id,
            requested=resolved + settled,
            recorded=tuple(self.recorded),
            pending=pending,
            handed_off=handed_on,
            fanned_out=resolved if self.fanning else 0,
            throttled=self.throttled,
            gave_up=gave_up,
            counts=completed,
            completed_now=completed is not None,
            verdict=_verdict(self.delivery, pending, gave_up),
        )

    def route(self, chunk: Chunk) -> None:
        """Register ``chunk`` with the run, then queue it or keep it."""
        run, settings = self.run, self.intake.settings
        entries = self.intake.store.register_chunk(
            run, chunk.chunk_id, chunk.tenancy, chunk.entries
        )
        if not entries:
            return
        keys = tuple(entry.key_id for entry in entries)
        job = ChunkJob(run, chunk.chunk_id, keys, None, chunk.tenancy, last_chance=self._kept_last)
        self._keys += len(entries)
        fan_out = self.intake.queue.queue_url and self._keys > settings.fanout_chunk_size
        if not self.fanning and fan_out:
            self.fanning = True
            for kept in self._kept:
                self._send(kept)
            self._kept.clear()
        if self.fanning:
            self._send(job)
            return
        self._kept.append(job)
        if not self.intake.queue.can_hand_on and len(self._kept) >= DIRECT_PASS_CHUNKS:
            self.refresh_kept()

    def refresh_kept(self) -> None:
        """Refresh the chunks kept here (in one engine pass)."""
        if not self._kept:
            return
        jobs, self._kept = self._kept, []
        worker = self.intake.worker
        self.throttled += worker.work(jobs, self.end).throttled
        for job in jobs:
            self.recorded += job.recorded
            owed = len(job.pending) + len(job.leftovers)
            if self.delivery.trigger is not Trigger.SQS and owed and self.intake.queue.can_hand_on:
                # Only SQS delivers again: the other triggers' owed keys are queued again.
                self.requeued += worker.send_again(job, owed, "re-queued")
                job.leftovers, job.pending = [], {}
        self.jobs += jobs

    def flush_sends(self) -> None:
        if self._sends:
            self.intake.queue.send(self._sends)
            self._sends = []

    def _send(self, job: ChunkJob) -> None:
        body = chunk_message(self.run, job.chunk_id, job.key_ids)
        group = job.tenancy or UNKNOWN_TENANCY
        self._sends.append(QueueMessage(body, group, job.chunk_id))
        # A group's first chunk leaves at once (its tenancy starts refreshing while the listing
        # goes on); the others leave ten to a call.
        first = group not in self._groups_started
        self._groups_started.add(group)
        if first or len(self._sends) >= SEND_BATCH:
            self.flush_sends()


def _verdict(delivery: Delivery, pending: int, gave_up: int) -> MessageVerdict:
    """A work-queue message refreshed in place comes back while it owes keys, and goes to
    the dead-letter queue when its last delivery gave up on some."""
    if delivery.trigger is not Trigger.SQS:
        return DONE
    if pending:
        return MessageVerdict.retry(delivery.receive_count)
    return DEAD_LETTER if gave_up else DONE
