"""SQS for the simulation: standard and FIFO queues, as the function and Lambda's pollers see them.

What the package calls (``send_message``, ``send_message_batch``,
``change_message_visibility``) in the boto3 client's shape, and what Lambda's pollers do
(``receive``, ``delete``): visibility timeouts, ``ApproximateReceiveCount``, redrive to a
dead-letter queue once a message has been received ``maxReceiveCount`` times, FIFO message
groups (a group's messages in order, none while one of them is in flight) and FIFO
de-duplication (five minutes).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devkit.sim.runtime import SimRuntime

DEDUPLICATION_WINDOW = 300.0
ACCOUNT = "123456789012"
REGION = "us-east-1"


@dataclass
class Message:
    message_id: str
    body: str
    sent_at: float
    group: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    receive_count: int = 0
    visible_at: float = 0.0
    receipt: str | None = None


@dataclass
class Queue:
    name: str
    visibility_timeout: float
    dead_letter: Queue | None = None
    max_receive_count: int | None = None
    messages: list[Message] = field(default_factory=list)
    dedup: dict[str, float] = field(default_factory=dict)

    @property
    def fifo(self) -> bool:
        return self.name.endswith(".fifo")

    @property
    def url(self) -> str:
        return f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{self.name}"

    @property
    def arn(self) -> str:
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{self.name}"


class SimSqs:
    """The region's queues; ``sent`` wakes pollers waiting for messages."""

    def __init__(self, runtime: SimRuntime, switch: Callable[[], None] = lambda: None) -> None:
        self.runtime = runtime
        self.queues: dict[str, Queue] = {}
        self.calls: Counter[str] = Counter()
        self.sent = runtime.condition()
        self._ids = itertools.count(1)
        self._switch = switch

    def create_queue(
        self,
        name: str,
        visibility_timeout: float,
        dead_letter: Queue | None = None,
        max_receive_count: int | None = None,
    ) -> Queue:
        queue = Queue(name, visibility_timeout, dead_letter, max_receive_count)
        self.queues[queue.url] = queue
        return queue

    # --- the boto3 client's calls the package makes ------------------------------------------

    def send_message(self, **request: Any) -> dict[str, Any]:
        self.calls["send_message"] += 1
        self._switch()
        message_id = self._send(self.queues[request["QueueUrl"]], request)
        self._switch()
        return {"MessageId": message_id}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls["send_message_batch"] += 1
        self._switch()
        queue = self.queues[QueueUrl]
        successful = [{"Id": e["Id"], "MessageId": self._send(queue, e)} for e in Entries]
        self._switch()
        return {"Successful": successful, "Failed": []}

    def change_message_visibility(
        self,
        QueueUrl: str,
        ReceiptHandle: str,
        VisibilityTimeout: int,
    ) -> dict[str, Any]:
        self.calls["change_message_visibility"] += 1
        self._switch()
        for message in self.queues[QueueUrl].messages:
            if message.receipt == ReceiptHandle:
                message.visible_at = self.runtime.now + VisibilityTimeout
                with self.sent:
                    self.sent.notify_all()
                return {}
        raise RuntimeError("ReceiptHandleIsInvalid")

    def _send(self, queue: Queue, request: dict[str, Any]) -> str:
        now = self.runtime.now
        dedup = request.get("MessageDeduplicationId")
        if queue.fifo and dedup is not None:
            queue.dedup = {k: t for k, t in queue.dedup.items() if t > now - DEDUPLICATION_WINDOW}
            if dedup in queue.dedup:
                return f"duplicate-{dedup}"
            queue.dedup[dedup] = now
        message = Message(
            message_id=f"m{next(self._ids):07d}",
            body=request["MessageBody"],
            sent_at=now,
            group=request.get("MessageGroupId"),
            attributes=dict(request.get("MessageAttributes") or {}),
            visible_at=now,
        )
        queue.messages.append(message)
        with self.sent:
            self.sent.notify_all()
        return message.message_id

    # --- what Lambda's pollers do -----------------------------------------------------------

    def receive(self, queue: Queue, most: int, busy_groups: set[str]) -> list[Message]:
        """Up to ``most`` visible messages (FIFO: none of a busy group, a group's in order),
        each now in flight; those received more than ``maxReceiveCount`` times go to the
        dead-letter queue instead."""
        now, taken = self.runtime.now, []
        blocked = set(busy_groups)
        for message in list(queue.messages):
            if len(taken) >= most:
                break
            if queue.fifo and message.group in blocked:
                continue
            if message.visible_at > now:
                if queue.fifo:
                    blocked.add(str(message.group))  # in flight: its group waits
                continue
            if queue.max_receive_count and message.receive_count >= queue.max_receive_count:
                queue.messages.remove(message)
                if queue.dead_letter is not None:
                    message.receipt, message.visible_at = None, now
                    queue.dead_letter.messages.append(message)
                continue
            message.receive_count += 1
            message.visible_at = now + queue.visibility_timeout
            message.receipt = f"{message.message_id}-{message.receive_count}"
            taken.append(message)
            if queue.fifo:
                blocked.add(str(message.group))
        return taken

    def delete(self, queue: Queue, message: Message) -> None:
        if message in queue.messages and message.receipt is not None:
            queue.messages.remove(message)

    def next_visible(self, queue: Queue) -> float | None:
        """When the next message not visible now becomes visible (None: none is hidden)."""
        hidden = [m.visible_at for m in queue.messages if m.visible_at > self.runtime.now]
        return min(hidden) if hidden else None

    def record(self, queue: Queue, message: Message) -> dict[str, Any]:
        """The Lambda SQS event record of a received message."""
        attributes = {
            "ApproximateReceiveCount": str(message.receive_count),
            "SentTimestamp": str(int((self.runtime.epoch + message.sent_at) * 1000)),
        }
        if message.group is not None:
            attributes["MessageGroupId"] = message.group
        return {
            "messageId": message.message_id,
            "receiptHandle": message.receipt,
            "body": message.body,
            "attributes": attributes,
            "messageAttributes": {},
            "eventSource": "aws:sqs",
            "eventSourceARN": queue.arn,
            "awsRegion": REGION,
        }
