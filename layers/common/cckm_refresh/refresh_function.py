"""The refresh function behind ``functions/refresh/app.py``: wiring and event dispatch.

Settings are read once per container (cold start); clients are created lazily, once, on the
first invocation that needs them, so importing the handler stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

from cckm_refresh.config import ConfigError, RefreshSettings
from cckm_refresh.engine import RefreshEngine
from cckm_refresh.model import RefreshOutcome, Status
from cckm_refresh.observability import logger, metrics
from cckm_refresh.ratelimit import TenancyRateLimiter
from cckm_refresh.service import RefreshService, Rejection, RunReport
from cckm_refresh.store import ResultStore
from cckm_refresh.triggers import is_sqs_event, single_delivery, sqs_delivery
from cckm_refresh.workqueue import WorkQueue

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord


def load_settings(env: dict[str, str] | None = None) -> RefreshSettings:
    """Read the configuration at cold start; a bad variable is one clear log line, then fails."""
    try:
        settings = RefreshSettings.from_env(env)
    except ConfigError as error:
        logger.error(str(error), extra={"variable": error.variable})
        raise
    if not settings.ctm_verify_tls:
        logger.warning("CTM_VERIFY_TLS is false: CTM's TLS certificate is NOT verified")
    return settings


def build_service(
    settings: RefreshSettings, on_outcome: Callable[[RefreshOutcome], None] | None = None
) -> RefreshService:
    """Create the clients (once per container) and the service that uses them."""
    import boto3
    from aws_lambda_powertools.utilities import parameters
    from botocore.config import Config

    from cckm_refresh.ctm.client import CtmClient

    def load_secret(force: bool) -> str:
        value = parameters.get_secret(settings.ctm_secret_id, max_age=300, force_fetch=force)
        return value if isinstance(value, str) else bytes(value).decode()

    aws = Config(
        retries={"mode": "standard", "max_attempts": 8},
        max_pool_connections=max(10, settings.refresh_concurrency + 2),
    )
    ctm = CtmClient.create(
        base_url=settings.ctm_base_url,
        secret_loader=load_secret,
        timeout=settings.ctm_timeout_seconds,
        max_attempts=settings.ctm_max_attempts,
        verify_tls=settings.ctm_verify_tls,
        pool_size=settings.refresh_concurrency,
    )
    engine = RefreshEngine(
        lambda key_id, pacer: ctm.refresh_oci_key(key_id, pacer=pacer),
        TenancyRateLimiter(settings.tenancy_rate_limit),
        concurrency=settings.refresh_concurrency,
        on_outcome=on_outcome,
    )
    return RefreshService(
        settings=settings,
        directory=ctm,
        engine=engine,
        store=ResultStore(
            boto3.client("dynamodb", config=aws),
            settings.results_table,
            settings.result_retention_days,
        ),
        queue=WorkQueue(
            boto3.client("sqs", config=aws),
            settings.work_queue_url,
            settings.dead_letter_queue_url,
        ),
    )


class PendingKeysError(Exception):
    """The message still owes keys (or belongs in the DLQ): SQS must deliver it again."""


class DeadlineError(Exception):
    """Too little time is left to start the message; SQS delivers it again."""


@dataclass
class RefreshFunction:
    """Per-container state of the refresh function: settings and the service built from them."""

    settings: RefreshSettings
    build_service: Callable[[RefreshSettings], RefreshService]

    @functools.cached_property
    def service(self) -> RefreshService:
        return self.build_service(self.settings)

    def handle(self, event: Any, context: Any) -> dict[str, Any]:
        """Dispatch one invocation event (CONTRACT 4.2) and shape the response."""
        if is_sqs_event(event):
            # Imported here: Powertools' batch utility (and the asyncio it loads) is only for
            # SQS batches, so a scheduled or EventBridge cold start never pays for it.
            from aws_lambda_powertools.utilities.batch import (
                BatchProcessor,
                EventType,
                process_partial_response,
            )

            processor = BatchProcessor(
                event_type=EventType.SQS, raise_on_entire_batch_failure=False
            )
            return dict(
                process_partial_response(
                    event=event,
                    record_handler=functools.partial(self._sqs_record, context=context),
                    processor=processor,
                    context=context,
                )
            )
        delivery = single_delivery(event)
        logger.append_keys(source_id=delivery.source_id)
        result = self.service.process(delivery, _seconds_left(context))
        self._emit(result)
        return _response(result)

    def _sqs_record(self, record: SQSRecord, context: Any) -> dict[str, Any]:
        logger.append_keys(message_id=record.message_id)
        seconds_left = _seconds_left(context)
        if seconds_left() < self.settings.deadline_margin_seconds:
            raise DeadlineError("too little time left to start this message")
        receive_count = int(record.attributes.approximate_receive_count or 1)
        delivery = sqs_delivery(record.message_id, record.body, receive_count)
        result = self.service.process(delivery, seconds_left)
        self._emit(result)
        if isinstance(result, RunReport) and result.must_retry:
            if result.pending:
                delay = self.service.retry_later(record.receipt_handle, receive_count)
                logger.info("message will be delivered again", extra={"in_seconds": delay})
            raise PendingKeysError(
                f"{result.pending} keys pending, {result.gave_up} given up in run {result.run_id}"
            )
        return _response(result)

    def _emit(self, result: RunReport | Rejection) -> None:
        if isinstance(result, Rejection):
            metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
            return
        metrics.add_metric(
            name="KeysRefreshed", unit=MetricUnit.Count, value=result.count(Status.REFRESHED)
        )
        metrics.add_metric(
            name="KeysFailed", unit=MetricUnit.Count, value=result.count(Status.FAILED)
        )
        metrics.add_metric(
            name="KeysNotFound", unit=MetricUnit.Count, value=result.count(Status.NOT_FOUND)
        )
        metrics.add_metric(name="KeysPending", unit=MetricUnit.Count, value=result.pending)
        metrics.add_metric(name="KeysRotated", unit=MetricUnit.Count, value=result.rotated)
        metrics.add_metric(name="ThrottledResponses", unit=MetricUnit.Count, value=result.throttled)
        latencies = [
            r.outcome.duration_ms for r in result.recorded if r.outcome.status is Status.REFRESHED
        ]
        if latencies:
            metrics.add_metric(
                name="RefreshLatency",
                unit=MetricUnit.Milliseconds,
                value=sum(latencies) / len(latencies),
            )
        if result.completed:
            metrics.add_metric(name="RunsCompleted", unit=MetricUnit.Count, value=1)


def _seconds_left(context: Any) -> Callable[[], float]:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return lambda: 900.0
    return lambda: float(remaining()) / 1000.0


def _response(result: RunReport | Rejection) -> dict[str, Any]:
    if isinstance(result, Rejection):
        return {"status": "REJECTED", "source_id": result.source_id, "error": result.error}
    return {
        "status": "COMPLETED" if result.completed else "RUNNING",
        "run_id": result.run_id,
        "requested": result.requested,
        "refreshed": result.count(Status.REFRESHED),
        "not_found": result.count(Status.NOT_FOUND),
        "failed": result.count(Status.FAILED),
        "skipped": result.count(Status.SKIPPED),
        "pending": result.pending,
        "rotated": result.rotated,
        "handed_off": result.handed_off,
        "fanned_out": result.fanned_out,
    }
