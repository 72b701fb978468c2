"""The work queue (fan-out, hand-off, re-queue) and the dead-letter copy of rejected messages.

The only module of the refresh path that talks to SQS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

SEND_BATCH = 10
MAX_ATTRIBUTE = 256


class QueueSendError(RuntimeError):
    """SQS refused some messages; the caller fails so that nothing is lost."""


class WorkQueue:
    """Sends request bodies to the work queue; copies rejected bodies to the dead-letter queue."""

    def __init__(self, client: Any, queue_url: str | None, dead_letter_url: str | None) -> None:
        self._sqs = client
        self.queue_url = queue_url
        self.dead_letter_url = dead_letter_url

    def send(self, bodies: Sequence[dict[str, Any]]) -> int:
        """Send each body as one message; return how many were sent (all, or raise)."""
        if not self.queue_url:
            raise QueueSendError("WORK_QUEUE_URL is not set: cannot hand work on")
        for start in range(0, len(bodies), SEND_BATCH):
            entries = [
                {"Id": str(i), "MessageBody": json.dumps(body, separators=(",", ":"))}
                for i, body in enumerate(bodies[start : start + SEND_BATCH])
            ]
            response = self._sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            if response.get("Failed"):
                failed = [f.get("Code", "?") for f in response["Failed"]]
                raise QueueSendError(f"SQS refused {len(failed)} messages: {failed[:3]}")
        return len(bodies)

    def retry_later(self, receipt_handle: str, seconds: int) -> bool:
        """Make a received work-queue message visible again in ``seconds`` (not the full
        visibility timeout); False when SQS refused, and the timeout applies."""
        if not self.queue_url:
            return False
        try:
            self._sqs.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
            )
        except Exception:
            return False
        return True

    def dead_letter(self, body: str, error: str) -> bool:
        """Copy a rejected message, unchanged, with an ``error`` attribute; False when unset."""
        if not self.dead_letter_url:
            return False
        self._sqs.send_message(
            QueueUrl=self.dead_letter_url,
            MessageBody=body or "(empty body)",
            MessageAttributes={
                "error": {"DataType": "String", "StringValue": _attribute_text(error)}
            },
        )
        return True


def _attribute_text(text: str) -> str:
    """SQS refuses control characters in attribute values: keep the error readable and valid."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:MAX_ATTRIBUTE])
    return cleaned or "invalid"
