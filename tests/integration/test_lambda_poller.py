"""The model of Lambda's SQS poller (devkit/lambda_poller.py) keeps Lambda's rules, on moto.

Each test builds its own queues on the session's moto server and a target that records what it
was given. Nothing waits for luck: invocations meet at barriers (with a timeout that only
turns a bug into a failure), and messages come back through ChangeMessageVisibility or a
1-second visibility timeout.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from devkit.aws_local import LocalAwsStack
from devkit.lambda_poller import (
    DIRECT,
    EventSourceMapping,
    InProcessFunction,
    InvocationRecord,
    LambdaPoller,
    PollerReport,
    mappings_from_template,
)
from devkit.moto_server import MotoServer

pytestmark = pytest.mark.integration

BARRIER_TIMEOUT = 30.0  # only ever reached when the poller breaks a rule, however busy the machine


@pytest.fixture
def sqs(moto_server: MotoServer) -> Any:
    return boto3.client("sqs", endpoint_url=moto_server.endpoint_url, region_name="us-east-1")


@dataclass(frozen=True)
class Queue:
    url: str
    arn: str
    dead_letter_url: str | None = None

    def mapping(self, **settings: Any) -> EventSourceMapping:
        return EventSourceMapping(self.url, self.arn, fifo=self.url.endswith(".fifo"), **settings)


def make_queue(
    sqs: Any, fifo: bool = False, visibility: int = 30, max_receive_count: int | None = None
) -> Queue:
    name = f"q{uuid.uuid4().hex[:12]}"
    suffix = ".fifo" if fifo else ""
    attributes = {"VisibilityTimeout": str(visibility)}
    if fifo:
        attributes["FifoQueue"] = "true"
    dead_letter_url = None
    if max_receive_count is not None:
        dlq_attributes = {"FifoQueue": "true"} if fifo else {}
        dead_letter_url = sqs.create_queue(
            QueueName=f"{name}-dlq{suffix}", Attributes=dlq_attributes
        )["QueueUrl"]
        dlq_arn = arn_of(sqs, dead_letter_url)
        attributes["RedrivePolicy"] = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}
        )
    url = sqs.create_queue(QueueName=f"{name}{suffix}", Attributes=attributes)["QueueUrl"]
    return Queue(url, arn_of(sqs, url), dead_letter_url)


def arn_of(sqs: Any, url: str) -> str:
    return str(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
    )


def in_start_order(report: PollerReport) -> list[InvocationRecord]:
    """The invocations as they started. The report lists them as they ended, and a redelivery
    can end before the invocation it follows (its messages came back before that one's answer
    was applied)."""
    return sorted(report.invocations, key=lambda invocation: invocation.number)


def send(sqs: Any, queue: Queue, body: dict[str, Any], group: str | None = None) -> str:
    extra = {"MessageGroupId": group, "MessageDeduplicationId": uuid.uuid4().hex} if group else {}
    return str(
        sqs.send_message(QueueUrl=queue.url, MessageBody=json.dumps(body), **extra)["MessageId"]
    )


@dataclass
class RecordingTarget:
    """Records every event; the first ``meet`` invocations wait for each other (a barrier)."""

    meet: int = 0
    answer: Callable[[dict[str, Any], int], Any] = lambda event, n: {"batchItemFailures": []}
    events: list[dict[str, Any]] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)  # message group -> invocations
    running: int = 0
    peak: int = 0
    overlaps: list[str] = field(default_factory=list)  # groups seen twice in flight at once
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _barrier: threading.Barrier | None = None

    def __post_init__(self) -> None:
        if self.meet:
            self._barrier = threading.Barrier(self.meet, timeout=BARRIER_TIMEOUT)

    def __call__(self, event: dict[str, Any]) -> Any:
        records = event.get("Records", [])
        groups = {r["attributes"].get("MessageGroupId") for r in records} - {None}
        with self._lock:
            number = len(self.events)
            self.events.append(event)
            self.running += 1
            self.peak = max(self.peak, self.running)
            for group in groups:
                if self.in_flight[group]:
                    self.overlaps.append(group)
                self.in_flight[group] += 1
        try:
            if self._barrier is not None and number < self.meet:
                self._barrier.wait()
            return self.answer(event, number)
        finally:
            with self._lock:
                self.running -= 1
                for group in groups:
                    self.in_flight[group] -= 1

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for e in self.events for r in e.get("Records", [])]


def test_moto_holds_back_a_fifo_group_while_one_of_its_messages_is_in_flight(sqs: Any) -> None:
    # Given a FIFO queue with two messages of group a and one of group b
    queue = make_queue(sqs, fifo=True)
    for body, group in (("a1", "a"), ("a2", "a"), ("b1", "b")):
        send(sqs, queue, {"n": body}, group)

    # When a1 is received (in flight), and the queue is asked again
    first = sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=1)["Messages"]
    second = sqs.receive_message(QueueUrl=queue.url, MaxNumberOfMessages=10)["Messages"]

    # Then a2 waits for a1; only b's message comes (what the poller's FIFO rule rests on)
    assert [json.loads(m["Body"])["n"] for m in first] == ["a1"]
    assert [json.loads(m["Body"])["n"] for m in second] == ["b1"]


def test_fifo_one_batch_per_group_in_flight_and_each_group_in_order(sqs: Any) -> None:
    # Given three groups of four messages, sent interleaved, and room for 10 invocations
    queue = make_queue(sqs, fifo=True)
    for n in range(4):
        for group in ("a", "b", "c"):
            send(sqs, queue, {"group": group, "n": n}, group)
    # The first three invocations only return once three are in flight at the same time.
    target = RecordingTarget(meet=3)

    # When the poller drains it with batches of one message
    with LambdaPoller(sqs, [queue.mapping(batch_size=1, maximum_concurrency=10)], target) as poller:
        report = poller.drain(timeout=30)

    # Then the three groups ran side by side, never a group twice, each in order, once each
    bodies = target.bodies()
    assert {
        "drained": report.drained,
        "overlaps": target.overlaps,
        "held back": report.held_back,
        "peak in flight": report.peak_in_flight[queue.mapping().label],
        "order in each group": {
            group: [b["n"] for b in bodies if b["group"] == group] for group in ("a", "b", "c")
        },
        "deliveries per message": set(report.deliveries.values()),
        "deleted": len(report.deleted),
    } == {
        "drained": True,
        "overlaps": [],
        "held back": 0,
        "peak in flight": 3,
        "order in each group": {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "c": [0, 1, 2, 3]},
        "deliveries per message": {1},
        "deleted": 12,
    }


def test_maximum_concurrency_bounds_the_invocations_in_flight(sqs: Any) -> None:
    # Given 12 messages on a standard queue, batches of 2, at most 3 invocations at once
    queue = make_queue(sqs)
    for n in range(12):
        send(sqs, queue, {"n": n})
    target = RecordingTarget(meet=3)
    mapping = queue.mapping(batch_size=2, maximum_concurrency=3)

    # When it is drained
    with LambdaPoller(sqs, [mapping], target) as poller:
        report = poller.drain(timeout=30)

    # Then three invocations were in flight at once, never four, each with at most 2 messages
    assert report.drained
    assert target.peak == 3
    assert report.peak_in_flight[mapping.label] == 3
    assert all(1 <= len(e["Records"]) <= 2 for e in target.events)
    assert sorted(b["n"] for b in target.bodies()) == list(range(12))


def test_messages_named_in_batch_item_failures_come_back_and_the_others_are_deleted(
    sqs: Any,
) -> None:
    # Given three messages in one batch, the second of which the handler cannot finish yet
    queue = make_queue(sqs, visibility=30)
    ids = [send(sqs, queue, {"n": n}) for n in range(3)]

    def answer(event: dict[str, Any], number: int) -> Any:
        if number > 0:
            return {"batchItemFailures": []}
        # As the refresh handler does: report it, and bring it back sooner than the timeout.
        record = next(r for r in event["Records"] if r["messageId"] == ids[1])
        sqs.change_message_visibility(
            QueueUrl=queue.url, ReceiptHandle=record["receiptHandle"], VisibilityTimeout=0
        )
        return {"batchItemFailures": [{"itemIdentifier": ids[1]}]}

    target = RecordingTarget(answer=answer)

    # When it is drained
    with LambdaPoller(sqs, [queue.mapping(batch_size=3, maximum_concurrency=2)], target) as poller:
        report = poller.drain(timeout=30)

    # Then only the failed message was delivered again, as its second receive
    assert report.drained
    first, second = in_start_order(report)
    assert (first.outcome, first.failed) == ("partial", (ids[1],))
    assert second.message_ids == (ids[1],)
    assert target.events[1]["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    assert report.deliveries == Counter({ids[0]: 1, ids[1]: 2, ids[2]: 1})


def test_an_invocation_that_raises_brings_the_whole_batch_back(sqs: Any) -> None:
    # Given three messages, a 1-second visibility timeout, and a first invocation that crashes
    queue = make_queue(sqs, visibility=1)
    ids = [send(sqs, queue, {"n": n}) for n in range(3)]

    def answer(event: dict[str, Any], number: int) -> Any:
        if number == 0:
            raise RuntimeError("the container was killed")
        return {"batchItemFailures": []}

    target = RecordingTarget(answer=answer)

    # When it is drained
    with LambdaPoller(sqs, [queue.mapping(batch_size=3, maximum_concurrency=2)], target) as poller:
        report = poller.drain(timeout=30)

    # Then nothing was deleted after the crash: all three came back once the timeout ran out
    assert report.drained
    crashed, retried = in_start_order(report)
    assert crashed.outcome == "crashed"
    assert isinstance(crashed.error, RuntimeError)
    assert sorted(retried.message_ids) == sorted(ids)
    assert {r["attributes"]["ApproximateReceiveCount"] for r in target.events[1]["Records"]} == {
        "2"
    }


def test_an_answer_naming_an_unknown_message_fails_the_whole_batch(sqs: Any) -> None:
    # Given two messages and a handler whose first answer names a message not in the batch
    queue = make_queue(sqs)
    ids = [send(sqs, queue, {"n": n}) for n in range(2)]

    def answer(event: dict[str, Any], number: int) -> Any:
        return {"batchItemFailures": [{"itemIdentifier": "not-a-message"}] if number == 0 else []}

    target = RecordingTarget(answer=answer)
    mapping = queue.mapping(batch_size=2, maximum_concurrency=2)

    # When it is drained (failed messages brought back at once rather than in 30 s)
    with LambdaPoller(sqs, [mapping], target, redeliver_failed_after=0) as poller:
        report = poller.drain(timeout=30)

    # Then both messages were kept and delivered again
    assert in_start_order(report)[0].outcome == "failed"
    assert report.deliveries == Counter(dict.fromkeys(ids, 2))


def test_a_message_failing_every_delivery_goes_to_the_dead_letter_queue(sqs: Any) -> None:
    # Given a queue that allows two deliveries, and a handler that never finishes the message
    queue = make_queue(sqs, max_receive_count=2)
    message_id = send(sqs, queue, {"n": 0})
    target = RecordingTarget(
        answer=lambda event, n: {"batchItemFailures": [{"itemIdentifier": message_id}]}
    )

    # When it is drained (failures visible again at once)
    mapping = queue.mapping(batch_size=1, maximum_concurrency=2)
    with LambdaPoller(sqs, [mapping], target, redeliver_failed_after=0) as poller:
        report = poller.drain(timeout=30)

    # Then it was delivered twice, then moved to the dead-letter queue by the redrive policy
    assert report.drained
    assert report.deliveries[message_id] == 2
    assert queue.dead_letter_url is not None
    dead = sqs.receive_message(QueueUrl=queue.dead_letter_url, MaxNumberOfMessages=10)["Messages"]
    assert [m["MessageId"] for m in dead] == [message_id]


def test_the_event_is_the_one_lambda_builds_for_a_fifo_queue(sqs: Any) -> None:
    # Given one FIFO message with a message attribute
    queue = make_queue(sqs, fifo=True)
    sqs.send_message(
        QueueUrl=queue.url,
        MessageBody='{"keys": []}',
        MessageGroupId="ocid1.tenancy.oc1..a",
        MessageDeduplicationId="run-1-chunk-0",
        MessageAttributes={"kind": {"DataType": "String", "StringValue": "chunk"}},
    )
    target = RecordingTarget()

    # When it is delivered
    with LambdaPoller(sqs, [queue.mapping()], target, region="us-east-1") as poller:
        poller.drain(timeout=30)

    # Then the record has Lambda's fields, FIFO attributes included
    (record,) = target.events[0]["Records"]
    attributes = record["attributes"]
    assert {
        "eventSource": record["eventSource"],
        "eventSourceARN": record["eventSourceARN"],
        "awsRegion": record["awsRegion"],
        "body": record["body"],
        "MessageGroupId": attributes["MessageGroupId"],
        "MessageDeduplicationId": attributes["MessageDeduplicationId"],
        "SequenceNumber given": bool(attributes["SequenceNumber"]),
        "ApproximateReceiveCount": attributes["ApproximateReceiveCount"],
        "SentTimestamp all digits": attributes["SentTimestamp"].isdigit(),
        "kind": record["messageAttributes"]["kind"]["stringValue"],
        "identity fields": {"messageId", "receiptHandle", "md5OfBody"} & set(record),
    } == {
        "eventSource": "aws:sqs",
        "eventSourceARN": queue.arn,
        "awsRegion": "us-east-1",
        "body": '{"keys": []}',
        "MessageGroupId": "ocid1.tenancy.oc1..a",
        "MessageDeduplicationId": "run-1-chunk-0",
        "SequenceNumber given": True,
        "ApproximateReceiveCount": "1",
        "SentTimestamp all digits": True,
        "kind": "chunk",
        "identity fields": {"messageId", "receiptHandle", "md5OfBody"},
    }


def test_a_direct_invocation_is_in_flight_until_it_answers_and_its_messages_drain(
    sqs: Any,
) -> None:
    # Given a "scheduled" invocation that fans out three messages to the queue
    queue = make_queue(sqs)

    def answer(event: dict[str, Any], number: int) -> Any:
        if "Records" not in event:
            for n in range(3):
                send(sqs, queue, {"n": n})
            return {"status": "RUNNING"}
        return {"batchItemFailures": []}

    target = RecordingTarget(answer=answer)

    # When the poller invokes it and drains
    with LambdaPoller(sqs, [queue.mapping(batch_size=10, maximum_concurrency=2)], target) as poller:
        poller.invoke({"scheduled_time": "2026-11-28T06:00:00Z", "request": {}})
        report = poller.drain(timeout=30)

    # Then its answer is kept and every message it sent was delivered
    assert report.direct_responses == [{"status": "RUNNING"}]
    assert report.of(DIRECT)[0].outcome == "ok"
    assert sorted(b["n"] for b in target.bodies()) == [0, 1, 2]


def test_mappings_follow_the_template(aws_stack: LocalAwsStack) -> None:
    # When the refresh function's SQS events are read from template.yaml
    mappings = {m.name: m for m in mappings_from_template(aws_stack)}

    # Then the work queue's mapping has the template's settings
    work = mappings["WorkQueue"]
    assert {
        "queue": (work.queue_url, work.queue_arn),
        "fifo": work.fifo,
        "batch size, maximum concurrency": (work.batch_size, work.maximum_concurrency),
        "batching window": work.batching_window_seconds,
        "reports batch item failures": work.report_batch_item_failures,
    } == {
        "queue": (aws_stack.work_queue_url, aws_stack.work_queue_arn),
        "fifo": False,
        "batch size, maximum concurrency": (5, 2),
        "batching window": 10,
        "reports batch item failures": True,
    }
    # And the tenancy queue's (FIFO), on stacks that have it
    if hasattr(aws_stack, "tenancy_queue_url"):
        tenancy = mappings["TenancyQueue"]
        assert {
            "queue": tenancy.queue_url,
            "fifo": tenancy.fifo,
            "batch size, maximum concurrency": (tenancy.batch_size, tenancy.maximum_concurrency),
            "reports batch item failures": tenancy.report_batch_item_failures,
        } == {
            "queue": aws_stack.tenancy_queue_url,
            "fifo": True,
            "batch size, maximum concurrency": (1, 25),
            "reports batch item failures": True,
        }


def test_in_process_function_loads_a_container_per_concurrent_invocation() -> None:
    # Given a loader of fake handler modules whose first two invocations must overlap
    import types

    barrier = threading.Barrier(2, timeout=BARRIER_TIMEOUT)
    seen: list[tuple[int, float]] = []

    def load() -> types.ModuleType:
        module = types.ModuleType(f"fake{uuid.uuid4().hex}")

        def handler(event: dict[str, Any], context: Any) -> Any:
            if event["n"] < 2:
                barrier.wait()
            seen.append((id(module), context.get_remaining_time_in_millis() / 1000))
            return {"ok": True}

        module.handler = handler  # type: ignore[attr-defined]
        return module

    function = InProcessFunction(load, remaining=lambda n: lambda: 42.0)

    # When two invocations run at once, then a third after them
    threads = [threading.Thread(target=function, args=({"n": n},)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    function({"n": 2})

    # Then two containers were cold-started, the third call reused one, remaining time as told
    assert function.cold_starts == 2
    assert len({module for module, _ in seen}) == 2
    assert {remaining for _, remaining in seen} == {42.0}


def test_an_invocation_that_ends_during_a_poll_round_is_followed_at_once(sqs: Any) -> None:
    # Given a FIFO group of two messages, and a poller that short-polls only every 60 s
    queue = make_queue(sqs, fifo=True)
    send(sqs, queue, {"n": 0}, "g")
    send(sqs, queue, {"n": 1}, "g")
    release = threading.Event()

    def target(event: dict[str, Any]) -> Any:
        if json.loads(event["Records"][0]["body"])["n"] == 0:
            release.wait(BARRIER_TIMEOUT)
        return {"batchItemFailures": []}

    poller = LambdaPoller(sqs, [queue.mapping(batch_size=1)], target, poll_interval=60)
    poll_round = poller._poll_round

    def round_during_which_the_first_ends() -> bool:
        dispatched = poll_round()
        if not dispatched and not release.is_set():  # 0 in flight, 1 held back behind it
            release.set()
            with poller._changed:
                poller._changed.wait_for(lambda: poller.report().invocations, BARRIER_TIMEOUT)
        return dispatched

    poller._poll_round = round_during_which_the_first_ends  # type: ignore[method-assign]

    # When it is drained (for at most 30 s)
    with poller:
        report = poller.drain(timeout=30)

    # Then message 1 was delivered as soon as 0's invocation ended, not 60 s later
    assert (report.drained, len(report.deleted)) == (True, 2)


def test_a_message_sent_to_an_idle_queue_is_received_at_once_with_long_polling(
    sqs: Any,
) -> None:
    # Given a poller that short-polls only every 60 s, told of each send (as Lambda's long
    # polling is), and a direct invocation that sends a message and waits for its delivery
    queue = make_queue(sqs)
    signal, delivered = threading.Event(), threading.Event()

    def sent(seconds: float) -> bool:
        woken = signal.wait(seconds)
        signal.clear()
        return woken

    def target(event: dict[str, Any]) -> Any:
        if "Records" in event:
            delivered.set()
            return {"batchItemFailures": []}
        send(sqs, queue, {"n": 0})
        signal.set()
        return {"delivered while the sender ran": delivered.wait(BARRIER_TIMEOUT)}

    # When the invocation runs and the poller drains
    with LambdaPoller(sqs, [queue.mapping()], target, poll_interval=60, sent=sent) as poller:
        poller.invoke({"source": "test"})
        report = poller.drain(timeout=30)

    # Then the message was delivered while the invocation that sent it still ran
    assert report.drained
    assert report.direct_responses == [{"delivered while the sender ran": True}]
