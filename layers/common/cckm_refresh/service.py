"""One delivery, start to finish: validate, resolve, refresh (or fan out), record, complete.

Data flows one way: delivery -> request -> work items -> outcomes -> store. This module owns
the run rules of CONTRACT 4.3 and 4.4; the engine owns pacing and the deadline, the store owns
DynamoDB, the work queue owns SQS, the CTM client owns HTTP.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cckm_refresh.clock import iso_now
from cckm_refresh.config import RefreshSettings
from cckm_refresh.engine import RefreshEngine, WorkItem
from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, Status, Trigger
from cckm_refresh.observability import logger
from cckm_refresh.ratelimit import UNKNOWN_TENANCY
from cckm_refresh.request import (
    RefreshRequest,
    RequestError,
    parse_request,
    parse_request_body,
    request_to_message,
)
from cckm_refresh.store import BATCH_WRITE, RecordedResult, ResultStore, RunCounts
from cckm_refresh.triggers import Delivery
from cckm_refresh.workqueue import WorkQueue

OCID_LOOKUP_WORKERS = 4
SELECTOR_PAGE_SIZE = 500
RETRY_DELAY_BASE = 30
RETRY_DELAY_CAP = 900


class KeyDirectory(Protocol):
    """The CTM list operation, as resolution needs it."""

    def list_oci_keys(
        self,
        filters: dict[str, str] | None = None,
        *,
        key_id: str | None = None,
        page_size: int = 100,
    ) -> Iterator[dict[str, Any]]: ...


@dataclass(frozen=True)
class Rejection:
    """The delivery's request was invalid: recorded, copied to the DLQ, never retried."""

    source_id: str
    error: str


@dataclass(frozen=True)
class RunReport:
    """What one delivery did to its run."""

    run_id: str
    requested: int
    recorded: tuple[RecordedResult, ...] = ()
    pending: int = 0
    handed_off: int = 0
    fanned_out: int = 0
    throttled: int = 0
    gave_up: int = 0
    completed: RunCounts | None = None

    def count(self, status: Status) -> int:
        return sum(1 for r in self.recorded if r.outcome.status is status)

    @property
    def rotated(self) -> int:
        return sum(1 for r in self.recorded if r.version_changed)

    @property
    def must_retry(self) -> bool:
        """SQS must deliver the message again: keys are PENDING, or this was its last chance
        and it belongs in the dead-letter queue (CONTRACT 4.4)."""
        return self.pending > 0 or self.gave_up > 0


@dataclass(frozen=True)
class _Resolved:
    items: tuple[WorkItem, ...]
    not_found: tuple[RefreshOutcome, ...]


class RefreshService:
    """Processes deliveries; built once per container and shared by its invocations."""

    def __init__(
        self,
        *,
        settings: RefreshSettings,
        directory: KeyDirectory,
        engine: RefreshEngine,
        store: ResultStore,
        queue: WorkQueue,
    ) -> None:
        self._settings = settings
        self._directory = directory
        self._engine = engine
        self._store = store
        self._queue = queue

    def process(
        self, delivery: Delivery, seconds_left: Callable[[], float]
    ) -> RunReport | Rejection:
        """Process one delivery. ``seconds_left`` is the invocation's remaining time."""
        try:
            request = (
                parse_request_body(delivery.raw)
                if delivery.trigger is Trigger.SQS
                else parse_request(delivery.document)
            )
        except RequestError as error:
            return self._reject(delivery, str(error))
        run = RunInfo(
            run_id=request.run_id or request.request_id or delivery.default_run_id,
            trigger=delivery.trigger,
            request_id=request.request_id,
            reason=request.reason,
            dry_run=request.dry_run,
        )
        logger.append_keys(run_id=run.run_id, trigger=str(run.trigger))
        resolved = self._resolve(request)
        requested = len(resolved.items) + len(resolved.not_found)
        created = self._store.start_run(run, requested)
        items = resolved.items if created else self._still_owed(run, resolved.items)
        logger.info(
            "run accepted",
            extra={"requested": requested, "to_process": len(items), "new_run": created},
        )
        # NOT_FOUND is terminal and its item has a fixed key: writing it again changes nothing.
        recorded = self._store.record(run, resolved.not_found, {})

        if run.dry_run:
            skipped = [_outcome(item, Status.SKIPPED) for item in items]
            recorded += self._store.record(run, skipped, {})
            return self._finish(run, requested, recorded)

        if self._should_fan_out(request, items):
            self._store.track(run, [_outcome(item, Status.PENDING) for item in items])
            sent = self._send(run, items)
            logger.info("run fanned out", extra={"messages": sent, "keys": len(items)})
            return RunReport(run.run_id, requested, tuple(recorded), fanned_out=len(items))

        latest = self._store.latest_of([item.key_id for item in items])
        items = tuple(replace(i, known=latest.get(i.key_id) or i.known) for i in items)
        margin = self._settings.deadline_margin_seconds
        last_chance = (
            delivery.trigger is Trigger.SQS
            and delivery.receive_count >= self._settings.max_receive_count
        )
        recorder = _Recorder(self._store, run, latest, last_chance, delivery.receive_count)
        result = self._engine.run(items, lambda: seconds_left() - margin, recorder.add)
        recorded += recorder.finish()
        gave_up = recorder.gave_up
        handed_off = self._hand_off(run, result.leftovers)
        not_handed_off = len(result.leftovers) - handed_off
        pending = [r.outcome for r in recorded if r.outcome.status is Status.PENDING]
        if pending and delivery.trigger is not Trigger.SQS and self._queue.queue_url:
            # Not an SQS message, so nothing would deliver it again: re-queue what is owed.
            self._send(run, [WorkItem(o.key_id, _hint_of(o)) for o in pending])
            handed_off += len(pending)
            pending = []
        return self._finish(
            run,
            requested,
            recorded,
            pending=len(pending) + not_handed_off,
            handed_off=handed_off,
            gave_up=gave_up,
            throttled=result.throttled,
        )

    def retry_later(self, receipt_handle: str, receive_count: int) -> int:
        """Back off a message that still owes keys: 30 s, 60 s, 120 s... capped at 15 minutes,
        instead of the queue's visibility timeout (6 x the function timeout)."""
        delay = min(RETRY_DELAY_CAP, RETRY_DELAY_BASE * 2 ** max(0, receive_count - 1))
        return delay if self._queue.retry_later(receipt_handle, delay) else 0

    # --- steps ------------------------------------------------------------------------------

    def _reject(self, delivery: Delivery, error: str) -> Rejection:
        logger.warning("request rejected", extra={"source_id": delivery.source_id, "error": error})
        self._store.record_rejected(delivery.source_id, error, delivery.raw)
        self._queue.dead_letter(delivery.raw, error)
        return Rejection(delivery.source_id, error)

    def _resolve(self, request: RefreshRequest) -> _Resolved:
        """CCKM ids as given; OCIDs and selectors through the list call; de-duplicated."""
        found: dict[str, WorkItem] = {}
        not_found: list[RefreshOutcome] = []
        for key_id in request.key_ids:
            found.setdefault(key_id, WorkItem(key_id))
        if request.ocids:
            workers = min(OCID_LOOKUP_WORKERS, len(request.ocids))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resolve") as pool:
                matches = list(pool.map(self._lookup_ocid, request.ocids))
            for ocid, info in zip(request.ocids, matches, strict=True):
                if info is None:
                    not_found.append(
                        RefreshOutcome(
                            key_id=ocid,
                            oci_key_id=ocid,
                            status=Status.NOT_FOUND,
                            error_message="no CCKM key has this OCI key OCID",
                        )
                    )
                elif info.key_id not in found or found[info.key_id].known is None:
                    found[info.key_id] = WorkItem(info.key_id, info)
        if request.selector is not None:
            query = None if request.selector.all_keys else request.selector.as_query()
            # Large pages: each costs CTM's latency once, and a short page is handled anyway.
            for resource in self._directory.list_oci_keys(query, page_size=SELECTOR_PAGE_SIZE):
                info = KeyInfo.from_ctm(resource)
                if info.key_id not in found or found[info.key_id].known is None:
                    found[info.key_id] = WorkItem(info.key_id, info)
        return _Resolved(tuple(found.values()), tuple(not_found))

    def _lookup_ocid(self, ocid: str) -> KeyInfo | None:
        for resource in self._directory.list_oci_keys(key_id=ocid):
            info = KeyInfo.from_ctm(resource)
            if info.oci_key_id == ocid:
                return info
        return None

    def _still_owed(self, run: RunInfo, items: Sequence[WorkItem]) -> tuple[WorkItem, ...]:
        """Drop keys the run already finished; keep hints (tenancy) from its PENDING items."""
        existing = self._store.results_of(run.run_id, [item.key_id for item in items])
        owed = []
        for item in items:
            result = existing.get(item.key_id)
            if result is None:
                owed.append(item)
            elif result.get("status") == Status.PENDING:
                owed.append(
                    item if item.known else WorkItem(item.key_id, KeyInfo.from_item(result))
                )
        logger.info("run resumed", extra={"already_done": len(items) - len(owed)})
        return tuple(owed)

    def _should_fan_out(self, request: RefreshRequest, items: Sequence[WorkItem]) -> bool:
        return (
            request.run_id is None
            and bool(self._queue.queue_url)
            and len(items) > self._settings.fanout_chunk_size
        )

    def _send(self, run: RunInfo, items: Sequence[WorkItem]) -> int:
        size = self._settings.fanout_chunk_size
        ordered = list(_interleave_tenancies(items))
        bodies = [
            request_to_message(
                [item.key_id for item in ordered[i : i + size]],
                run_id=run.run_id,
                reason=run.reason,
                dry_run=run.dry_run,
            )
            for i in range(0, len(ordered), size)
        ]
        return self._queue.send(bodies)

    def _hand_off(self, run: RunInfo, leftovers: Sequence[WorkItem]) -> int:
        if not leftovers:
            return 0
        self._store.track(run, [_outcome(item, Status.PENDING) for item in leftovers])
        if not self._queue.queue_url:
            logger.warning("deadline reached with no work queue", extra={"left": len(leftovers)})
            return 0
        self._send(run, leftovers)
        logger.info("deadline near: keys handed on", extra={"keys": len(leftovers)})
        return len(leftovers)

    def _finish(
        self,
        run: RunInfo,
        requested: int,
        recorded: list[RecordedResult],
        *,
        pending: int = 0,
        handed_off: int = 0,
        gave_up: int = 0,
        throttled: int = 0,
    ) -> RunReport:
        _log_outcomes(recorded)
        completed = None if pending else self._store.complete_if_done(run.run_id)
        if completed:
            logger.info("run completed", extra={"counts": completed.__dict__})
        return RunReport(
            run_id=run.run_id,
            requested=requested,
            recorded=tuple(recorded),
            pending=pending,
            handed_off=handed_off,
            gave_up=gave_up,
            throttled=throttled,
            completed=completed,
        )


class _Recorder:
    """Records outcomes as the engine yields them, while other calls wait for their slot:
    the ``KEY`` item at once (in the worker's thread), the results 25 at a time."""

    def __init__(
        self,
        store: ResultStore,
        run: RunInfo,
        latest: Mapping[str, KeyInfo],
        last_chance: bool,
        deliveries: int,
    ) -> None:
        self._store = store
        self._run = run
        self._latest = latest
        self._last_chance = last_chance
        self._deliveries = deliveries
        self._lock = threading.Lock()
        self._unwritten: list[RecordedResult] = []
        self.recorded: list[RecordedResult] = []
        self.gave_up = 0

    def add(self, outcome: RefreshOutcome) -> None:
        if self._last_chance and outcome.status is Status.PENDING:
            outcome = _give_up(outcome, self._deliveries)
            with self._lock:
                self.gave_up += 1
        result = self._store.move_key_forward(self._run, outcome, self._latest.get(outcome.key_id))
        batch: list[RecordedResult] = []
        with self._lock:
            self.recorded.append(result)
            self._unwritten.append(result)
            if len(self._unwritten) >= BATCH_WRITE:
                batch, self._unwritten = self._unwritten, []
        if batch:
            self._store.write_results(self._run, batch)

    def finish(self) -> list[RecordedResult]:
        with self._lock:
            batch, self._unwritten = self._unwritten, []
        if batch:
            self._store.write_results(self._run, batch)
        return self.recorded


def _log_outcomes(recorded: Iterable[RecordedResult]) -> None:
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


def _outcome(item: WorkItem, status: Status) -> RefreshOutcome:
    info = item.known
    return RefreshOutcome(
        key_id=item.key_id,
        status=status,
        oci_key_id=info.oci_key_id if info else None,
        display_name=info.display_name if info else None,
        tenancy=info.tenancy if info else None,
        region=info.region if info else None,
        vault_name=info.vault_name if info else None,
    )


def _hint_of(outcome: RefreshOutcome) -> KeyInfo:
    return KeyInfo(key_id=outcome.key_id, tenancy=outcome.tenancy)


def _give_up(outcome: RefreshOutcome, deliveries: int) -> RefreshOutcome:
    if outcome.status is not Status.PENDING:
        return outcome
    return replace(
        outcome,
        status=Status.FAILED,
        error_message=(
            f"transient errors outlasted {deliveries} deliveries: {outcome.error_message or ''}"
        ).strip(": "),
        recorded_at=outcome.recorded_at or iso_now(),
    )


def _interleave_tenancies(items: Iterable[WorkItem]) -> Iterator[WorkItem]:
    """Round-robin over tenancies, so every chunk spreads its calls over every tenancy."""
    by_tenancy: dict[str, list[WorkItem]] = {}
    for item in items:
        by_tenancy.setdefault(item.tenancy or UNKNOWN_TENANCY, []).append(item)
    for group in itertools.zip_longest(*by_tenancy.values()):
        yield from (item for item in group if item is not None)
