"""Getting a notification to SNS once: ledger claim, publish, ledger mark. The webhook mirrors
a batch after all its SNS publishing, so it can neither delay nor repeat an SNS message.

The ledger: ``NOTIFIED#<dedupe key>`` items in the results table, each claimed with a
conditional put before it is published (docs/architecture.md, "Notifications once"). Their
``item_type``, ``NOTIFICATION``, passes neither the stream filter nor ``notifications_for``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from cckm_refresh.notify.events import Notification
from cckm_refresh.observability import logger
from cckm_refresh.runtime import SYSTEM, Deadline, Runtime, iso, iso_now
from cckm_refresh.table.items import NOTIFICATION, expires_at, key, notified_pk, plain, to_item
from cckm_refresh.table.reads import TableClient

# Seconds a claim outlives the deadline of the invocation that made it: a claim still SENDING
# after that belongs to an invocation that died mid-delivery, and is taken over.
LEASE_MARGIN = 5.0


class Claim(Enum):
    CLAIMED = "CLAIMED"  # ours to send
    SENT = "SENT"  # published before: skip it
    IN_FLIGHT = "IN_FLIGHT"  # another invocation holds a live lease: try again later


class NotificationLedger(TableClient):
    """The ledger in the results table (through the low-level DynamoDB client)."""

    def __init__(
        self, client: Any, table_name: str, retention_days: int, runtime: Runtime = SYSTEM
    ) -> None:
        super().__init__(client, table_name)
        self._retention = timedelta(days=retention_days)
        self._runtime = runtime

    def claim(self, dedupe_key: str, end: Deadline) -> Claim:
        """Take the right to send ``dedupe_key`` until ``LEASE_MARGIN`` after ``end`` (the
        invocation's deadline), unless it was sent or another live invocation is sending it."""
        now = datetime.fromtimestamp(self._runtime.time(), UTC)
        lease_until = now + timedelta(seconds=end.remaining() + LEASE_MARGIN)
        claim = {
            "pk": notified_pk(dedupe_key),
            "sk": NOTIFICATION,
            "item_type": NOTIFICATION,
            "state": "SENDING",
            "claimed_at": iso(now),
            "lease_until": iso(lease_until),
            "expires_at": expires_at(now, self._retention),
        }
        try:
            self._db.put_item(
                TableName=self.table_name,
                Item=to_item(claim),
                ConditionExpression=(
                    "attribute_not_exists(pk) OR #s = :failed"
                    " OR (#s = :sending AND lease_until < :now)"
                ),
                ExpressionAttributeNames={"#s": "state"},
                ExpressionAttributeValues=to_item(
                    {":failed": "FAILED", ":sending": "SENDING", ":now": iso(now)}
                ),
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._db.exceptions.ConditionalCheckFailedException as refused:
            held = refused.response.get("Item")
            holder = plain(held) if held else self.item(notified_pk(dedupe_key), NOTIFICATION)
            return Claim.SENT if holder and holder.get("state") == "SENT" else Claim.IN_FLIGHT
        return Claim.CLAIMED

    def mark_sent(self, dedupe_key: str, message_id: str) -> None:
        """Record that SNS took the notification (with SNS's message id)."""
        self._db.update_item(
            TableName=self.table_name,
            Key=key(notified_pk(dedupe_key), NOTIFICATION),
            UpdateExpression="SET #s = :sent, finished_at = :at, message_id = :m",
            ExpressionAttributeNames={"#s": "state"},
            ExpressionAttributeValues=to_item(
                {":sent": "SENT", ":at": iso_now(self._runtime), ":m": message_id}
            ),
        )

    def release(self, dedupe_key: str) -> None:
        """Give a claim back after a failed publish, so the retried record can send it."""
        self._db.update_item(
            TableName=self.table_name,
            Key=key(notified_pk(dedupe_key), NOTIFICATION),
            UpdateExpression="SET #s = :failed, finished_at = :at",
            ConditionExpression="#s = :sending",  # never un-send a SENT notification
            ExpressionAttributeNames={"#s": "state"},
            ExpressionAttributeValues=to_item(
                {":failed": "FAILED", ":sending": "SENDING", ":at": iso_now(self._runtime)}
            ),
        )


class NotificationInFlight(Exception):
    """Another invocation holds the claim; the record must be retried later."""


@dataclass(frozen=True)
class Notifier:
    """Delivers each notification at most once to the SNS topic (through SNS's client)."""

    ledger: NotificationLedger
    sns: Any
    topic_arn: str
    count: Callable[[str], None] = lambda metric: None

    def deliver(self, notification: Notification, end: Deadline) -> bool:
        """True when this call published it, False when it was published before. Raises when
        it must be retried (SNS failed, or another invocation holds it)."""
        context, key = notification.log_fields(), notification.dedupe_key
        claim = self.ledger.claim(key, end)
        if claim is Claim.SENT:
            logger.info("notification already sent", extra=context)
            self.count("NotificationsDuplicateSkipped")
            return False
        if claim is Claim.IN_FLIGHT:
            raise NotificationInFlight(f"{key} is being sent by another invocation; retry later")
        try:
            message_id = self._publish(notification)
        except Exception:
            # Else the claim lapses with this invocation's deadline and a retry takes it over.
            failure = "could not release the claim of an unsent notification"
            _logged(functools.partial(self.ledger.release, key), failure, context)
            raise
        # Kept as delivered: failing the record would publish it again once the lease ran out.
        failure = "notification published but not marked sent"
        _logged(functools.partial(self.ledger.mark_sent, key, message_id), failure, context)
        self.count("NotificationsPublished")
        logger.info(
            "notification published",
            extra=context | {"summary": notification.summary, "message_id": message_id},
        )
        return True

    def _publish(self, notification: Notification) -> str:
        """SNS's message id. The attributes are what subscription filter policies match on."""
        response = self.sns.publish(
            TopicArn=self.topic_arn,
            Subject=notification.subject,
            Message=json.dumps(notification.body(), default=str, separators=(",", ":")),
            MessageAttributes={
                "event_type": {"DataType": "String", "StringValue": str(notification.event_type)},
                "severity": {"DataType": "String", "StringValue": str(notification.severity)},
            },
        )
        return str(response.get("MessageId", ""))


def _logged(action: Callable[[], None], failure: str, context: dict[str, str]) -> None:
    """``action()``, its failure logged (by type: a message may quote anything), not raised."""
    try:
        action()
    except Exception as error:
        logger.warning(failure, extra=context | {"reason": type(error).__name__})
