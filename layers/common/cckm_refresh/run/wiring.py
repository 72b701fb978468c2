"""The refresh service with this container's clients, for the Lambda and the operator CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cckm_refresh.config import RefreshSettings
from cckm_refresh.ctm.client import CtmClient
from cckm_refresh.engine import RefreshEngine
from cckm_refresh.model import RefreshOutcome
from cckm_refresh.ratelimit import TenancyRateLimiter
from cckm_refresh.run.chunks import ChunkWorker
from cckm_refresh.run.intake import Intake
from cckm_refresh.run.resolution import Resolver
from cckm_refresh.run.service import RefreshService
from cckm_refresh.run.sweep import Sweeper
from cckm_refresh.runtime import SYSTEM, Runtime
from cckm_refresh.table.store import ResultStore
from cckm_refresh.wiring import aws_client, secret_loader
from cckm_refresh.workqueue import WorkQueue


@dataclass(frozen=True)
class Ports:
    """The service's outside world: boto3-shaped DynamoDB and SQS clients, the CTM secret
    (``secret(force)``: bypass any cache when ``force``) and, when not the network, the
    requests adapter that answers CTM's HTTPS. Without them, the account's (``AWS_*``)."""

    dynamodb: Any
    sqs: Any
    secret: Callable[[bool], str]
    ctm_adapter: Any = None


def refresh_service(
    settings: RefreshSettings,
    on_outcome: Callable[[RefreshOutcome], None] | None = None,
    *,
    runtime: Runtime = SYSTEM,
    ports: Ports | None = None,
) -> RefreshService:
    """The refresh service with this container's clients (``on_outcome``: the CLI's progress)."""
    ports = ports or Ports(
        # Every call in flight records its outcome at once: a connection each, plus a few.
        dynamodb=aws_client("dynamodb", settings.refresh_concurrency + 4),
        sqs=aws_client("sqs"),
        secret=secret_loader(settings.ctm_secret_id),
    )
    ctm = CtmClient.from_settings(
        settings,
        ports.secret,
        pool_size=settings.refresh_concurrency,
        runtime=runtime,
        rng=runtime.random,
        adapter=ports.ctm_adapter,
    )
    store = ResultStore(
        ports.dynamodb,
        settings.results_table,
        settings.result_retention_days,
        now=lambda: datetime.fromtimestamp(runtime.time(), UTC),
        sleep=runtime.sleep,
        rng=runtime.random,
    )
    queue = WorkQueue(
        ports.sqs,
        settings.work_queue_url,
        settings.dead_letter_queue_url,
        settings.tenancy_queue_url,
    )
    engine = RefreshEngine(
        lambda key_id, pacer, deadline: ctm.refresh_oci_key(key_id, pacer=pacer, deadline=deadline),
        TenancyRateLimiter(settings.tenancy_rate_limit, runtime=runtime),
        concurrency=settings.refresh_concurrency,
        on_outcome=(lambda _item, outcome: on_outcome(outcome)) if on_outcome else None,
    )
    resolver = Resolver(ctm, store.latest_of, can_hand_on=queue.can_hand_on, runtime=runtime)
    worker = ChunkWorker(settings, engine, store, queue, sign_in=ctm.issue_token, runtime=runtime)
    intake = Intake(settings, resolver, worker, store, queue, runtime=runtime)
    return RefreshService(intake, Sweeper(settings, store, queue, runtime))
