"""Lambda's SQS event source mapping over the work queue, driven in the test's thread.

It does what the template's mapping does: batches of ``BatchSize`` messages, the partial
batch response (failed messages become visible again, the others are deleted), and lets the
queue do the rest: moto raises ``ApproximateReceiveCount`` on every delivery and, as SQS's
redrive policy does, moves a message to the dead-letter queue once it has been delivered
``maxReceiveCount`` times. The source keeps a ledger of every message it saw, so a test can
prove that each one is either done or dead-lettered, and none is delivered too often.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devkit.aws_local import REFRESH_FUNCTION_ID, WORK_QUEUE_ID, load_template
from tests.integration.refresh_world import RefreshWorld

RemainingTime = Callable[[], float] | None


def work_queue_batch_size() -> int:
    """``BatchSize`` of the refresh function's work-queue event in template.yaml."""
    events = load_template()["Resources"][REFRESH_FUNCTION_ID]["Properties"]["Events"]
    for event in events.values():
        if event["Type"] == "SQS" and WORK_QUEUE_ID in json.dumps(event["Properties"]["Queue"]):
            return int(event["Properties"]["BatchSize"])
    raise LookupError("template.yaml has no work-queue event on the refresh function")


@dataclass
class WorkQueueSource:
    """Feeds the work queue to ``world``'s handler until nothing is left in flight."""

    world: RefreshWorld
    batch_size: int = field(default_factory=work_queue_batch_size)
    deliveries: Counter[str] = field(default_factory=Counter)
    done: set[str] = field(default_factory=set)
    invocations: int = 0
    crashes: list[BaseException] = field(default_factory=list)
    _dead_letters: list[dict[str, Any]] | None = None

    @property
    def max_receive_count(self) -> int:
        return int(self.world.stack.max_receive_count)

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
    ) -> list[dict[str, Any]]:
        """Deliver until the queue is empty; ``remaining(n)`` times invocation ``n``."""
        responses = []
        while delivered := self.deliver_round(remaining):
            responses += delivered
            assert self.invocations <= max_invocations, "the work queue does not drain"
        return responses

    def deliver_round(
        self, remaining: Callable[[int], RemainingTime] = lambda invocation: None
    ) -> list[dict[str, Any]]:
        """Receive every visible message and deliver them in batches; the responses."""
        queue = self.world.stack.work_queue_url
        messages = self.world.stack.receive_all(queue)
        responses = []
        for start in range(0, len(messages), self.batch_size):
            batch = messages[start : start + self.batch_size]
            for message in batch:
                self.deliveries[message["MessageId"]] += 1
                # The count SQS reports is the one the handler's last-delivery rule reads.
                received = int(message["Attributes"]["ApproximateReceiveCount"])
                assert received == self.deliveries[message["MessageId"]]
                assert received <= self.max_receive_count
            response = self._invoke(batch, remaining(self.invocations))
            responses.append(response)
            self.invocations += 1
            failed = {failure["itemIdentifier"] for failure in response["batchItemFailures"]}
            self.world.stack.delete_messages(
                queue, [m for m in batch if m["MessageId"] not in failed]
            )
            self.done |= {m["MessageId"] for m in batch if m["MessageId"] not in failed}
            self.world.stack.release_messages(queue, [m for m in batch if m["MessageId"] in failed])
        return responses

    def _invoke(self, batch: list[dict[str, Any]], remaining: RemainingTime) -> dict[str, Any]:
        """The partial batch response (every message failed, when the invocation crashed)."""
        try:
            response: dict[str, Any] = self.world.invoke(
                self.world.stack.sqs_event(batch), remaining=remaining
            )
        except Exception as crash:  # Lambda retries the whole batch; the test looks at why
            self.crashes.append(crash)
            return {"batchItemFailures": [{"itemIdentifier": m["MessageId"]} for m in batch]}
        return response

    # --- what became of the messages ---------------------------------------------------------

    def dead_letters(self) -> list[dict[str, Any]]:
        """Every message in the dead-letter queue (read once, at the end of the scenario)."""
        if self._dead_letters is None:
            self._dead_letters = self.world.stack.receive_all(
                self.world.stack.dead_letter_queue_url
            )
        return self._dead_letters

    def redriven(self) -> set[str]:
        """Work-queue messages SQS moved to the dead-letter queue after their last delivery."""
        return {m["MessageId"] for m in self.dead_letters() if "error" not in _attributes(m)}

    def rejection_copies(self) -> list[dict[str, Any]]:
        """Copies of rejected requests the handler put in the dead-letter queue."""
        return [m for m in self.dead_letters() if "error" in _attributes(m)]

    def assert_every_message_done_or_dead_lettered(self) -> None:
        """Nothing duplicated or dropped: each message is done xor dead-lettered, none is left."""
        redriven = self.redriven()
        seen = set(self.deliveries)
        assert redriven <= seen, "the dead-letter queue holds messages nobody delivered"
        assert not (self.done & redriven), "a message was both done and dead-lettered"
        assert seen == self.done | redriven, "a message was neither done nor dead-lettered"
        for message_id in redriven:
            assert self.deliveries[message_id] == self.max_receive_count
        attributes = self.world.stack.client("sqs").get_queue_attributes(
            QueueUrl=self.world.stack.work_queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        assert attributes == {
            "ApproximateNumberOfMessages": "0",
            "ApproximateNumberOfMessagesNotVisible": "0",
        }


def _attributes(message: dict[str, Any]) -> dict[str, Any]:
    return dict(message.get("MessageAttributes") or {})
