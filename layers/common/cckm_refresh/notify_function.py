"""The notify function behind ``functions/notify/app.py``: wiring and stream dispatch.

Settings are read once per container; clients are created on first use.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from cckm_refresh.config import ConfigError, NotifySettings
from cckm_refresh.notify.delivery import NotificationLedger, Notifier, SnsPublisher, Webhook
from cckm_refresh.notify.events import MAX_FAILED_KEYS, FailedKeys, notifications_for
from cckm_refresh.observability import logger, metrics


def load_settings(env: dict[str, str] | None = None) -> NotifySettings:
    """Read the configuration at cold start; a bad variable is one clear log line, then fails."""
    try:
        return NotifySettings.from_env(env)
    except ConfigError as error:
        logger.error(str(error), extra={"variable": error.variable})
        raise


@dataclass
class NotifyFunction:
    """Per-container state of the notify function."""

    settings: NotifySettings

    @functools.cached_property
    def _dynamodb(self) -> Any:
        import boto3

        return boto3.client("dynamodb")

    @functools.cached_property
    def notifier(self) -> Notifier:
        import boto3

        webhook = None
        if self.settings.webhook_secret_id:
            import requests

            webhook = Webhook(url_loader=self._webhook_url, session=requests.Session())
        return Notifier(
            NotificationLedger(
                self._dynamodb, self.settings.results_table, self.settings.result_retention_days
            ),
            SnsPublisher(boto3.client("sns"), self.settings.topic_arn),
            webhook,
            on_event=_count,
        )

    def _webhook_url(self) -> str:
        from aws_lambda_powertools.utilities import parameters

        secret = parameters.get_secret(
            str(self.settings.webhook_secret_id), transform="json", max_age=300
        )
        url = secret.get("url") if isinstance(secret, dict) else None
        if not isinstance(url, str):
            raise ValueError('the webhook secret holds no "url"')
        return url

    def handle(self, event: Any, context: Any) -> dict[str, Any]:
        """Process a DynamoDB stream batch, reporting the records that failed."""
        processor = BatchProcessor(
            event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False
        )
        return dict(
            process_partial_response(
                event=event, record_handler=self._record, processor=processor, context=context
            )
        )

    def _record(self, record: DynamoDBRecord) -> int:
        stream = record.dynamodb
        if stream is None:
            return 0
        found = notifications_for(
            str(record.event_name.name if record.event_name else ""),
            stream.old_image,
            stream.new_image,
            self.failed_keys,
        )
        for notification in found:
            self.notifier.deliver(notification)
        return len(found)

    def failed_keys(self, run_id: str) -> FailedKeys:
        """The run's FAILED results: the first 50 (id, name, error code) and their count."""
        keys: list[dict[str, str]] = []
        count = 0
        query: dict[str, Any] = {
            "TableName": self.settings.results_table,
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
            page = self._dynamodb.query(**query)
            for item in page.get("Items", []):
                count += 1
                if len(keys) < MAX_FAILED_KEYS:
                    keys.append({k: v["S"] for k, v in item.items() if "S" in v})
            if "LastEvaluatedKey" not in page:
                return FailedKeys(tuple(keys), count)
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _count(name: str) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
