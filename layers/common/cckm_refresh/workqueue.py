"""The queues of the refresh path: fan-out, hand-off and re-queue, and the dead-letter copy
of rejected messages. The only module of the refresh path that talks to SQS.

With a tenancy queue (SQS FIFO, ``TENANCY_QUEUE_URL``) every message that continues a run
goes there, in the message group of its OCI tenancy, with a deduplication id derived from
what it carries: SQS lets one batch per group be in flight, so one invocation at a time works
on a tenancy, and a fan-out retried inside SQS's five-minute window sends nothing twice.
Without it, they go to the work queue, as pipelines' requests do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cckm_refresh.text import printable

SEND_BATCH = 10
MAX_ATTRIBUTE = 256
_GROUP_CHARS = re.compile(r"[^A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]")


class QueueSendError(RuntimeError):
    """SQS refused some messages; the caller fails so that nothing is lost."""


@dataclass(frozen=True)
class QueueMessage:
    """A message that continues a run: its body, message group and deduplication id."""

    body: dict[str, Any]
    group: str
    dedup_id: str


def group_id(name: str) -> str:
    """A FIFO ``MessageGroupId`` (1-128 of SQS's alphabet) for a tenancy or a run."""
    return _GROUP_CHARS.sub("_", name)[:128] or "_"


@dataclass
class WorkQueue:
    """Sends messages that continue runs; copies rejected bodies to the dead-letter queue."""

    sqs: Any  # a boto3 SQS client
    queue_url: str | None
    dead_letter_url: str | None
    tenancy_queue_url: str | None = None

    @property
    def can_hand_on(self) -> bool:
        """Whether there is a queue to fan out, hand on and re-queue to."""
        return bool(self.tenancy_queue_url or self.queue_url)

    def send(self, messages: Sequence[QueueMessage]) -> int:
        """Send each message (10 per call); return how many were sent (all, or raise)."""
        fifo = bool(self.tenancy_queue_url)
        url = self.tenancy_queue_url or self.queue_url
        if not url:
            raise QueueSendError("neither TENANCY_QUEUE_URL nor WORK_QUEUE_URL is set")
        for start in range(0, len(messages), SEND_BATCH):
            entries = []
            for i, message in enumerate(messages[start : start + SEND_BATCH]):
                entry: dict[str, Any] = {
                    "Id": str(i),
                    "MessageBody": json.dumps(message.body, separators=(",", ":")),
                }
                if fifo:
                    entry["MessageGroupId"] = group_id(message.group)
                    entry["MessageDeduplicationId"] = message.dedup_id[:128]
                entries.append(entry)
            response = self.sqs.send_message_batch(QueueUrl=url, Entries=entries)
            if response.get("Failed"):
                failed = [f.get("Code", "?") for f in response["Failed"]]
                raise QueueSendError(f"SQS refused {len(failed)} messages: {failed[:3]}")
        return len(messages)

    def retry_later(self, queue_url: str | None, receipt_handle: str, seconds: int) -> bool:
        """Make a received message visible again in ``seconds`` (not the full visibility
        timeout); False when SQS refused, and the timeout applies."""
        if not queue_url:
            return False
        try:
            self.sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
            )
        except Exception:
            return False
        return True

    def url_of(self, queue_arn: str) -> str | None:
        """Our queue URL for an ``eventSourceARN`` (the queue name ends both)."""
        name = queue_arn.rsplit(":", 1)[-1]
        for url in (self.tenancy_queue_url, self.queue_url):
            if url and url.rstrip("/").rsplit("/", 1)[-1] == name:
                return url
        return None

    def dead_letter(self, body: str, error: str) -> bool:
        """Copy a rejected message, unchanged, with an ``error`` attribute; False when unset."""
        if not self.dead_letter_url:
            return False
        self.sqs.send_message(
            QueueUrl=self.dead_letter_url,
            MessageBody=body or "(empty body)",
            MessageAttributes={
                # SQS refuses control characters and empty strings in attribute values.
                "error": {
                    "DataType": "String",
                    "StringValue": printable(error, MAX_ATTRIBUTE) or "invalid",
                }
            },
        )
        return True
