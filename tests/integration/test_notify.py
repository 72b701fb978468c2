"""The notify function over moto's real stream after real refresh runs (each run drained
through both queues as Lambda would, `RefreshWorld.run`), SNS captured via SQS."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from devkit.lambda_runtime import FakeLambdaContext, load_handler
from devkit.webhook_sink import WebhookSink
from tests.integration.refresh_world import RefreshWorld

pytestmark = pytest.mark.integration
EVENTS = Path(__file__).resolve().parents[2] / "events"
V1 = "ocid1.keyversion.oc1.iad.vault1.firstversion.keypart"
V2 = "ocid1.keyversion.oc1.iad.vault1.secondvers.keypart"


def notify_handler(world: RefreshWorld, **env: str) -> ModuleType:
    return load_handler("notify", world.stack.notify_env(**env))


def notify(handler: ModuleType, event: dict[str, Any]) -> Any:
    return handler.handler(event, FakeLambdaContext("notify"))


def one_of_each(messages: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    """The one message of each event type in ``kinds``, in that order; no other was sent."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for message in messages:
        grouped.setdefault(message["Message"]["event_type"], []).append(message)
    assert {kind: len(sent) for kind, sent in grouped.items()} == dict.fromkeys(kinds, 1)
    return [grouped[kind][0] for kind in kinds]


def assert_published(message: dict[str, Any], severity: str, **fields: Any) -> None:
    """The message has the ``severity`` attribute, and its body each of ``fields``' values."""
    body = message["Message"]
    assert {"severity": message["MessageAttributes"]["severity"]["Value"]} | {
        name: body[name] for name in fields
    } == {"severity": severity, **fields}


def test_a_real_run_notifies_completion_rotations_and_state_changes(world: RefreshWorld) -> None:
    # Given a first run that sets every key's LATEST state
    keys = [k["id"] for k in world.ctm.keys]
    world.run(world.rule_event({"selector": {"all": True}, "request_id": "baseline"}))
    world.stack.stream_event()  # the baseline's records are not what this test is about
    capture = world.stack.capture_notifications()
    handler = notify_handler(world)

    # When OCI rotated one key, disabled another, a third fails, and a run refreshes them
    rotated_version = world.ctm.rotate(keys[0])
    world.ctm.set_oci_state(keys[1], "DISABLED")
    world.ctm.faults.fail_keys[keys[2]] = 403
    world.run(world.rule_event({"selector": {"all": True}, "request_id": "nightly"}))
    response = notify(handler, world.stack.stream_event())

    # Then people hear of the completed run, the rotation and the state change, once each
    assert response == {"batchItemFailures": []}
    run, rotation, change = one_of_each(
        capture.messages(), "RUN_COMPLETED", "KEY_ROTATED", "KEY_STATE_CHANGED"
    )
    summary = "Run nightly: 29 of 30 OCI keys refreshed, 1 failed, 1 rotated"
    counts = {"requested": 30, "refreshed": 29, "failed": 1, "rotated": 1, "failed_count": 1}
    assert_published(run, "ERROR", summary=summary, run_id="nightly", trigger="event", **counts)
    [failed] = run["Message"]["failed_keys"]
    assert {
        "event_type": run["MessageAttributes"]["event_type"]["Value"],
        "subject under 100 characters": len(run["Subject"]) < 100,
        "subject names the run": run["Subject"].startswith("[ERROR] CCKM refresh run nightly"),
        "failed key": failed["key_id"],
        "its error code given": bool(failed["error_code"]),
        "its name given": bool(failed["display_name"]),
    } == {
        "event_type": "RUN_COMPLETED",
        "subject under 100 characters": True,
        "subject names the run": True,
        "failed key": keys[2],
        "its error code given": True,
        "its name given": True,
    }
    assert_published(
        rotation, "INFO", key_id=keys[0], current_key_version=rotated_version, last_run_id="nightly"
    )
    assert_published(
        change, "ERROR", key_id=keys[1], previous_state="ENABLED", lifecycle_state="DISABLED"
    )


def test_a_replayed_stream_batch_publishes_nothing_new(world: RefreshWorld) -> None:
    capture = world.stack.capture_notifications()
    handler = notify_handler(world)
    world.run(world.rule_event({"keys": [world.ctm.keys[0]["id"]], "request_id": "once"}))
    event = world.stack.stream_event()
    notify(handler, event)
    first = capture.messages()

    assert notify(handler, event) == {"batchItemFailures": []}
    assert notify(notify_handler(world), event) == {"batchItemFailures": []}

    assert [m["Message"]["event_type"] for m in first] == ["RUN_COMPLETED"]
    assert capture.messages() == first


def test_a_rejected_message_notifies_people(world: RefreshWorld) -> None:
    capture = world.stack.capture_notifications()
    bad = world.sqs_record('{"keys": ["../../auth/tokens"]}')
    world.invoke(world.sqs_event(bad))

    notify(notify_handler(world), world.stack.stream_event())

    [message] = capture.messages()
    assert message["MessageAttributes"]["event_type"]["Value"] == "REQUEST_REJECTED"
    assert message["MessageAttributes"]["severity"]["Value"] == "ERROR"
    assert message["Message"]["source_id"] == bad["messageId"]
    assert message["Message"]["error"].startswith("keys[0]:")


def test_a_poison_record_fails_alone_and_the_others_are_delivered(world: RefreshWorld) -> None:
    capture = world.stack.capture_notifications()
    world.run(world.rule_event({"keys": [world.ctm.keys[0]["id"]], "request_id": "healthy"}))
    event = world.stack.stream_event()
    poison = json.loads(json.dumps(event["Records"][0]))
    poison["eventID"] = "poison"
    poison["dynamodb"]["NewImage"] = {
        "item_type": {"S": "RUN"},
        "status": {"S": "COMPLETED"},
        "failed": {"N": "not-a-number"},
    }
    poison["dynamodb"]["OldImage"] = {"item_type": {"S": "RUN"}, "status": {"S": "RUNNING"}}
    event["Records"].insert(0, poison)

    response = notify(notify_handler(world), event)

    assert response == {
        "batchItemFailures": [{"itemIdentifier": poison["dynamodb"]["SequenceNumber"]}]
    }
    assert [m["Message"]["run_id"] for m in capture.messages()] == ["healthy"]


def test_the_sample_stream_event_is_a_completed_run(world: RefreshWorld) -> None:
    capture = world.stack.capture_notifications()
    event = json.loads((EVENTS / "dynamodb-stream.json").read_text())

    assert notify(notify_handler(world), event) == {"batchItemFailures": []}

    [message] = capture.messages()
    assert message["Message"]["event_type"] == "RUN_COMPLETED"
    assert message["Message"]["summary"].startswith("Run schedule-2026-11-28T02:00:00Z: 27 of 30")


def test_the_webhook_mirrors_notifications_and_its_outage_blocks_nothing(
    world: RefreshWorld,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with WebhookSink() as sink:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", sink.ca_file)
        world.stack.client("secretsmanager").create_secret(
            Name=f"{world.stack.prefix}-webhook", SecretString=json.dumps({"url": sink.url})
        )
        handler = notify_handler(world, WEBHOOK_SECRET_ID=f"{world.stack.prefix}-webhook")
        capture = world.stack.capture_notifications()

        world.run(world.rule_event({"keys": [world.ctm.keys[0]["id"]], "request_id": "w1"}))
        notify(handler, world.stack.stream_event())
        assert [m["text"] for m in sink.received] == ["Run w1: 1 of 1 OCI keys refreshed"]

        sink.script = [500] * 10  # the chat service is down
        world.run(world.rule_event({"keys": [world.ctm.keys[1]["id"]], "request_id": "w2"}))
        response = notify(handler, world.stack.stream_event())

    assert response == {"batchItemFailures": []}
    assert [m["Message"]["run_id"] for m in capture.messages()] == ["w1", "w2"]
    assert len(sink.received) == 1
    output = capsys.readouterr()
    logs = output.out + output.err + caplog.text
    assert "XXXXSECRETXXXX" not in logs
    assert "webhook mirror failed" in caplog.text
    assert re.search(r'"WebhookFailures":\[1(\.0)?\]', output.out)


# --- contract-shaped items written straight into the table ----------------------------------


def notify_stack(stack: Any, **env: str) -> ModuleType:
    return load_handler("notify", stack.notify_env(**env))


def write_completed_run(stack: Any, run_id: str, failed: int) -> None:
    """A RUN item RUNNING, its results, then COMPLETED: what the refresh function writes."""
    run = {
        "pk": f"RUN#{run_id}",
        "sk": "RUN",
        "item_type": "RUN",
        "run_id": run_id,
        "trigger": "sqs",
        "request_id": "pipeline-0042",
        "reason": "OCI rotated these keys",
        "dry_run": False,
        "requested": 4,
        "status": "RUNNING",
        "started_at": "2026-11-28T06:00:00.100Z",
        "expires_at": 1803607219,
    }
    stack.table.put_item(Item=run)
    for n in range(4):
        stack.table.put_item(
            Item={
                "pk": f"RUN#{run_id}",
                "sk": f"KEY#k{n}",
                "item_type": "RESULT",
                "run_id": run_id,
                "key_id": f"k{n}",
                "display_name": f"payments-key-{n}",
                "status": "FAILED" if n < failed else "REFRESHED",
                "error_code": "NCERRBadRequest" if n < failed else "",
            }
        )
    stack.table.put_item(
        Item=run
        | {
            "status": "COMPLETED",
            "finished_at": "2026-11-28T06:00:09.900Z",
            "refreshed": 4 - failed,
            "not_found": 0,
            "failed": failed,
            "skipped": 0,
            "rotated": 1,
        }
    )


def test_a_completed_run_item_is_published_field_by_field(aws_stack: Any) -> None:
    # Given a run that completed with 2 of 4 keys failed, as its stream records
    write_completed_run(aws_stack, "sqs-0001", failed=2)
    event = aws_stack.stream_event()
    capture = aws_stack.capture_notifications()

    # When the notify function handles them
    response = notify(notify_stack(aws_stack), event)

    # Then exactly one RUN_COMPLETED message, with everything a reader needs
    assert response == {"batchItemFailures": []}
    [message] = capture.messages()
    assert message["Subject"] == "[ERROR] CCKM refresh run sqs-0001: 2 of 4 keys failed"
    assert message["MessageAttributes"] == {
        "event_type": {"Type": "String", "Value": "RUN_COMPLETED"},
        "severity": {"Type": "String", "Value": "ERROR"},
    }
    assert message["Message"] == {
        "event_type": "RUN_COMPLETED",
        "severity": "ERROR",
        "summary": "Run sqs-0001: 2 of 4 OCI keys refreshed, 2 failed, 1 rotated",
        "run_id": "sqs-0001",
        "trigger": "sqs",
        "request_id": "pipeline-0042",
        "reason": "OCI rotated these keys",
        "dry_run": False,
        "requested": 4,
        "refreshed": 2,
        "not_found": 0,
        "failed": 2,
        "skipped": 0,
        "rotated": 1,
        "started_at": "2026-11-28T06:00:00.100Z",
        "finished_at": "2026-11-28T06:00:09.900Z",
        "failed_keys": [
            {
                "key_id": "k0",
                "display_name": "payments-key-0",
                "error_code": "NCERRBadRequest",
            },
            {
                "key_id": "k1",
                "display_name": "payments-key-1",
                "error_code": "NCERRBadRequest",
            },
        ],
        "failed_count": 2,
        "failed_by_cause": [{"error_code": "NCERRBadRequest", "tenancy": "unknown", "count": 2}],
    }


# The LATEST item of one key, as the refresh function writes it (docs/reference.md 5).
KEY_K1_LATEST = {
    "pk": "KEY#k1",
    "sk": "LATEST",
    "item_type": "KEY",
    "key_id": "k1",
    "oci_key_id": "ocid1.key.oc1.iad.aaaa",
    "display_name": "payments-db-key",
    "tenancy": "acme-prod",
    "region": "us-ashburn-1",
    "vault_name": "payments-vault",
    "lifecycle_state": "ENABLED",
    "current_key_version": V1,
    "last_run_id": "r1",
    "updated_at": "2026-11-27T06:00:00.000Z",
}


def test_a_key_item_update_publishes_its_rotation_and_state_change(aws_stack: Any) -> None:
    # Given a KEY item whose version and state both moved in one update
    aws_stack.table.put_item(Item=KEY_K1_LATEST)
    aws_stack.table.put_item(
        Item=KEY_K1_LATEST
        | {
            "lifecycle_state": "PENDING_DELETION",
            "current_key_version": V2,
            "last_run_id": "r2",
            "updated_at": "2026-11-28T06:00:00.000Z",
        }
    )
    event = aws_stack.stream_event()
    capture = aws_stack.capture_notifications()

    # When the notify function handles the INSERT and the MODIFY
    assert notify(notify_stack(aws_stack), event) == {"batchItemFailures": []}

    # Then a rotation (INFO) and a state change (ERROR), nothing for the INSERT
    rotated, changed = capture.messages()
    where = "payments-db-key (payments-vault, us-ashburn-1)"
    the_key = {
        "key_id": "k1",
        "oci_key_id": "ocid1.key.oc1.iad.aaaa",
        "tenancy": "acme-prod",
        "region": "us-ashburn-1",
        "vault_name": "payments-vault",
        "last_run_id": "r2",
    }
    assert_published(
        rotated,
        "INFO",
        summary=f"OCI key {where} rotated: version ...firstversion -> ...secondvers",
        previous_key_version=V1,
        current_key_version=V2,
        **the_key,
    )
    assert_published(
        changed,
        "ERROR",
        summary=f"OCI key {where} changed state ENABLED -> PENDING_DELETION",
        **the_key,
    )


def test_the_ledgers_own_stream_records_notify_nobody(aws_stack: Any) -> None:
    # Given a notification was sent, so the ledger wrote its own items to the table
    write_completed_run(aws_stack, "sqs-0002", failed=0)
    handler = notify_stack(aws_stack)
    notify(handler, aws_stack.stream_event())
    capture = aws_stack.capture_notifications()

    # When the ledger's records come down the stream
    ledger_records = aws_stack.stream_event()
    kinds = {r["dynamodb"]["NewImage"]["item_type"]["S"] for r in ledger_records["Records"]}
    response = notify(handler, ledger_records)

    # Then nothing is published
    assert kinds == {"NOTIFICATION"}
    assert response == {"batchItemFailures": []}
    assert capture.messages() == []


def test_a_failed_publish_fails_the_record_and_its_retry_publishes_once(aws_stack: Any) -> None:
    # Given SNS refuses (the topic is missing) while a completed run comes down the stream
    write_completed_run(aws_stack, "sqs-0003", failed=0)
    event = aws_stack.stream_event()
    capture = aws_stack.capture_notifications()
    missing_topic = aws_stack.topic_arn + "-missing"
    completion = event["Records"][-1]["dynamodb"]["SequenceNumber"]

    # When the batch is handled, then retried by Lambda with SNS reachable
    first = notify(notify_stack(aws_stack, TOPIC_ARN=missing_topic), event)
    second = notify(notify_stack(aws_stack), event)

    # Then the first attempt reported the record, the retry published it exactly once
    assert first == {"batchItemFailures": [{"itemIdentifier": completion}]}
    assert second == {"batchItemFailures": []}
    assert [m["Message"]["run_id"] for m in capture.messages()] == ["sqs-0003"]


def test_a_rejected_request_item_is_published_with_an_excerpt(aws_stack: Any) -> None:
    aws_stack.table.put_item(
        Item={
            "pk": "REJECTED#sqs-9f1c",
            "sk": "REQUEST",
            "item_type": "REJECTED",
            "error": "keys[2]: not a CCKM id or OCI key OCID",
            "body": '{"keys": ["a", "b", "../x"]}' + " " * 3000,
            "received_at": "2026-11-28T06:00:00.000Z",
            "expires_at": 1803607219,
        }
    )
    capture = aws_stack.capture_notifications()

    notify(notify_stack(aws_stack), aws_stack.stream_event())

    [message] = capture.messages()
    assert message["Subject"] == (
        "[ERROR] CCKM refresh request rejected: keys[2]: not a CCKM id or OCI key OCID"
    )
    body = message["Message"]
    assert body["summary"] == "Rejected request sqs-9f1c: keys[2]: not a CCKM id or OCI key OCID"
    assert (body["source_id"], body["received_at"]) == ("sqs-9f1c", "2026-11-28T06:00:00.000Z")
    assert body["body"].startswith('{"keys": ["a", "b", "../x"]}')
    assert len(body["body"]) == 500


def test_the_webhook_retries_a_429_and_a_vanished_webhook_blocks_nothing(
    aws_stack: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    sink = WebhookSink().start()
    try:
        # The sink's CA, kept after it stops: the later failure must be the missing server.
        ca_file = tmp_path / "webhook-ca.pem"
        ca_file.write_bytes(Path(sink.ca_file).read_bytes())
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
        secret_id = f"{aws_stack.prefix}-webhook-429"
        aws_stack.client("secretsmanager").create_secret(
            Name=secret_id, SecretString=json.dumps({"url": sink.url})
        )
        handler = notify_stack(aws_stack, WEBHOOK_SECRET_ID=secret_id)
        capture = aws_stack.capture_notifications()

        # Given the chat service throttles once, When a run completes
        sink.script = [429]
        write_completed_run(aws_stack, "sqs-0004", failed=0)
        notify(handler, aws_stack.stream_event())

        # Then the retry delivered it
        assert [m["text"] for m in sink.received] == [
            "Run sqs-0004: 4 of 4 OCI keys refreshed, 1 rotated"
        ]
    finally:
        sink.stop()

    # Given the chat service is gone altogether, When another run completes
    write_completed_run(aws_stack, "sqs-0005", failed=1)
    response = notify(handler, aws_stack.stream_event())

    # Then SNS still got both, once each, and nothing logged names the webhook
    assert response == {"batchItemFailures": []}
    assert [m["Message"]["run_id"] for m in capture.messages()] == ["sqs-0004", "sqs-0005"]
    [failure] = [r for r in caplog.records if r.message == "webhook mirror failed"]
    assert "ConnectionError" in failure.reason  # type: ignore[attr-defined]
    assert "XXXXSECRETXXXX" not in repr([vars(r) for r in caplog.records])
