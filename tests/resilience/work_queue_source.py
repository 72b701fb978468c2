"""Lambda's SQS event source mappings over the work queue and the tenancy queue, as
template.yaml maps them, with a ledger of every delivery.

The delivering is ``devkit.lambda_poller.LambdaPoller``'s: each queue's ``BatchSize`` and
``MaximumConcurrency``, one batch per message group in flight on the FIFO tenancy queue, the
partial batch response (failed messages come back, the others are deleted), a crash failing
the whole batch. The queues do the rest: moto raises ``ApproximateReceiveCount`` on every
delivery and, as SQS's redrive policy does, moves a message to its queue's dead-letter queue
once it has been delivered ``maxReceiveCount`` times.

Two things are compressed so that a scenario does not wait for real: a failed or crashed
batch is visible again at once (not after the function's back-off or the visibility
timeout), and the work queue's batching window is not waited out (a scenario sends no burst
to gather). The function runs in one warm container (``world``'s handler), one invocation at
a time, as the scenarios' fault hooks expect.

The ledger records, per queue, every message delivered and how often, so a test can prove
that each one is either done or dead-lettered, and none is delivered too often.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from devkit.lambda_poller import EventSourceMapping, LambdaPoller, mappings_from_template
from tests.integration.refresh_world import RefreshWorld

RemainingTime = Callable[[], float] | None
WORK_QUEUE = "WorkQueue"  # the template's event names: the mappings' labels
TENANCY_QUEUE = "TenancyQueue"
DRAIN_TIMEOUT = 120.0


@dataclass(frozen=True)
class Invocation:
    """One invocation of the function by a queue's mapping, and its answer."""

    number: int
    queue: str  # WORK_QUEUE or TENANCY_QUEUE
    message_ids: tuple[str, ...]
    response: Any  # None when it crashed


@dataclass
class WorkQueueSource:
    """Feeds both queues to ``world``'s handler until nothing is left in flight."""

    world: RefreshWorld
    deliveries: Counter[str] = field(default_factory=Counter)  # message id -> deliveries
    queue_of: dict[str, str] = field(default_factory=dict)  # message id -> its queue
    bodies: dict[str, str] = field(default_factory=dict)  # message id -> its body
    done: set[str] = field(default_factory=set)  # deleted after a successful delivery
    invocations: list[Invocation] = field(default_factory=list)
    crashes: list[BaseException] = field(default_factory=list)
    miscounted: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _remaining: Callable[[int], RemainingTime] = field(default=lambda n: None, repr=False)
    _dead_letters: dict[str, list[dict[str, Any]]] | None = None

    @property
    def max_receive_count(self) -> int:
        return int(self.world.stack.max_receive_count)

    def mappings(self) -> list[EventSourceMapping]:
        """The template's SQS events of the function, without the batching window."""
        return [
            replace(mapping, batching_window_seconds=0.0)
            for mapping in mappings_from_template(self.world.stack)
        ]

    def send(self, request: dict[str, Any]) -> str:
        """Put a request on the work queue, as a pipeline would; return its message id."""
        sent = self.world.stack.client("sqs").send_message(
            QueueUrl=self.world.stack.work_queue_url, MessageBody=json.dumps(request)
        )
        return str(sent["MessageId"])

    def drain(
        self,
        remaining: Callable[[int], RemainingTime] = lambda invocation: None,
        max_invocations: int = 60,
    ) -> list[Invocation]:
        """Deliver both queues until they are empty and nothing is in flight; ``remaining(n)``
        times invocation ``n`` (counted over the scenario). The invocations it made."""
        self._remaining = remaining
        first = len(self.invocations)
        with LambdaPoller(
            self.world.stack.client("sqs"),
            self.mappings(),
            self._invoke,
            region=self.world.stack.region,
            redeliver_failed_after=0,
            redeliver_crashed_after=0,
        ) as poller:
            report = poller.drain(DRAIN_TIMEOUT)
        self.done |= report.deleted
        self.crashes += [i.error for i in report.crashes if i.error is not None]
        assert report.drained, "the queues do not drain"
        assert report.held_back == 0, "a FIFO group had two batches in flight"
        assert not self.miscounted, self.miscounted
        assert len(self.invocations) <= max_invocations, "the queues do not drain"
        return self.invocations[first:]

    def _invoke(self, event: dict[str, Any]) -> Any:
        """The poller's target: the ledger, then the handler (a raise is a crash)."""
        with self._lock:
            number = len(self.invocations)
            ids = []
            for record in event["Records"]:
                message_id = record["messageId"]
                ids.append(message_id)
                self.deliveries[message_id] += 1
                self.queue_of[message_id] = self._queue(record["eventSourceARN"])
                self.bodies[message_id] = record["body"]
                # The count SQS reports is the one the handler's last-delivery rule reads.
                received = int(record["attributes"]["ApproximateReceiveCount"])
                if received != self.deliveries[message_id] or received > self.max_receive_count:
                    self.miscounted.append(
                        f"{message_id}: ApproximateReceiveCount {received} at delivery "
                        f"{self.deliveries[message_id]} (maxReceiveCount {self.max_receive_count})"
                    )
            response = None
            try:
                response = self.world.invoke(event, remaining=self._remaining(number))
            finally:
                queue = self._queue(event["Records"][0]["eventSourceARN"])
                self.invocations.append(Invocation(number, queue, tuple(ids), response))
        return response

    def _queue(self, queue_arn: str) -> str:
        return TENANCY_QUEUE if queue_arn == self.world.stack.tenancy_queue_arn else WORK_QUEUE

    # --- what became of the messages ---------------------------------------------------------

    def of(self, queue: str) -> set[str]:
        """The messages delivered from one queue (WORK_QUEUE or TENANCY_QUEUE)."""
        return {message_id for message_id, q in self.queue_of.items() if q == queue}

    def carrying(self, key_id: str) -> set[str]:
        """The messages delivered whose body names ``key_id`` (chunks, requests)."""
        return {message_id for message_id, body in self.bodies.items() if key_id in _keys_of(body)}

    def dead_letters(self, queue: str = WORK_QUEUE) -> list[dict[str, Any]]:
        """Every message in a queue's dead-letter queue (read once, at the end)."""
        if self._dead_letters is None:
            stack = self.world.stack
            self._dead_letters = {
                WORK_QUEUE: stack.receive_all(stack.dead_letter_queue_url),
                TENANCY_QUEUE: stack.receive_all(stack.tenancy_dead_letter_queue_url),
            }
        return self._dead_letters[queue]

    def redriven(self, queue: str | None = None) -> set[str]:
        """Messages SQS moved to a dead-letter queue after their last delivery (from either
        queue, or from ``queue``)."""
        queues = [queue] if queue else [WORK_QUEUE, TENANCY_QUEUE]
        return {
            m["MessageId"]
            for q in queues
            for m in self.dead_letters(q)
            if "error" not in _attributes(m)
        }

    def rejection_copies(self) -> list[dict[str, Any]]:
        """Copies of rejected requests the handler put in the dead-letter queue."""
        return [m for m in self.dead_letters(WORK_QUEUE) if "error" in _attributes(m)]

    def assert_every_message_done_or_dead_lettered(self) -> None:
        """Nothing duplicated or dropped, per queue: each message is done xor dead-lettered
        from its own queue, after exactly maxReceiveCount deliveries; none is left."""
        stack = self.world.stack
        queues = {
            WORK_QUEUE: stack.work_queue_url,
            TENANCY_QUEUE: stack.tenancy_queue_url,
        }
        for queue, url in queues.items():
            seen = self.of(queue)
            redriven = self.redriven(queue)
            assert redriven <= seen, f"the {queue} dead-letter queue holds messages nobody had"
            assert not (self.done & redriven), f"a {queue} message was done and dead-lettered"
            assert seen == (self.done & seen) | redriven, (
                f"a {queue} message was neither done nor dead-lettered"
            )
            for message_id in redriven:
                assert self.deliveries[message_id] == self.max_receive_count
            attributes = stack.client("sqs").get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )["Attributes"]
            assert attributes == {
                "ApproximateNumberOfMessages": "0",
                "ApproximateNumberOfMessagesNotVisible": "0",
            }, f"messages left in the {queue}"


def _keys_of(body: str) -> list[str]:
    try:
        keys = json.loads(body).get("keys", [])
    except (ValueError, AttributeError):
        return []
    return [str(k) for k in keys] if isinstance(keys, list) else []


def _attributes(message: dict[str, Any]) -> dict[str, Any]:
    return dict(message.get("MessageAttributes") or {})
