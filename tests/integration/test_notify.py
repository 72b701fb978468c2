"""The notify function over moto's real stream after real refresh runs, SNS captured via SQS."""

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


@pytest.fixture
def world(aws_stack: Any, ctm_emulator: Any, no_ca_env: None) -> RefreshWorld:
    aws_stack.put_secret(
        {
            "username": ctm_emulator.username,
            "password": ctm_emulator.password,
            "ca_bundle": ctm_emulator.ca_pem,
        }
    )
    return RefreshWorld(aws_stack, ctm_emulator)


def notify_handler(world: RefreshWorld, **env: str) -> ModuleType:
    return load_handler("notify", world.stack.notify_env(**env))


def notify(handler: ModuleType, event: dict[str, Any]) -> Any:
    return handler.handler(event, FakeLambdaContext("notify"))


def by_type(messages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for message in messages:
        grouped.setdefault(message["Message"]["event_type"], []).append(message)
    return grouped


def test_a_real_run_notifies_completion_rotations_and_state_changes(world: RefreshWorld) -> None:
    # Given a first run that sets every key's LATEST state
    keys = [k["id"] for k in world.ctm.keys]
    world.invoke(world.rule_event({"selector": {"all": True}, "request_id": "baseline"}))
    world.stack.stream_event()  # the baseline's records are not what this test is about
    capture = world.stack.capture_notifications()
    handler = notify_handler(world)

    # When OCI rotated one key, disabled another, a third fails, and a run refreshes them
    rotated_version = world.ctm.rotate(keys[0])
    world.ctm.set_oci_state(keys[1], "DISABLED")
    world.ctm.faults.fail_keys[keys[2]] = 403
    world.invoke(world.rule_event({"selector": {"all": True}, "request_id": "nightly"}))
    response = notify(handler, world.stack.stream_event())

    # Then people hear of the completed run, the rotation and the state change, once each
    assert response == {"batchItemFailures": []}
    grouped = by_type(capture.messages())
    assert sorted(grouped) == ["KEY_ROTATED", "KEY_STATE_CHANGED", "RUN_COMPLETED"]
    assert all(len(v) == 1 for v in grouped.values())

    [run] = grouped["RUN_COMPLETED"]
    assert run["MessageAttributes"]["event_type"]["Value"] == "RUN_COMPLETED"
    assert run["MessageAttributes"]["severity"]["Value"] == "ERROR"
    assert len(run["Subject"]) < 100
    assert run["Subject"].startswith("[ERROR] CCKM refresh run nightly")
    body = run["Message"]
    assert body["summary"] == "Run nightly: 29 of 30 OCI keys refreshed, 1 failed, 1 rotated"
    assert (body["run_id"], body["trigger"], body["requested"]) == ("nightly", "event", 30)
    assert (body["refreshed"], body["failed"], body["rotated"]) == (29, 1, 1)
    assert body["failed_count"] == 1
    [failed] = body["failed_keys"]
    assert failed["key_id"] == keys[2]
    assert failed["error_code"]
    assert failed["display_name"]

    [rotation] = grouped["KEY_ROTATED"]
    assert rotation["MessageAttributes"]["severity"]["Value"] == "INFO"
    assert rotation["Message"]["key_id"] == keys[0]
    assert rotation["Message"]["current_key_version"] == rotated_version
    assert rotation["Message"]["last_run_id"] == "nightly"

    [change] = grouped["KEY_STATE_CHANGED"]
    assert change["MessageAttributes"]["severity"]["Value"] == "ERROR"
    assert change["Message"]["key_id"] == keys[1]
    assert (change["Message"]["previous_state"], change["Message"]["lifecycle_state"]) == (
        "ENABLED",
        "DISABLED",
    )


def test_a_replayed_stream_batch_publishes_nothing_new(world: RefreshWorld) -> None:
    capture = world.stack.capture_notifications()
    handler = notify_handler(world)
    world.invoke(world.rule_event({"keys": [world.ctm.keys[0]["id"]], "request_id": "once"}))
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
    world.invoke(world.rule_event({"keys": [world.ctm.keys[0]["id"]], "request_id": "healthy"}))
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

        world.invoke(world.rule_event({"keys": [world.ctm.keys[0]["id"]], "request_id": "w1"}))
        notify(handler, world.stack.stream_event())
        assert [m["text"].splitlines()[-1] for m in sink.received] == [
            "Run w1: 1 of 1 OCI keys refreshed"
        ]

        sink.script = [500] * 10  # the chat service is down
        world.invoke(world.rule_event({"keys": [world.ctm.keys[1]["id"]], "request_id": "w2"}))
        response = notify(handler, world.stack.stream_event())

    assert response == {"batchItemFailures": []}
    assert [m["Message"]["run_id"] for m in capture.messages()] == ["w1", "w2"]
    assert len(sink.received) == 1
    output = capsys.readouterr()
    logs = output.out + output.err + caplog.text
    assert "XXXXSECRETXXXX" not in logs
    assert "webhook mirror failed" in caplog.text
    assert re.search(r'"WebhookFailures":\[1(\.0)?\]', output.out)
