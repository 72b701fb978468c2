"""The refresh function behind ``functions/refresh/app.py``: wiring and event dispatch.

Settings are read once per container (cold start); clients are created lazily, once, on the
first invocation that needs them, so importing the handler stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from cckm_refresh.config import ConfigError, RefreshSettings
from cckm_refresh.engine import RefreshEngine
from cckm_refresh.model import RefreshOutcome, Status
from cckm_refresh.observability import logger, metrics
from cckm_refresh.ratelimit import TenancyRateLimiter
from cckm_refresh.resolution import Resolver
from cckm_refresh.service import Action, RefreshService, Rejection, RunReport
from cckm_refresh.store import ResultStore
from cckm_refresh.triggers import is_sqs_event, single_delivery, sqs_delivery_of
from cckm_refresh.workqueue import WorkQueue


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

    from cckm_refresh.ctm.client import CtmClient, ListCursor

    def load_secret(force: bool) -> str:
        value = parameters.get_secret(settings.ctm_secret_id, max_age=300, force_fetch=force)
        return value if isinstance(value, str) else bytes(value).decode()

    aws = Config(
        retries={"mode": "standard", "max_attempts": 8},
        # Every call in flight records its outcome at once: one connection each, no churn.
        max_pool_connections=settings.refresh_concurrency + 4,
    )
    ctm = CtmClient.create(
        base_url=settings.ctm_base_url,
        secret_loader=load_secret,
        timeout=settings.ctm_timeout_seconds,
        max_attempts=settings.ctm_max_attempts,
        verify_tls=settings.ctm_verify_tls,
        pool_size=settings.refresh_concurrency,
    )
    store = ResultStore(
        boto3.client("dynamodb", config=aws),
        settings.results_table,
        settings.result_retention_days,
    )
    listener = (lambda _item, outcome: on_outcome(outcome)) if on_outcome else None
    engine = RefreshEngine(
        lambda key_id, pacer, deadline: ctm.refresh_oci_key(key_id, pacer=pacer, deadline=deadline),
        TenancyRateLimiter(settings.tenancy_rate_limit),
        concurrency=settings.refresh_concurrency,
        on_outcome=listener,
    )
    return RefreshService(
        settings=settings,
        resolver=Resolver(
            ctm,
            store.latest_of,
            ListCursor.from_json,
            can_hand_on=bool(settings.tenancy_queue_url or settings.work_queue_url),
        ),
        engine=engine,
        store=store,
        queue=WorkQueue(
            boto3.client("sqs", config=aws),
            settings.work_queue_url,
            settings.dead_letter_queue_url,
            settings.tenancy_queue_url,
        ),
    )


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
        seconds_left = _seconds_left(context)
        if is_sqs_event(event):
            return self._sqs_batch(event["Records"], seconds_left)
        delivery = single_delivery(event)
        logger.append_keys(source_id=delivery.source_id)
        result = self.service.process(delivery, seconds_left)
        _emit(result)
        return _response(result)

    def _sqs_batch(
        self, records: list[dict[str, Any]], seconds_left: Callable[[], float]
    ) -> dict[str, Any]:
        """Every record of the batch in one pass; the partial batch response names the
        messages SQS must deliver again (or dead-letter), each as its run's verdict says.

        Not Powertools' BatchProcessor: it hands records to a handler one at a time, and the
        point here is that all of them share one engine pass (and the tenancy's pace).
        """
        failures: list[dict[str, str]] = []
        deliveries = [sqs_delivery_of(record) for record in records]
        if seconds_left() < self.settings.deadline_margin_seconds:
            # Too little time to start anything: SQS delivers these again, except the last
            # deliveries, which give up on their keys (DEADLINE) so that none stays PENDING.
            last = self.settings.max_receive_count
            late = [
                (r, d) for r, d in zip(records, deliveries, strict=True) if d.receive_count < last
            ]
            logger.warning(
                "too little time left to start; messages delivered again",
                extra={"messages": len(late)},
            )
            failures += [{"itemIdentifier": r["messageId"]} for r, _ in late]
            kept = [
                (r, d) for r, d in zip(records, deliveries, strict=True) if d.receive_count >= last
            ]
            records = [r for r, _ in kept]
            deliveries = [d for _, d in kept]
        results = self.service.process_batch(deliveries, seconds_left) if deliveries else []
        for record, result in zip(records, results, strict=True):
            _emit(result)
            verdict = result.verdict
            if verdict.action is Action.DONE:
                continue
            failures.append({"itemIdentifier": record["messageId"]})
            if verdict.action is Action.RETRY:
                queue = self.service.queue_url_of(str(record.get("eventSourceARN", "")))
                moved = self.service.retry_later(queue, record["receiptHandle"], verdict.delay)
                logger.info(
                    "message will be delivered again",
                    extra={"message_id": record["messageId"], "in_seconds": moved},
                )
        return {"batchItemFailures": failures}


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
    counts = result.counts
    return {
        "status": result.status,
        "run_id": result.run_id,
        "requested": counts.requested if counts else result.requested,
        "refreshed": counts.refreshed if counts else result.count(Status.REFRESHED),
        "not_found": counts.not_found if counts else result.count(Status.NOT_FOUND),
        "failed": counts.failed if counts else result.count(Status.FAILED),
        "skipped": counts.skipped if counts else result.count(Status.SKIPPED),
        "pending": result.pending,
        "rotated": counts.rotated if counts else result.rotated,
        "handed_off": result.handed_off,
        "fanned_out": result.fanned_out,
    }
