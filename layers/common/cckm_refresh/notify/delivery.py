"""Getting a notification to people exactly once: a ledger in the results table, SNS, and an
optional chat webhook mirror.

Order per notification: claim it in the ledger (conditional put), publish to SNS, mark it
sent, then mirror it to the webhook. A failed publish releases the claim and fails the stream
record, so Lambda retries it; a claim whose holder died is taken over once it is stale. The
webhook is best effort: its outage never blocks nor repeats the SNS message.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cckm_refresh.clock import iso, utc_now
from cckm_refresh.notify.events import Notification
from cckm_refresh.observability import logger

CLAIM_STALE_AFTER = timedelta(minutes=15)  # longer than the notify function can run
WEBHOOK_TIMEOUT = 10.0
WEBHOOK_ATTEMPTS = 3


class NotificationLedger:
    """``NOTIFIED#<dedupe key>`` items in the results table. Their ``item_type`` is
    ``NOTIFICATION``, which the stream filter and ``notifications_for`` both ignore, so
    recording a notification never notifies anyone."""

    def __init__(
        self,
        client: Any,
        table_name: str,
        retention_days: int,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._db = client
        self._table = table_name
        self._retention = timedelta(days=retention_days)
        self._now = now

    def _key(self, dedupe_key: str) -> dict[str, Any]:
        return {"pk": {"S": f"NOTIFIED#{dedupe_key}"}, "sk": {"S": "NOTIFICATION"}}

    def claim(self, dedupe_key: str) -> bool:
        """Take the right to send; False when it was sent, or is being sent right now."""
        now = self._now()
        try:
            self._db.put_item(
                TableName=self._table,
                Item=self._key(dedupe_key)
                | {
                    "item_type": {"S": "NOTIFICATION"},
                    "state": {"S": "SENDING"},
                    "claimed_at": {"S": iso(now)},
                    "expires_at": {"N": str(int((now + self._retention).timestamp()))},
                },
                ConditionExpression=(
                    "attribute_not_exists(pk) OR #s = :failed"
                    " OR (#s = :sending AND claimed_at < :stale)"
                ),
                ExpressionAttributeNames={"#s": "state"},
                ExpressionAttributeValues={
                    ":failed": {"S": "FAILED"},
                    ":sending": {"S": "SENDING"},
                    ":stale": {"S": iso(now - CLAIM_STALE_AFTER)},
                },
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def mark(self, dedupe_key: str, state: str, message_id: str | None = None) -> None:
        """Record the outcome of a claimed send: ``SENT`` (with SNS's id) or ``FAILED``."""
        values: dict[str, Any] = {":s": {"S": state}, ":at": {"S": iso(self._now())}}
        update = "SET #s = :s, finished_at = :at"
        if message_id:
            update += ", message_id = :m"
            values[":m"] = {"S": message_id}
        self._db.update_item(
            TableName=self._table,
            Key=self._key(dedupe_key),
            UpdateExpression=update,
            ExpressionAttributeNames={"#s": "state"},
            ExpressionAttributeValues=values,
        )


class SnsPublisher:
    """Publishes notifications with the attributes subscription filter policies match on."""

    def __init__(self, client: Any, topic_arn: str) -> None:
        self._sns = client
        self._topic = topic_arn

    def publish(self, notification: Notification) -> str:
        response = self._sns.publish(
            TopicArn=self._topic,
            Subject=notification.subject,
            Message=json.dumps(notification.body(), default=str, separators=(",", ":")),
            MessageAttributes={
                "event_type": {"DataType": "String", "StringValue": str(notification.event_type)},
                "severity": {"DataType": "String", "StringValue": str(notification.severity)},
            },
        )
        return str(response.get("MessageId", ""))


class WebhookError(Exception):
    """The webhook did not take the message. The message never contains the URL."""


@dataclass
class Webhook:
    """A Slack- and Teams-compatible incoming webhook (``{"text": ...}``), URL from a secret."""

    url_loader: Callable[[], str]
    session: Any  # requests.Session
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = random.random

    def post(self, notification: Notification) -> None:
        """POST the notification, retrying 5xx, 429 and connection errors (3 attempts)."""
        import requests

        url = self.url_loader()
        if urlsplit(url).scheme != "https":
            raise WebhookError("the webhook URL must be https://")
        payload = {
            "text": f"{notification.subject}\n{notification.summary}",
            "event_type": str(notification.event_type),
            "severity": str(notification.severity),
        }
        problem = "no attempt made"
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                response = self.session.post(
                    url, json=payload, timeout=WEBHOOK_TIMEOUT, verify=True, allow_redirects=False
                )
            except requests.RequestException as error:
                problem = type(error).__name__  # never str(error): it quotes the URL
            else:
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    break
            if attempt < WEBHOOK_ATTEMPTS:
                self.sleep(self.rng() * min(4.0, 0.5 * 2**attempt))
        raise WebhookError(f"webhook refused the notification: {problem}")


class Notifier:
    """Delivers each notification once: ledger claim, SNS, ledger mark, webhook mirror."""

    def __init__(
        self,
        ledger: NotificationLedger,
        publisher: SnsPublisher,
        webhook: Webhook | None,
        on_event: Callable[[str], None] = lambda name: None,
    ) -> None:
        self._ledger = ledger
        self._publisher = publisher
        self._webhook = webhook
        self._on_event = on_event

    def deliver(self, notification: Notification) -> bool:
        """True when this call published it; False when it had been published already."""
        context: dict[str, str] = {
            "event_type": str(notification.event_type),
            "severity": str(notification.severity),
        }
        if not self._ledger.claim(notification.dedupe_key):
            logger.info("notification already sent", extra=context)
            self._on_event("NotificationsDuplicateSkipped")
            return False
        try:
            message_id = self._publisher.publish(notification)
        except Exception:
            self._ledger.mark(notification.dedupe_key, "FAILED")
            raise
        self._ledger.mark(notification.dedupe_key, "SENT", message_id)
        self._on_event("NotificationsPublished")
        logger.info("notification published", extra=context | {"summary": notification.summary})
        if self._webhook is not None:
            try:
                self._webhook.post(notification)
            except Exception as error:
                reason = str(error) if isinstance(error, WebhookError) else type(error).__name__
                logger.warning("webhook mirror failed", extra=context | {"reason": reason})
                self._on_event("WebhookFailures")
        return True
