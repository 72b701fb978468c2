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
        self,
        delivery: Delivery,
        request: RefreshRequest,
        run: RunInfo,
        end: Deadline,
    ) -> RunReport:
        """Start (or continue, or replay) ``run`` from ``request``: its keys resolved into
        chunks, each registered and queued (or kept and refreshed here), what was not found
        recorded, the listing handed on if time ran short. ``end``: the invocation's."""
        start_by = end.before(self.settings.deadline_margin_seconds)
        last = last_chance(delivery, request.handoffs, self.settings.max_receive_count)
        answer = self._start(delivery, request, run, last=last, start_by=start_by)
        if answer is not None:
            return answer
        router = ChunkRouter(self.settings, self.store, self.queue, self.worker, run, delivery, end)
        try:
            resolution = self._resolve(request, run, router, start_by, end)
        except CtmError as error:
            if error.transient and not last:
                raise  # delivered again
            return self.give_up(run, request, error.error_code, error.message)
        settled = self._record_settled(run, resolution, router)
        handed_on = self._continue(run, request, resolution)
        router.refresh_kept()
        if resolution.resume is None and not self.store.finish_resolution(
            run.run_id, segment_of(request.resume)
        ):
            logger.info("another delivery owns this run's resolution; it finishes it")
        return self._report(
            run,
            delivery,
            router,
            requested=resolution.keys + settled,
            fanned_out=resolution.keys if router.fanning else 0,
            handed_on=handed_on + router.requeued,
        )

    def _start(
        self,
        delivery: Delivery,
        request: RefreshRequest,
        run: RunInfo,
        *,
        last: bool,
        start_by: Deadline,
    ) -> RunReport | None:
        """Register ``run`` (with the delivery of an original request); then the answer when
        there is nothing to resolve: a last delivery with too little time left gives up, a
        run taken in before answers as it stands."""
        original = request.chunk is None and request.resume is None
        created = self.store.start_run(run, delivery.raw if original else None)
        if last and start_by.passed():
            why = "the last delivery had too little time left to resolve the request"
            return self.give_up(run, request, "DEADLINE", why)
        return None if created else self._done_before(run)

    def _resolve(
        self,
        request: RefreshRequest,
        run: RunInfo,
        router: ChunkRouter,
        start_by: Deadline,
        end: Deadline,
    ) -> Resolution:
        """Resolve ``request`` into chunks for ``router``; what was listed is sent, also when
        CTM's listing fails."""
        try:
            resolution = self.resolver.resolve(
                request,
                run.run_id,
                chunk_size=min(self.settings.fanout_chunk_size, MAX_CHUNK_KEYS),
                sink=router.route,
                list_until=start_by,
                calls_end_by=end.before(self.settings.recording_reserve_seconds),
            )
        except CtmError:
            router.flush_sends()  # what was listed is refreshed
            raise
        router.flush_sends()
        return resolution

    def _done_before(self, run: RunInfo) -> RunReport | None:
        """The answer for a run taken in before, when there is nothing left to do: a completed
        run answers as it finished; one resolved and queued already, with its state."""
        state = self.store.run_state(run.run_id)
        if state is not None and state.completed:
            logger.info("run already completed: nothing to do")
            return RunReport.replay(run.run_id, state.counts)
        if state is not None and not state.resolving and self.queue.tenancy_queue_url:
            # A delivery killed between finishing the resolution and completing the run
            # (its chunks all done already) leaves the completion to this one.
            completed = self.store.complete_if_done(run.run_id)
            if completed is not None:
                return RunReport.replay(run.run_id, completed)
            logger.info("run already resolved and queued: nothing to do")
            return RunReport(run.run_id, state.counts.requested)
        return None

    def _record_settled(self, run: RunInfo, resolution: Resolution, router: ChunkRouter) -> int:
        """Keys found terminal while resolving (missing, or their lookup refused) are recorded
        at once; keys left out are logged. How many were new to the run."""
        settled = self.store.record_found_nothing(run, resolution.terminal)
        recorded = resolution.terminal[:settled]
        router.recorded += [RecordedResult(outcome, None, False) for outcome in recorded]
        if resolution.mismatched:
            logger.warning(
                "keys CTM listed that do not match the selector were left out",
                extra={"mismatched": resolution.mismatched},
            )
        if resolution.malformed:
            # Items that are not key objects cannot be refreshed: the listing was not whole.
            why = f"CTM listed {resolution.malformed} items that are not key objects"
            self.store.record_listing_failure(run.run_id, "BAD_RESPONSE", why)
            logger.error("listing incomplete", extra={"malformed": resolution.malformed})
        return settled

    def give_up(
        self, run: RunInfo, request: RefreshRequest, error_code: str, why: str
    ) -> RunReport:
        """A request that cannot be resolved (its last delivery out of time, or CTM's listing
        refused for good): the keys it names fail (nothing stays PENDING), a selector's
        listing failure is recorded on the run, and its resolution ends, so the run completes
        with what was listed, and says so (an ERROR). The message is dead-lettered."""
        outcomes = [
            RefreshOutcome(
                KeyInfo(key_id, oci_key_id=key_id if key_id in request.ocids else None),
                status=Status.FAILED,
                error_code=error_code,
                error_message=why,
                recorded_at=iso_now(self.runtime),
            )
            for key_id in (*request.key_ids, *request.ocids)
        ]
        self.store.record_found_nothing(run, outcomes)
        if request.selector is not None:
            self.store.record_listing_failure(run.run_id, error_code, why)
        self.store.finish_resolution(run.run_id, segment_of(request.resume))
        completed = self.store.complete_if_done(run.run_id)
        logger.error("request given up", extra={"error_code": error_code, "keys": len(outcomes)})
        return RunReport(
            run_id=run.run_id,
            requested=len(outcomes),
            recorded=tuple(RecordedResult(o, None, False) for o in outcomes),
            gave_up=len(outcomes) or 1,
            counts=completed,
            completed_now=completed is not None,
            listing_error=(error_code, why) if request.selector is not None else None,
            verdict=DEAD_LETTER,
        )

    def _continue(self, run: RunInfo, request: RefreshRequest, resolution: Resolution) -> int:
        """Hand the rest of a selector's listing, when resolution stopped short of its end, on
        to a continuation message. How many were sent."""
        resume = resolution.resume
        if resume is None or request.selector is None:
            return 0
        if not self.queue.can_hand_on:
            logger.error("deadline reached while resolving, and no queue to hand on to")
            return 0
        segment = segment_of(request.resume)
        if not self.store.hand_on_resolution(run.run_id, segment, segment_of(resume)):
            logger.info("another delivery owns this run's resolution; not handed on")
            return 0
        # A continuation that read no page counts its hand-off as a delivery (liveness).
        handoffs = 0 if resolution.pages else request.handoffs + 1
        body = continuation_message(run, request.selector, dict(resume), handoffs)
        position = json.dumps(resume, sort_keys=True, default=str)
        dedup = hashlib.sha256(f"{run.run_id}\n{position}".encode()).hexdigest()
        self.queue.send([QueueMessage(body, f"resolve:{run.run_id}", dedup)])
        logger.info("resolution handed on", extra={"resume": resume})
        return 1

    def _report(
        self,
        run: RunInfo,
        delivery: Delivery,
        router: ChunkRouter,
        *,
        requested: int,
        fanned_out: int,
        handed_on: int,
    ) -> RunReport:
        jobs = router.jobs
        pending = sum(len(j.pending) + len(j.leftovers) for j in jobs)
        gave_up = sum(j.gave_up for j in jobs)
        completed = next((j.completed for j in jobs if j.completed), None)
        if completed is None and all(j.done for j in jobs):
            completed = self.store.complete_if_done(run.run_id)
        if completed:
            logger.info("run completed", extra={"counts": completed.__dict__})
        log_outcomes(router.recorded)
        return RunReport(
            run_id=run.run_id,
            requested=requested,
            recorded=tuple(router.recorded),
            pending=pending,
            handed_off=handed_on,
            fanned_out=fanned_out,
            throttled=router.throttled,
            gave_up=gave_up,
            counts=completed,
            completed_now=completed is not None,
            verdict=_verdict(delivery, pending, gave_up),
        )


def _verdict(delivery: Delivery, pending: int, gave_up: int) -> MessageVerdict:
    """A work-queue message refreshed in place comes back while it owes keys, and goes to
    the dead-letter queue when its last delivery gave up on some."""
    if delivery.trigger is not Trigger.SQS:
        return DONE
    if pending:
        return MessageVerdict.retry(delivery.receive_count)
    return DEAD_LETTER if gave_up else DONE


@dataclass
class ChunkRouter:
    """Where an intake's chunks go as resolution hands them over: registered with the run,
    then queued (always with a tenancy queue; with the work queue only, once the run passes
    ``FANOUT_CHUNK_SIZE`` keys) or kept and refreshed in place."""

    settings: RefreshSettings
    store: RunTable
    queue: RunQueues
    worker: ChunkWorker
    run: RunInfo
    delivery: Delivery
    end: Deadline
    jobs: list[ChunkJob] = field(default_factory=list, init=False)  # refreshed in place
    requeued: int = field(default=0, init=False)  # keys they owed, queued again
    throttled: int = field(default=0, init=False)
    recorded: list[RecordedResult] = field(default_factory=list, init=False)
    fanning: bool = field(init=False)
    _decided: bool = field(init=False)
    _keys: int = field(default=0, init=False)
    _sends: list[QueueMessage] = field(default_factory=list, init=False)
    _groups_started: set[str] = field(default_factory=set, init=False)  # sent a chunk already
    _kept: list[ChunkJob] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.fanning = bool(self.queue.tenancy_queue_url)
        self._decided = self.fanning or not self.queue.queue_url

    def route(self, chunk: Chunk) -> None:
        """Register ``chunk`` with the run, then queue it or keep it."""
        run = self.run
        entries = self.store.register_chunk(run, chunk.chunk_id, chunk.tenancy, chunk.entries)
        if not entries:
            return
        keys = tuple(entry.key_id for entry in entries)
        last = last_chance(self.delivery, 0, self.settings.max_receive_count)
        job = ChunkJob(run, chunk.chunk_id, keys, None, chunk.tenancy, last_chance=last)
        self._keys += len(entries)
        limit = self.settings.fanout_chunk_size
        if not self._decided and self._keys > limit:
            self._decided = self.fanning = True
            for kept in self._kept:
                self._send(kept)
            self._kept.clear()
        if self.fanning:
            self._send(job)
            return
        self._kept.append(job)
        if not self.queue.can_hand_on and len(self._kept) >= DIRECT_PASS_CHUNKS:
            self.refresh_kept()

    def refresh_kept(self) -> None:
        """Refresh the chunks kept here (in one engine pass)."""
        if not self._kept:
            return
        jobs, self._kept = self._kept, []
        this_pass = self.worker.work(jobs, self.end)
        self.throttled += this_pass.throttled
        for job in jobs:
            self.recorded += job.recorded
            owed = len(job.pending) + len(job.leftovers)
            if self.delivery.trigger is not Trigger.SQS and owed and self.queue.can_hand_on:
                # Only SQS delivers again: the other triggers' owed keys are queued again.
                self.requeued += self.worker.send_again(job, owed, "re-queued")
                job.leftovers, job.pending = [], {}
        self.jobs += jobs

    def flush_sends(self) -> None:
        if self._sends:
            self.queue.send(self._sends)
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
