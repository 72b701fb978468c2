"""The refresh function's event dispatch (docs/reference.md 4.2) behind
``functions/refresh/app.py``: an SQS batch goes through one pass, and the verdict of each
message becomes the partial batch response; a scheduler or EventBridge event is one delivery;
the sweep schedule's event looks for stuck runs. Metrics and the answer's shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from cckm_refresh.config import RefreshSettings
from cckm_refresh.model import Status
from cckm_refresh.observability import logger, metrics
from cckm_refresh.run.report import Action, Rejection, RunReport
from cckm_refresh.run.service import RefreshService
from cckm_refresh.runtime import SYSTEM, Deadline, Runtime
from cckm_refresh.table.items import ChunkTally
from cckm_refresh.triggers import is_sqs_event, is_sweep, single_delivery, sqs_delivery_of

A_LAMBDA_LIFETIME = 900.0  # without a Lambda context: as long as Lambda's longest invocation


@dataclass
class RefreshFunction:
    """The refresh function's dispatch: its settings, and the service (built on first use by
    ``functions/refresh/app.py``, once per container)."""

    settings: RefreshSettings
    services: Callable[[], RefreshService]
    runtime: Runtime = SYSTEM
    _timeout_checked: bool = field(default=False, init=False)

    def handle(self, event: Any, context: Any) -> dict[str, Any]:
        """Dispatch one invocation event (docs/reference.md 4.2) and shape the response."""
        end = self._end_of(context)
        if is_sqs_event(event):
            return self._sqs_batch(event["Records"], end)
        if is_sweep(event):
            return self._sweep()
        delivery = single_delivery(event)
        logger.append_keys(source_id=delivery.source_id)
        result = self.services().process(delivery, end)
        _emit(result)
        return _response(result)

    def timeout_is(self, seconds: float) -> None:
        """The function's timeout, when known before its first invocation (the local
        runners know the template's): checked now, as a cold start checks it."""
        self.settings.check_time_for_one_call(seconds)
        self._timeout_checked = True

    def _end_of(self, context: Any) -> Deadline:
        """When this invocation ends. The container's first invocation also checks that the
        function's timeout leaves time for one CTM call after the margin (docs/reference.md 4.3)."""
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        seconds = float(remaining()) / 1000.0 if remaining is not None else A_LAMBDA_LIFETIME
        if not self._timeout_checked:
            self.timeout_is(seconds)
        return Deadline.within(seconds, self.runtime)

    def _sqs_batch(self, records: list[dict[str, Any]], end: Deadline) -> dict[str, Any]:
        """Every record of the batch in one pass; the partial batch response names the
        messages SQS must deliver again (or dead-letter), each as its run's verdict says.

        Not Powertools' BatchProcessor: it hands records to a handler one at a time, and the
        point here is that all of them share one engine pass (and the tenancy's pace).
        """
        late = self._too_late(records, end)
        records = [r for r in records if r not in late]
        failures = [{"itemIdentifier": record["messageId"]} for record in late]
        deliveries = [sqs_delivery_of(record) for record in records]
        results = self.services().process_batch(deliveries, end) if deliveries else []
        for record, result in zip(records, results, strict=True):
            _emit(result)
            if result.verdict.action is not Action.DONE:
                failures.append({"itemIdentifier": record["messageId"]})
            if result.verdict.action is Action.RETRY:
                self._retry_later(record, result.verdict.delay)
        return {"batchItemFailures": failures}

    def _too_late(self, records: list[dict[str, Any]], end: Deadline) -> list[dict[str, Any]]:
        """The records SQS delivers again untouched (which counts as a delivery). With too
        little time to start anything, only last deliveries are processed: they give up on
        their keys (``DEADLINE``) so that none stays PENDING."""
        if end.remaining() >= self.settings.deadline_margin_seconds:
            return []
        last = self.settings.max_receive_count
        late = [r for r in records if sqs_delivery_of(r).receive_count < last]
        logger.warning(
            "too little time left to start; messages delivered again",
            extra={"messages": len(late)},
        )
        return late

    def _sweep(self) -> dict[str, Any]:
        """The sweep schedule: stuck runs found and their work queued again (``RunsStuck``)."""
        report = self.services().sweep()
        metrics.add_metric(name="RunsOpen", unit=MetricUnit.Count, value=report.open_runs)
        metrics.add_metric(name="RunsStuck", unit=MetricUnit.Count, value=len(report.stuck))
        return {
            "status": "SWEPT",
            "open_runs": report.open_runs,
            "stuck": list(report.stuck),
            "chunks_queued": report.chunks_queued,
            "listings_queued": report.listings_queued,
        }

    def _retry_later(self, record: dict[str, Any], delay: int) -> None:
        """A message that still owes keys comes back in ``delay`` seconds."""
        queue_arn = str(record.get("eventSourceARN", ""))
        moved = self.services().retry_later(queue_arn, record["receiptHandle"], delay)
        logger.info(
            "message will be delivered again",
            extra={"message_id": record["messageId"], "in_seconds": moved},
        )


def _emit(result: RunReport | Rejection) -> None:
    if isinstance(result, Rejection):
        metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
        return
    metrics.add_metric(
        name="KeysRefreshed", unit=MetricUnit.Count, value=result.count(Status.REFRESHED)
    )
    metrics.add_metric(name="KeysFailed", unit=MetricUnit.Count, value=result.count(Status.FAILED))
    metrics.add_metric(
        name="KeysNotFound", unit=MetricUnit.Count, value=result.count(Status.NOT_FOUND)
    )
    metrics.add_metric(name="KeysPending", unit=MetricUnit.Count, value=result.pending)
    metrics.add_metric(name="KeysRotated", unit=MetricUnit.Count, value=result.rotated)
    metrics.add_metric(name="ThrottledResponses", unit=MetricUnit.Count, value=result.throttled)
    # One value per refresh call (EMF carries up to 100 values a name; Powertools flushes
    # before that), so the dashboard's p50/p99 are of calls, not of invocation averages.
    for latency in result.latencies_ms:
        metrics.add_metric(name="RefreshLatency", unit=MetricUnit.Milliseconds, value=latency)
    if result.completed_now:
        metrics.add_metric(name="RunsCompleted", unit=MetricUnit.Count, value=1)


def _response(result: RunReport | Rejection) -> dict[str, Any]:
    if isinstance(result, Rejection):
        return {"status": "REJECTED", "source_id": result.source_id, "error": result.error}
    counts = result.counts.as_dict() if result.counts else _counts_of(result)
    return {
        "status": str(result.status),
        "run_id": result.run_id,
        "requested": result.counts.requested if result.counts else result.requested,
        **{name: counts[name] for name in ("refreshed", "not_found", "failed", "skipped")},
        "pending": result.pending,
        "rotated": counts["rotated"],
        "handed_off": result.handed_off,
        "fanned_out": result.fanned_out,
    }


def _counts_of(result: RunReport) -> dict[str, int]:
    """What this delivery recorded, counted as a run's counts are."""
    terminal = [r for r in result.recorded if r.outcome.status is not Status.PENDING]
    return ChunkTally.of((r.outcome.status, r.version_changed) for r in terminal).as_dict()
