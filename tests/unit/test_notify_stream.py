"""A stream batch, as Lambda delivers it (typed wire format), to delivered notifications:
SNS for every record first, then the webhook mirror with the time the invocation has left."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from cckm_refresh.config import ConfigError, NotifySettings
from cckm_refresh.notify.delivery import Notifier
from cckm_refresh.notify.events import FailedKeys, Notification
from cckm_refresh.notify.stream import RunDigest, StreamNotifier
from cckm_refresh.notify.webhook import SAFETY_MARGIN, WebhookMirror
from cckm_refresh.runtime import Deadline
from cckm_refresh.table.reads import TableReader
from cckm_refresh.wiring import load_settings
from tests.unit.manual_runtime import ManualRuntime
from tests.unit.notify_fakes import (
    HANGS,
    ClockedSession,
    Counted,
    FakeLedger,
    FakeSns,
    clocked_webhook,
    within,
)

END = Deadline.within(60.0, ManualRuntime())  # the invocation's, where time does not matter


@dataclass
class RecordingNotifier:
    delivered: list[tuple[Notification, Deadline]] = field(default_factory=list)

    def deliver(self, notification: Notification, end: Deadline) -> bool:
        self.delivered.append((notification, end))
        return True


def stream_record(
    event_name: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> DynamoDBRecord:
    change: dict[str, Any] = {
        "Keys": {},
        "SequenceNumber": "1",
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if old is not None:
        change["OldImage"] = old
    if new is not None:
        change["NewImage"] = new
    return DynamoDBRecord(
        {
            "eventID": "e1",
            "eventName": event_name,
            "eventSource": "aws:dynamodb",
            "dynamodb": change,
        }
    )


def run_image(status: str, **numbers: int) -> dict[str, Any]:
    image: dict[str, Any] = {
        "pk": {"S": "RUN#r1"},
        "sk": {"S": "RUN"},
        "item_type": {"S": "RUN"},
        "run_id": {"S": "r1"},
        "trigger": {"S": "sqs"},
        "dry_run": {"BOOL": False},
        "status": {"S": status},
    }
    return image | {name: {"N": str(value)} for name, value in numbers.items()}


def failed_keys(run_id: str) -> FailedKeys:
    return FailedKeys(({"key_id": "k9", "display_name": "K9", "error_code": "HTTP_403"},), 1)


def stream_notifier(recorder: RecordingNotifier) -> StreamNotifier:
    return StreamNotifier(recorder, failed_keys)  # type: ignore[arg-type]


def test_a_wire_format_run_completion_becomes_a_json_ready_notification() -> None:
    # Given a RUN item's MODIFY from RUNNING to COMPLETED, numbers as DynamoDB sends them
    recorder = RecordingNotifier()
    old = run_image("RUNNING", requested=3)
    new = run_image(
        "COMPLETED", requested=3, refreshed=2, failed=1, not_found=0, skipped=0, rotated=0
    )

    # When it is handled
    count = stream_notifier(recorder).batch(END).publish(stream_record("MODIFY", old, new))

    # Then one notification whose body serialises to plain JSON integers
    assert count == 1
    [(notification, _)] = recorder.delivered
    body = json.loads(json.dumps(notification.body()))
    assert body["summary"] == "Run r1: 2 of 3 OCI keys refreshed, 1 failed"
    assert (body["requested"], body["failed"], body["failed_count"]) == (3, 1, 1)
    assert body["failed_keys"] == [{"key_id": "k9", "display_name": "K9", "error_code": "HTTP_403"}]


def test_each_notification_is_delivered_with_the_invocations_deadline() -> None:
    # Given the batch of an invocation that ends in 42 s
    recorder = RecordingNotifier()
    end = Deadline.within(42.0, ManualRuntime())
    new = run_image("COMPLETED", requested=1, refreshed=1)

    # When a record is handled
    stream_notifier(recorder).batch(end).publish(stream_record("MODIFY", run_image("RUNNING"), new))

    # Then the ledger's claim is leased against that deadline
    [(_, claimed_until)] = recorder.delivered
    assert claimed_until == end


@pytest.mark.parametrize(
    ("event_name", "old", "new"),
    [
        ("REMOVE", run_image("COMPLETED"), None),  # a TTL deletion
        (
            "INSERT",
            None,
            {"pk": {"S": "RUN#r1"}, "item_type": {"S": "RESULT"}, "status": {"S": "FAILED"}},
        ),
        ("INSERT", None, {"pk": {"S": "NOTIFIED#x"}, "item_type": {"S": "NOTIFICATION"}}),
        ("MODIFY", run_image("RUNNING"), run_image("RUNNING", requested=5)),
    ],
)
def test_records_that_are_no_notification_deliver_nothing(
    event_name: str, old: dict[str, Any] | None, new: dict[str, Any] | None
) -> None:
    recorder = RecordingNotifier()
    assert stream_notifier(recorder).batch(END).publish(stream_record(event_name, old, new)) == 0
    assert recorder.delivered == []


def test_a_bad_setting_fails_the_cold_start_with_one_line_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ConfigError):
        load_settings(NotifySettings, {"RESULTS_TABLE": "t"})
    [line] = caplog.records
    assert line.levelname == "ERROR"
    assert "TOPIC_ARN" in line.message
    assert "\n" not in line.message


def key_image(n: int, version: str, state: str = "ENABLED") -> dict[str, Any]:
    return {
        "pk": {"S": f"KEY#k{n}"},
        "sk": {"S": "LATEST"},
        "item_type": {"S": "KEY"},
        "key_id": {"S": f"k{n}"},
        "current_key_version": {"S": version},
        "lifecycle_state": {"S": state},
        "updated_at": {"S": "2026-11-28T06:00:00.000Z"},
    }


def rotation(n: int) -> DynamoDBRecord:
    return stream_record("MODIFY", key_image(n, "v1"), key_image(n, "v2"))


@dataclass
class World:
    """A stream notifier over the real Notifier and WebhookMirror, with fakes below them,
    that notes SNS publishes and webhook posts in one journal, in order."""

    ledger: FakeLedger = field(default_factory=FakeLedger)
    journal: list[str] = field(default_factory=list)
    refused: frozenset[str] = frozenset()
    webhook_delay: float = 0.0
    counted: Counted = field(default_factory=Counted)

    def __post_init__(self) -> None:
        sns = FakeSns(refused=self.refused, journal=self.journal)
        self.chat = ClockedSession(delay=self.webhook_delay, journal=self.journal)
        mirror = WebhookMirror(clocked_webhook(self.chat), count=self.counted)
        self.notifier = StreamNotifier(Notifier(self.ledger, sns, "topic"), failed_keys, mirror)


def test_the_whole_batch_goes_to_sns_before_any_webhook_post() -> None:
    # Given a batch of three key rotations
    world = World()
    batch = world.notifier.batch(within(world.chat))

    # When each record is handled, then the batch is mirrored
    for n in range(3):
        batch.publish(rotation(n))
    batch.mirror()

    # Then all three reached SNS before the webhook was asked for anything, and it took them
    assert [entry.split()[0] for entry in world.journal] == ["sns"] * 3 + ["webhook"] * 3
    assert len(world.chat.taken) == 3
    assert world.counted.values == {}


def test_only_what_this_batch_published_is_mirrored() -> None:
    # Given the first rotation was published by an earlier delivery of the batch
    world = World(ledger=FakeLedger({"KEY_ROTATED#k0#v2": "SENT"}))
    batch = world.notifier.batch(within(world.chat))

    for n in range(2):
        batch.publish(rotation(n))
    batch.mirror()

    assert [p["json"]["text"] for p in world.chat.posts] == ["OCI key k1 rotated: version v1 -> v2"]


def test_a_record_failing_sns_is_raised_and_what_it_published_before_is_still_mirrored() -> None:
    # Given a key that rotated and was disabled in one update, and SNS refusing the state change
    world = World(refused=frozenset({"KEY_STATE_CHANGED"}))
    batch = world.notifier.batch(within(world.chat))
    record = stream_record("MODIFY", key_image(0, "v1"), key_image(0, "v2", "DISABLED"))

    # When the record is handled, Then it fails (the stream retries it)
    with pytest.raises(RuntimeError, match="SNS is down"):
        batch.publish(record)

    # And the rotation SNS did take reaches the chat too
    batch.mirror()
    assert [p["json"]["event_type"] for p in world.chat.posts] == ["KEY_ROTATED"]
    assert world.chat.taken == ["OCI key k0 rotated: version v1 -> v2"]


def test_the_webhook_gets_the_time_left_when_mirroring_starts_less_the_margin() -> None:
    # Given a webhook that never answers, and 5 s left once SNS is done
    world = World(webhook_delay=HANGS)
    batch = world.notifier.batch(within(world.chat, 60.0))
    for n in range(3):
        batch.publish(rotation(n))
    world.chat.runtime.sleep(55.0)

    # When the batch is mirrored, Then nothing is raised (no record fails), the webhook is
    # waited on once for what was left, and the other two are skipped
    batch.mirror()
    assert world.chat.timeouts == [5.0 - SAFETY_MARGIN]
    assert world.counted.values == {"WebhookFailures": 1, "WebhookSkipped": 2}


def test_a_batch_without_a_webhook_mirrors_nothing() -> None:
    recorder = RecordingNotifier()
    batch = stream_notifier(recorder).batch(END)
    batch.publish(rotation(0))
    batch.mirror()  # with nowhere to post, nothing is done and nothing raised
    assert len(recorder.delivered) == 1


@dataclass
class PagingTable:
    """A DynamoDB client whose Query returns one failed result per page."""

    failed: int
    queries: list[dict[str, Any]] = field(default_factory=list)

    def get_paginator(self, operation: str) -> PagingTable:
        assert operation == "query"
        return self

    def paginate(self, **request: Any) -> Iterator[dict[str, Any]]:
        self.queries.append(request)
        for n in range(self.failed):
            yield {"Items": [{"key_id": {"S": f"k{n}"}, "display_name": {"S": f"K{n}"}}]}


def test_the_run_digest_reads_every_page_and_keeps_the_first_50() -> None:
    table = PagingTable(failed=70)
    digest = RunDigest(TableReader(table, "results")).failed_keys("r1")
    assert (digest.count, len(digest.keys)) == (70, 50)
    assert digest.keys[49] == {"key_id": "k49", "display_name": "K49"}
    [query] = table.queries
    assert query["ExpressionAttributeValues"][":pk"] == {"S": "RUN#r1"}
    assert query["ExpressionAttributeValues"][":status"] == {"S": "FAILED"}
