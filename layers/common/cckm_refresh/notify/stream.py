"""A stream batch's notifications: SNS for every record first, then the webhook mirror in the
time the invocation has left (what the notify handler calls)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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
from cckm_refresh.notify.webhook import WebhookMirror
from cckm_refresh.runtime import Deadline
from cckm_refresh.table.reads import TableReader


@dataclass(frozen=True)
class StreamNotifier:
    """What lives as long as the container; ``batch`` gives each invocation its own."""

    notifier: Notifier
    failed_keys: FailedKeysReader
    mirror: WebhookMirror | None = None

    def batch(self, end: Deadline) -> StreamBatch:
        return StreamBatch(self, end)


@dataclass
class StreamBatch:
    """One invocation's batch, ``end`` its deadline: each record's notifications go to SNS as
    the record is handled (``publish``), then those published to the webhook (``mirror``)."""

    stream: StreamNotifier
    end: Deadline
    published: list[Notification] = field(default_factory=list)

    def publish(self, record: DynamoDBRecord) -> int:
        """How many notifications the record gave. Raises when it must be retried (SNS or the
        ledger failed); what it published before that is still mirrored."""
        change = record.dynamodb
        if change is None:
            return 0
        event_name = record.event_name.name if record.event_name else ""
        old, new = change.old_image, change.new_image
        found = notifications_for(event_name, old, new, self.stream.failed_keys)
        for notification in found:
            if self.stream.notifier.deliver(notification, self.end):
                self.published.append(notification)
        return len(found)

    def mirror(self) -> None:
        """Never raises: an error here would make Lambda deliver the whole batch again."""
        if self.stream.mirror is not None and self.published:
            self.stream.mirror.mirror(self.published, self.end)


@dataclass(frozen=True)
class RunDigest:
    """Reads a run's FAILED result items (the ``RUN_COMPLETED`` digest) from the table."""

    reader: TableReader

    def failed_keys(self, run_id: str) -> FailedKeys:
        """Over every page of the run's results, in the memory of 50 keys and one counter per
        cause and tenancy."""
        keys: list[dict[str, str]] = []
        by_cause: Counter[tuple[str, str]] = Counter()
        listed = ("key_id", "display_name", "error_code")  # of each of the first 50
        fields = ", ".join((*listed, "tenancy"))
        for item in self.reader.results(run_id, status="FAILED", fields=fields):
            by_cause[(str(item.get("error_code", "")), str(item.get("tenancy") or "unknown"))] += 1
            if len(keys) < MAX_FAILED_KEYS:
                keys.append({n: str(item[n]) for n in listed if n in item})
        groups = [FailureGroup(*cause, n) for cause, n in by_cause.most_common()]
        return FailedKeys(tuple(keys), by_cause.total(), tuple(groups))
