"""One stream record in, its notifications delivered: what the notify handler calls.

``build_stream_notifier`` wires the AWS clients once per container; ``StreamNotifier`` itself
takes its collaborators as arguments, so tests can hand it fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

import boto3
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from cckm_refresh.clock import utc_now
from cckm_refresh.config import ConfigError, NotifySettings
from cckm_refresh.notify.delivery import Notifier, SnsPublisher
from cckm_refresh.notify.events import (
    MAX_FAILED_KEYS,
    FailedKeys,
    FailedKeysReader,
    notifications_for,
)
from cckm_refresh.notify.ledger import NotificationLedger
from cckm_refresh.notify.webhook import Webhook, url_from_secret
from cckm_refresh.observability import logger, metrics

# Without a Lambda context (a local run), a claim lasts as long as Lambda's longest invocation.
LAMBDA_MAX_RUN = timedelta(minutes=15)
LEASE_MARGIN = timedelta(seconds=5)


class Deadline(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


def load_settings(env: dict[str, str] | None = None) -> NotifySettings:
    """The configuration, read at cold start: a bad variable is one log line naming it, then
    the ``ConfigError`` is raised again (the cold start fails)."""
    try:
        return NotifySettings.from_env(env)
    except ConfigError as error:
        logger.error(str(error), extra={"variable": error.variable})
        raise


class StreamNotifier:
    """Maps a stream record to its notifications and delivers each exactly once."""

    def __init__(
        self,
        notifier: Notifier,
        failed_keys: FailedKeysReader,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._notifier = notifier
        self._failed_keys = failed_keys
        self._now = now

    def handle(self, record: DynamoDBRecord, context: Deadline | None = None) -> int:
        """Deliver the record's notifications (none for most records); how many it gave.
        Raises when the record must be retried."""
        change = record.dynamodb
        if change is None:
            return 0
        event_name = record.event_name.name if record.event_name else ""
        found = notifications_for(event_name, change.old_image, change.new_image, self._failed_keys)
        lease_until = self._lease_until(context)
        for notification in found:
            self._notifier.deliver(notification, lease_until)
        return len(found)

    def _lease_until(self, context: Deadline | None) -> datetime:
        # A claim outlives the invocation that made it by a margin, never by more: after
        # that its holder is certainly gone and a retry may take it over.
        if context is None:
            return self._now() + LAMBDA_MAX_RUN
        remaining = timedelta(milliseconds=context.get_remaining_time_in_millis())
        return self._now() + remaining + LEASE_MARGIN


class RunDigest:
    """Reads a run's FAILED result items (the ``RUN_COMPLETED`` digest) from the table."""

    def __init__(self, client: Any, table_name: str) -> None:
        self._db = client
        self._table = table_name

    def failed_keys(self, run_id: str) -> FailedKeys:
        """The first 50 failed keys (``key_id``, ``display_name``, ``error_code``) and how
        many failed in all, over every page of the run's results."""
        keys: list[dict[str, str]] = []
        count = 0
        query: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :key)",
            "FilterExpression": "#s = :failed",
            "ProjectionExpression": "key_id, display_name, error_code",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {
                ":pk": {"S": f"RUN#{run_id}"},
                ":key": {"S": "KEY#"},
                ":failed": {"S": "FAILED"},
            },
        }
        while True:
            page = self._db.query(**query)
            for item in page.get("Items", []):
                count += 1
                if len(keys) < MAX_FAILED_KEYS:
                    keys.append({name: value["S"] for name, value in item.items() if "S" in value})
            if "LastEvaluatedKey" not in page:
                return FailedKeys(tuple(keys), count)
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def build_stream_notifier(settings: NotifySettings) -> StreamNotifier:
    """The notifier with this container's AWS clients (and webhook, when configured)."""
    dynamodb = boto3.client("dynamodb")
    webhook = None
    if settings.webhook_secret_id:
        import requests  # only containers with a webhook pay for importing it

        webhook = Webhook(url_from_secret(settings.webhook_secret_id), requests.Session())
    notifier = Notifier(
        NotificationLedger(dynamodb, settings.results_table, settings.result_retention_days),
        SnsPublisher(boto3.client("sns"), settings.topic_arn),
        webhook,
        count=count_metric,
    )
    return StreamNotifier(notifier, RunDigest(dynamodb, settings.results_table).failed_keys)


def count_metric(name: str) -> None:
    """Add 1 to the dimension-free metric ``name`` of this invocation."""
    from aws_lambda_powertools.metrics import MetricUnit

    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
