"""A stream batch in, its notifications delivered: what the notify handler calls.

SNS first for every record of the batch, then the webhook mirror with the time left.
``cckm_refresh.wiring.stream_notifier`` wires the AWS clients once per container;
``StreamNotifier`` itself takes its collaborators as arguments, so tests can hand it fakes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from cckm_refresh.notify.delivery import Notifier
from cckm_refresh.notify.events import (
    MAX_FAILED_KEYS,
    FailedKeys,
    FailedKeysReader,
    FailureGroup,
    Notification,
    notifications_for,
)
from cckm_refresh.notify.webhook import MirrorReport, WebhookMirror
from cckm_refresh.observability import metrics
from cckm_refresh.runtime import utc_now
from cckm_refresh.table.reads import TableReader

# Without a Lambda context (a local run), a claim lasts as long as Lambda's longest invocation.
LAMBDA_MAX_RUN = timedelta(minutes=15)
LEASE_MARGIN = timedelta(seconds=5)


class Deadline(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


class StreamNotifier:
    """Maps stream records to notifications, delivered exactly once to SNS and mirrored to
    the webhook (when there is one). Lives as long as the container; ``batch`` gives each
    invocation its own record of what it published."""

    def __init__(
        self,
        notifier: Notifier,
        failed_keys: FailedKeysReader,
        mirror: WebhookMirror | None = None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._notifier = notifier
        self._failed_keys = failed_keys
        self._mirror = mirror
        self._now = now

    def batch(self, context: Deadline | None = None) -> StreamBatch:
        """The notifier of one invocation's stream batch."""
        return StreamBatch(self._notifier, self.notifications, self._mirror, context, self._now)

    def notifications(self, record: DynamoDBRecord) -> list[Notification]:
        """The notifications one stream record gives (none for most records)."""
        change = record.dynamodb
        if change is None:
            return []
        event_name = record.event_name.name if record.event_name else ""
        return notifications_for(event_name, change.old_image, change.new_image, self._failed_keys)


class StreamBatch:
    """One invocation: every record's notifications go to SNS as the record is handled
    (``publish``); only then are those it published mirrored to the webhook (``mirror``),
    in the time the invocation has left."""

    def __init__(
        self,
        notifier: Notifier,
        notifications: Callable[[DynamoDBRecord], list[Notification]],
        mirror: WebhookMirror | None,
        context: Deadline | None,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._notifier = notifier
        self._notifications = notifications
        self._mirror = mirror
        self._context = context
        self._lease_until = _lease_until(now(), context)
        self._published: list[Notification] = []

    def publish(self, record: DynamoDBRecord) -> int:
        """Deliver the record's notifications to SNS; how many it gave. Raises when the
        record must be retried (SNS or the ledger failed); what was published before that
        is still mirrored."""
        found = self._notifications(record)
        for notification in found:
            if self._notifier.deliver(notification, self._lease_until):
                self._published.append(notification)
        return len(found)

    def mirror(self) -> MirrorReport:
        """Mirror what this batch published to the webhook with the invocation's remaining
        time. Never raises: an error here would make Lambda deliver the whole batch again."""
        if self._mirror is None or not self._published:
            return MirrorReport()
        if self._context is None:
            remaining = LAMBDA_MAX_RUN.total_seconds()
        else:
            remaining = self._context.get_remaining_time_in_millis() / 1000
        return self._mirror.mirror(self._published, remaining)


def _lease_until(now: datetime, context: Deadline | None) -> datetime:
    # A claim outlives the invocation that made it by a margin, never by more: after that
    # its holder is certainly gone and a retry may take it over.
    if context is None:
        return now + LAMBDA_MAX_RUN
    return now + timedelta(milliseconds=context.get_remaining_time_in_millis()) + LEASE_MARGIN


class RunDigest:
    """Reads a run's FAILED result items (the ``RUN_COMPLETED`` digest) from the table."""

    def __init__(self, reader: TableReader) -> None:
        self._reader = reader

    def failed_keys(self, run_id: str) -> FailedKeys:
        """The first 50 failed keys (``key_id``, ``display_name``, ``error_code``), how many
        failed in all, and all of them counted by cause and tenancy, over every page of the
        run's results (memory: 50 keys and one counter per cause and tenancy)."""
        keys: list[dict[str, str]] = []
        by_cause: Counter[tuple[str, str]] = Counter()
        fields = "key_id, display_name, error_code, tenancy"
        for item in self._reader.results(run_id, status="FAILED", fields=fields):
            by_cause[(str(item.get("error_code", "")), str(item.get("tenancy") or "unknown"))] += 1
            if len(keys) < MAX_FAILED_KEYS:
                keys.append(
                    {n: str(item[n]) for n in ("key_id", "display_name", "error_code") if n in item}
                )
        groups = tuple(
            FailureGroup(code, tenancy, n) for (code, tenancy), n in by_cause.most_common()
        )
        return FailedKeys(tuple(keys), by_cause.total(), groups)


def count_metric(name: str, value: int = 1) -> None:
    """Add ``value`` (1 unless told) to the dimension-free metric ``name`` of this invocation."""
    from aws_lambda_powertools.metrics import MetricUnit

    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
