"""The refresh service with this container's clients, for the Lambda and the operator CLI."""

from __future__ import annotations

from collections.abc import Callable

from aws_lambda_powertools.utilities import parameters

from cckm_refresh.config import RefreshSettings
from cckm_refresh.ctm.client import CtmClient, ListCursor
from cckm_refresh.engine import RefreshEngine
from cckm_refresh.model import RefreshOutcome
from cckm_refresh.ratelimit import TenancyRateLimiter
from cckm_refresh.run.chunks import ChunkWorker
from cckm_refresh.run.intake import Intake
from cckm_refresh.run.resolution import Resolver
from cckm_refresh.run.service import RefreshService
from cckm_refresh.runtime import Deadline
from cckm_refresh.table.store import ResultStore
from cckm_refresh.wiring import aws_client
from cckm_refresh.workqueue import WorkQueue


def refresh_service(
    settings: RefreshSettings, on_outcome: Callable[[RefreshOutcome], None] | None = None
) -> RefreshService:
    """The refresh service with this container's clients (``on_outcome``: the CLI's progress)."""

    def load_secret(force: bool) -> str:
        value = parameters.get_secret(settings.ctm_secret_id, max_age=300, force_fetch=force)
        return value if isinstance(value, str) else bytes(value).decode()

    ctm = CtmClient.create(
        base_url=settings.ctm_base_url,
        secret_loader=load_secret,
        timeout=settings.ctm_timeout_seconds,
        max_attempts=settings.ctm_max_attempts,
        verify_tls=settings.ctm_verify_tls,
        pool_size=settings.refresh_concurrency,
    )
    # Every call in flight records its outcome at once: a connection each, plus a few.
    store = ResultStore(
        aws_client("dynamodb", settings.refresh_concurrency + 4),
        settings.results_table,
        settings.result_retention_days,
    )
    queue = WorkQueue(
        aws_client("sqs"),
        settings.work_queue_url,
        settings.dead_letter_queue_url,
        settings.tenancy_queue_url,
    )
    engine = RefreshEngine(
        lambda key_id, pacer, end: ctm.refresh_oci_key(key_id, pacer=pacer, deadline=Deadline(end)),
        TenancyRateLimiter(settings.tenancy_rate_limit),
        concurrency=settings.refresh_concurrency,
        on_outcome=(lambda _item, outcome: on_outcome(outcome)) if on_outcome else None,
    )
    resolver = Resolver(
        ctm,
        store.latest_of,
        ListCursor.from_json,
        can_hand_on=queue.can_hand_on,
    )
    worker = ChunkWorker(
        settings, engine, store, queue, sign_in=lambda end: ctm.issue_token(Deadline(end))
    )
    return RefreshService(Intake(settings, resolver, worker, store, queue))
