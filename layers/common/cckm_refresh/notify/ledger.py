"""What has been sent: ``NOTIFIED#<dedupe key>`` items in the results table, each claimed
with a conditional put before it is published, so a retried stream batch publishes nothing twice.

The items have ``item_type`` ``NOTIFICATION``, which neither the stream filter nor
``notifications_for`` lets through: recording a notification never notifies anyone. TTL
removes them after the retention period.

A claim's lease (a wall-clock time in the item) ends ``LEASE_MARGIN`` after the claiming
invocation's deadline: a claim still ``SENDING`` after that belongs to an invocation that died
mid-delivery, and is taken over (the one case where a notification may be sent twice rather
than never).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from cckm_refresh.runtime import SYSTEM, Deadline, Runtime, iso, iso_now
from cckm_refresh.table.items import NOTIFICATION, expires_at, key, notified_pk

LEASE_MARGIN = 5.0  # seconds a claim outlives the deadline of the invocation that made it


class Claim(Enum):
    """What a claim found."""

    CLAIMED = "CLAIMED"  # ours to send
    SENT = "SENT"  # published before: skip it
    IN_FLIGHT = "IN_FLIGHT"  # another invocation holds a live lease: try again later


class NotificationLedger:
    """The ledger of sent notifications in the results table (low-level DynamoDB client)."""

    def __init__(
        self,
        client: Any,
        table_name: str,
        retention_days: int,
        runtime: Runtime = SYSTEM,
    ) -> None:
        self._db = client
        self._table = table_name
        self._retention = timedelta(days=retention_days)
        self._runtime = runtime

    def claim(self, dedupe_key: str, end: Deadline) -> Claim:
        """Take the right to send ``dedupe_key`` until ``LEASE_MARGIN`` after ``end``
        (the claiming invocation's deadline), unless it was sent, or another live invocation
        is sending it."""
        now = datetime.fromtimestamp(self._runtime.time(), UTC)
        lease_until = now + timedelta(seconds=end.remaining() + LEASE_MARGIN)
        try:
            self._db.put_item(
                TableName=self._table,
                Item=self._key(dedupe_key)
                | {
                    "item_type": {"S": NOTIFICATION},
                    "state": {"S": "SENDING"},
                    "claimed_at": {"S": iso(now)},
                    "lease_until": {"S": iso(lease_until)},
                    "expires_at": {"N": str(expires_at(now, self._retention))},
                },
                ConditionExpression=(
                    "attribute_not_exists(pk) OR #s = :failed"
                    " OR (#s = :sending AND lease_until < :now)"
                ),
                ExpressionAttributeNames={"#s": "state"},
                ExpressionAttributeValues={
                    ":failed": {"S": "FAILED"},
                    ":sending": {"S": "SENDING"},
                    ":now": {"S": iso(now)},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._db.exceptions.ConditionalCheckFailedException as refused:
            holder = refused.response.get("Item") or self._read(dedupe_key)
            state = holder.get("state", {}).get("S")
            return Claim.SENT if state == "SENT" else Claim.IN_FLIGHT
        return Claim.CLAIMED

    def mark_sent(self, dedupe_key: str, message_id: str) -> None:
        """Record that SNS took the notification (with SNS's message id)."""
        self._db.update_item(
            TableName=self._table,
            Key=self._key(dedupe_key),
            UpdateExpression="SET #s = :sent, finished_at = :at, message_id = :m",
            ExpressionAttributeNames={"#s": "state"},
            ExpressionAttributeValues={
                ":sent": {"S": "SENT"},
                ":at": {"S": iso_now(self._runtime)},
                ":m": {"S": message_id},
            },
        )

    def release(self, dedupe_key: str) -> None:
        """Give a claim back after a failed publish, so the retried record can send it."""
        self._db.update_item(
            TableName=self._table,
            Key=self._key(dedupe_key),
            UpdateExpression="SET #s = :failed, finished_at = :at",
            ConditionExpression="#s = :sending",  # never un-send a SENT notification
            ExpressionAttributeNames={"#s": "state"},
            ExpressionAttributeValues={
                ":failed": {"S": "FAILED"},
                ":sending": {"S": "SENDING"},
                ":at": {"S": iso_now(self._runtime)},
            },
        )

    def _read(self, dedupe_key: str) -> dict[str, Any]:
        found = self._db.get_item(
            TableName=self._table, Key=self._key(dedupe_key), ConsistentRead=True
        )
        return dict(found.get("Item") or {})

    @staticmethod
    def _key(dedupe_key: str) -> dict[str, Any]:
        return key(notified_pk(dedupe_key), NOTIFICATION)
