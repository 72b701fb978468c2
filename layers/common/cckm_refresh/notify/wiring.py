"""The notifier with this container's clients and metrics (and webhook, when configured)."""

from __future__ import annotations

import functools

from cckm_refresh.config import NotifySettings
from cckm_refresh.notify.delivery import NotificationLedger, Notifier
from cckm_refresh.notify.stream import RunDigest, StreamNotifier
from cckm_refresh.notify.webhook import Webhook, WebhookMirror, url_from_secret
from cckm_refresh.observability import metrics
from cckm_refresh.table.reads import TableReader
from cckm_refresh.wiring import aws_client


def stream_notifier(settings: NotifySettings) -> StreamNotifier:
    """The notifier with this container's AWS clients (and webhook, when configured)."""
    dynamodb = aws_client("dynamodb")
    mirror = None
    if secret_id := settings.webhook_secret_id:
        import requests  # only containers with a webhook pay for importing it

        webhook = Webhook(functools.partial(url_from_secret, secret_id), requests.Session())
        mirror = WebhookMirror(webhook, count=count_metric)
    ledger = NotificationLedger(dynamodb, settings.results_table, settings.result_retention_days)
    notifier = Notifier(ledger, aws_client("sns"), settings.topic_arn, count_metric)
    digest = RunDigest(TableReader(dynamodb, settings.results_table))
    return StreamNotifier(notifier, digest.failed_keys, mirror)


def count_metric(name: str, value: int = 1) -> None:
    """Add ``value`` (1 unless told) to the dimension-free metric ``name`` of this invocation."""
    from aws_lambda_powertools.metrics import MetricUnit

    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
