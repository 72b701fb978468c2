"""The refresh function end to end: real handler, moto server, CTM emulator over HTTPS."""

from __future__ import annotations

import json
from typing import Any

import pytest
from boto3.dynamodb.conditions import Key

from cckm_refresh.run.wiring import refresh_service
from cckm_refresh.runtime import SystemRuntime
from tests.integration.item_matchers import (
    ABSENT,
    FALSE,
    ISO_TIME,
    NOT_NEGATIVE,
    POSITIVE,
    TRUE,
    attributes,
    starting,
)
from tests.integration.refresh_world import RefreshWorld

pytestmark = pytest.mark.integration


def key_ids(world: RefreshWorld, count: int | None = None) -> list[str]:
    ids = [key["id"] for key in world.ctm.keys]
    return ids[:count] if count else ids


def description_of(key: dict[str, Any]) -> dict[str, Any]:
    """The attributes by which a RESULT and a KEY item describe ``key`` (as CTM lists it)."""
    params = key["oci_params"]
    return {
        "key_id": key["id"],
        "oci_key_id": params["key_id"],
        "display_name": params["display_name"],
        "tenancy": key["tenancy"],
        "region": key["region"],
        "vault_name": params["vault_name"],
    }


def test_a_scheduled_run_refreshes_every_selected_key_and_completes(world: RefreshWorld) -> None:
    # Given 30 keys in CCKM, two of which OCI has rotated
    rotated = key_ids(world, 2)
    first = world.run(world.schedule_event({"selector": {"all": True}}))
    assert first["status"] == "COMPLETED"
    for key_id in rotated:
        world.ctm.rotate(key_id)

    # When the next schedule fires
    response = world.run(
        world.schedule_event(
            {"selector": {"all": True}, "reason": "nightly"}, "2026-11-29T06:00:00Z"
        )
    )

    # Then every key is refreshed, the run completes with its counts, rotations are seen
    run_id = "schedule-2026-11-29T06:00:00Z"
    assert response["run_id"] == run_id
    expected_run = {
        "item_type": "RUN",
        "status": "COMPLETED",
        "trigger": "schedule",
        "reason": "nightly",
        "dry_run": FALSE,
        "requested": 30,
        "refreshed": 30,
        "not_found": 0,
        "failed": 0,
        "skipped": 0,
        "rotated": 2,
        "started_at": ISO_TIME,
        "finished_at": ISO_TIME,
        "expires_at": POSITIVE,
    }
    assert attributes(world.run_item(run_id), expected_run) == expected_run
    results = world.results(run_id)
    assert {
        "results": len(results),
        "versions changed": {k for k, r in results.items() if r["version_changed"]},
    } == {"results": 30, "versions changed": set(rotated)}


def test_every_result_and_key_attribute_of_the_contract_is_written(world: RefreshWorld) -> None:
    key = world.ctm.keys[0]
    world.run(world.rule_event({"keys": [key["id"]], "request_id": "first"}))
    world.ctm.rotate(key["id"])
    world.run(world.rule_event({"keys": [key["id"]], "request_id": "second"}))

    result = world.results("second")[key["id"]]
    refreshed = world.ctm.key(key["id"])
    params, now = key["oci_params"], refreshed["oci_params"]
    expected_result = description_of(key) | {
        "item_type": "RESULT",
        "pk": "RUN#second",
        "sk": f"KEY#{key['id']}",
        "run_id": "second",
        "status": "REFRESHED",
        "attempts": 1,
        "duration_ms": NOT_NEGATIVE,
        "http_status": 200,
        "lifecycle_state": now["lifecycle_state"],
        "current_key_version": now["current_key_version"],
        "previous_key_version": params["current_key_version"],
        "version_changed": TRUE,
        "refreshed_at": refreshed["refreshed_at"],
        "recorded_at": ISO_TIME,
        "gsi1pk": f"KEY#{key['id']}",
        "gsi1sk": result["recorded_at"],
        "expires_at": POSITIVE,
        "error_code": ABSENT,
    }
    assert attributes(result, expected_result) == expected_result

    latest = world.latest(key["id"])
    assert latest is not None
    expected_latest = description_of(key) | {
        "item_type": "KEY",
        "lifecycle_state": "ENABLED",
        "current_key_version": now["current_key_version"],
        "last_status": "REFRESHED",
        "last_run_id": "second",
        "last_refreshed_at": refreshed["refreshed_at"],
        "consecutive_failures": 0,
        "updated_at": result["recorded_at"],
        "expires_at": ABSENT,
    }
    assert attributes(latest, expected_latest) == expected_latest


def test_sqs_keys_by_ocid_resolve_and_an_unknown_ocid_is_not_found(world: RefreshWorld) -> None:
    world.cold_start(TENANCY_QUEUE_URL="")  # the work queue alone: refreshed in place
    key = world.ctm.keys[3]
    unknown = "ocid1.key.oc1.iad.doesnotexist"
    record = world.sqs_record({"keys": [key["oci_params"]["key_id"], unknown]})

    response = world.invoke(world.sqs_event(record))

    assert response == {"batchItemFailures": []}
    results = world.results(f"sqs-{record['messageId']}")
    assert results[key["id"]]["status"] == "REFRESHED"
    assert results[unknown]["status"] == "NOT_FOUND"
    assert results[unknown]["oci_key_id"] == unknown
    run = world.run_item(f"sqs-{record['messageId']}")
    assert run["trigger"] == "sqs"
    assert (run["status"], run["requested"], run["not_found"]) == ("COMPLETED", 2, 1)


def test_a_selector_pages_through_short_pages_to_the_end(world: RefreshWorld) -> None:
    world.ctm.faults.max_page_size = 4
    tenancy = world.ctm.keys[0]["tenancy"]
    expected = {k["id"] for k in world.ctm.keys if k["tenancy"] == tenancy}

    world.run(world.rule_event({"selector": {"tenancy": tenancy}, "request_id": "paged"}))

    assert set(world.results("paged")) == expected
    assert world.run_item("paged")["refreshed"] == len(expected)


def test_a_dry_run_records_skipped_keys_and_calls_no_refresh(world: RefreshWorld) -> None:
    world.run(world.rule_event({"selector": {"all": True}, "dry_run": True, "request_id": "dry"}))

    assert world.ctm.refresh_count() == 0
    results = world.results("dry")
    assert len(results) == 30
    assert {r["status"] for r in results.values()} == {"SKIPPED"}
    run = world.run_item("dry")
    assert (run["status"], run["skipped"], run["dry_run"]) == ("COMPLETED", 30, True)


def test_each_outcome_of_the_contract(world: RefreshWorld) -> None:
    world.cold_start(TENANCY_QUEUE_URL="")  # the work queue alone: refreshed in place
    ok, gone, denied, flaky = key_ids(world, 4)
    world.ctm.remove(gone)
    world.ctm.faults.fail_keys[denied] = 403
    world.ctm.faults.fail_keys[flaky] = 503
    record = world.sqs_record({"keys": [ok, gone, denied, flaky], "request_id": "outcomes"})

    response = world.invoke(world.sqs_event(record))

    assert response == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    results = world.results("outcomes")
    expected: dict[str, dict[str, Any]] = {
        "ok": {"status": "REFRESHED"},
        "gone": {"status": "NOT_FOUND", "http_status": 404, "error_code": "NCERRResourceNotFound"},
        "denied": {"status": "FAILED", "http_status": 403},
        "flaky": {"status": "PENDING", "attempts": 3, "http_status": 503},
    }
    keys = {"ok": ok, "gone": gone, "denied": denied, "flaky": flaky}
    assert {name: attributes(results[keys[name]], want) for name, want in expected.items()} == (
        expected
    )
    assert (
        world.run_item("outcomes")["status"],
        world.latest(denied)["consecutive_failures"],  # type: ignore[index]
    ) == ("RUNNING", 1)


def test_a_redelivered_message_finishes_pending_keys_without_refreshing_others(
    world: RefreshWorld,
) -> None:
    world.cold_start(TENANCY_QUEUE_URL="")  # the work queue alone: refreshed in place
    keys = key_ids(world, 6)
    world.ctm.faults.fail_keys.update({keys[0]: 503, keys[1]: 503})
    body = {"keys": keys, "request_id": "burst"}
    record = world.sqs_record(body)
    first = world.invoke(world.sqs_event(record))
    assert first["batchItemFailures"]
    assert world.results("burst")[keys[0]]["status"] == "PENDING"

    # When the burst is over and SQS delivers the same message again
    world.ctm.faults.fail_keys.clear()
    world.ctm.reset_log()
    again = world.sqs_record(body, receive_count=2, message_id=record["messageId"])
    second = world.invoke(world.sqs_event(again))

    # Then only the pending keys are refreshed, and the run completes once
    assert second == {"batchItemFailures": []}
    assert world.ctm.refresh_count() == 2
    assert {r["status"] for r in world.results("burst").values()} == {"REFRESHED"}
    assert world.run_item("burst")["status"] == "COMPLETED"


def test_the_last_delivery_turns_pending_into_failed_and_goes_to_the_dlq(
    world: RefreshWorld,
) -> None:
    world.cold_start(TENANCY_QUEUE_URL="")  # the work queue alone: refreshed in place
    key = key_ids(world, 1)[0]
    world.ctm.faults.fail_keys[key] = 503
    record = world.sqs_record({"keys": [key], "request_id": "last"}, receive_count=5)

    response = world.invoke(world.sqs_event(record))

    assert response == {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}
    result = world.results("last")[key]
    assert result["status"] == "FAILED"
    assert result["error_code"] == "HTTP_503" or result["error_code"].startswith("NCERR")
    run = world.run_item("last")
    assert (run["status"], run["failed"]) == ("COMPLETED", 1)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("{not json", "body"),
        (json.dumps({"keys": ["90671f17-28ff-4f93-86dc-ff08983469e7"], "colour": "red"}), "colour"),
        (json.dumps({"keys": ["../../auth/tokens"]}), "keys[0]"),
        (json.dumps({"selector": {}}), "selector"),
    ],
)
def test_a_bad_message_is_rejected_recorded_and_copied_while_others_succeed(
    world: RefreshWorld, body: str, field: str
) -> None:
    world.cold_start(TENANCY_QUEUE_URL="")  # the work queue alone: refreshed in place
    good = world.sqs_record({"keys": key_ids(world, 1), "request_id": "good"})
    bad = world.sqs_record(body)

    response = world.invoke(world.sqs_event(good, bad))

    assert response == {"batchItemFailures": []}
    assert world.run_item("good")["status"] == "COMPLETED"
    rejected = world.rejected(bad["messageId"])
    assert rejected is not None
    expected_rejected = {
        "item_type": "REJECTED",
        "error": starting(f"{field}:"),
        "body": body,
        "received_at": ISO_TIME,
        "expires_at": POSITIVE,
    }
    assert attributes(rejected, expected_rejected) == expected_rejected
    copies = world.stack.receive_all(world.stack.dead_letter_queue_url)
    assert [m["Body"] for m in copies] == [body]
    assert {
        "error of the copy": copies[0]["MessageAttributes"]["error"]["StringValue"],
        "refresh calls": world.ctm.refresh_count(),
    } == {"error of the copy": starting(f"{field}:"), "refresh calls": 1}


def test_a_large_run_fans_out_and_completes_once_with_the_right_counts(
    world: RefreshWorld,
) -> None:
    world.cold_start(FANOUT_CHUNK_SIZE="8")
    gone = key_ids(world, 1)[0]
    world.ctm.remove(gone)

    first = world.invoke(world.schedule_event({"selector": {"all": True}}))
    assert first["fanned_out"] == 29  # the removed key is no longer listed
    assert world.run_item("schedule-2026-11-28T06:00:00Z")["status"] == "RUNNING"
    report = world.drain()

    # Every key went in exactly one chunk of at most 8 keys, all of one tenancy, through the
    # tenancy queue, and every chunk closed
    chunks = world.stack.table.query(
        KeyConditionExpression=Key("pk").eq("RUN#schedule-2026-11-28T06:00:00Z")
        & Key("sk").begins_with("CHUNK#"),
        ConsistentRead=True,
    )["Items"]
    tenancy_of = {key["id"]: key["tenancy"] for key in world.ctm.keys}
    delivered = [m for i in report.of("TenancyQueue") for m in i.message_ids]
    run = world.run_item("schedule-2026-11-28T06:00:00Z")
    assert {
        "keys chunked": sorted(key for chunk in chunks for key in chunk["keys"]),
        "chunks not of 1 to 8 keys": [c["sk"] for c in chunks if not 1 <= len(c["keys"]) <= 8],
        "chunks not of their one tenancy": [
            c["sk"] for c in chunks if {tenancy_of[key] for key in c["keys"]} != {c["tenancy"]}
        ],
        "chunk statuses": {c["chunk_status"] for c in chunks},
        "tenancy queue deliveries": len(delivered),
        "run status, requested, refreshed": (run["status"], run["requested"], run["refreshed"]),
        "refresh calls": world.ctm.refresh_count(),
    } == {
        "keys chunked": sorted(k for k in tenancy_of if k != gone),
        "chunks not of 1 to 8 keys": [],
        "chunks not of their one tenancy": [],
        "chunk statuses": {"DONE"},
        "tenancy queue deliveries": len(chunks),
        "run status, requested, refreshed": ("COMPLETED", 29, 29),
        "refresh calls": 29,
    }


def test_an_invocation_short_of_time_hands_its_remaining_keys_on(world: RefreshWorld) -> None:
    # Given a rate of 1 refresh per second per tenancy, and an invocation whose clock, once
    # its keys are registered with the run, stands 0.5 s before the deadline margin until
    # each tenancy's first call has reached CTM, then goes on from past it (however long
    # listing and registering took, however slow the machine)
    world.cold_start(TENANCY_QUEUE_URL="", TENANCY_RATE_LIMIT="1", CTM_TIMEOUT_SECONDS="1")
    margin = 2 * 1 + 5
    tenancies = {k["tenancy"] for k in world.ctm.keys}
    shift: list[float] = []  # [the instant the clock stands at, then how far it moved on]
    stood_since: list[float] = []

    def keys_called() -> int:  # a call retried after a timeout is one key's still
        return sum(1 for key in world.ctm.keys if world.ctm.refresh_count(key["id"]))

    class ShortOnceListed(SystemRuntime):
        def monotonic(self) -> float:
            now = super().monotonic()
            if not shift:
                run = world.stack.table.get_item(Key={"pk": "RUN#short", "sk": "RUN"})
                if run.get("Item", {}).get("requested", 0) < 30:
                    return now
                shift.append(started + 60.0 - margin - 0.5)
                stood_since.append(now)
            if len(shift) == 1:
                # A tenancy's second slot is 1 s away: never reached (nor waited for ever,
                # should a first call never come: the assertion then says so).
                if keys_called() < len(tenancies) and now - stood_since[0] < 60:
                    return shift[0]
                shift.append(shift[0] + 1.0 - now)
            return now + shift[1]

    runtime = ShortOnceListed()
    function = world.handler.function
    service = refresh_service(function.settings, runtime=runtime)
    function.runtime, function.services = runtime, lambda: service

    started = runtime.monotonic()
    response = world.invoke(
        world.rule_event({"selector": {"all": True}, "request_id": "short"}),
        remaining=lambda: 60.0,
    )

    # Then one key per tenancy starts, the rest goes to the work queue under the same run,
    # in the chunks (one per tenancy) the keys were registered in
    messages = world.stack.receive_all(world.stack.work_queue_url)
    bodies = [json.loads(m["Body"]) for m in messages]
    statuses = [r["status"] for r in world.results("short").values()]
    assert {
        "keys called": keys_called(),
        "handed off": response["handed_off"],
        "keys in the messages": sorted(key for body in bodies for key in body["keys"]),
        "runs of the messages": {body["run_id"] for body in bodies},
        "results pending": statuses.count("PENDING"),
    } == {
        "keys called": len(tenancies),
        "handed off": 30 - len(tenancies),
        "keys in the messages": sorted(k["id"] for k in world.ctm.keys),
        "runs of the messages": {"short"},
        "results pending": 30 - len(tenancies),
    }
    world.stack.release_messages(world.stack.work_queue_url, messages)

    world.cold_start(TENANCY_RATE_LIMIT="50")
    world.drain_work_queue()
    run = world.run_item("short")
    assert (run["status"], run["refreshed"], keys_called()) == ("COMPLETED", 30, 30)


def test_a_retried_schedule_refreshes_nothing_twice(world: RefreshWorld) -> None:
    event = world.schedule_event({"selector": {"all": True}})
    world.run(event)
    world.ctm.reset_log()

    response = world.run(event)

    # Then nothing is refreshed again, and the replay answers with the run as it finished
    assert world.ctm.refresh_count() == 0
    assert (response["status"], response["refreshed"]) == ("COMPLETED", 30)
    assert world.run_item("schedule-2026-11-28T06:00:00Z")["refreshed"] == 30


def test_a_jwt_expiring_mid_run_is_renewed_and_nothing_fails(world: RefreshWorld) -> None:
    # Given JWTs that CTM stops accepting after 10 calls
    world.cold_start(REFRESH_CONCURRENCY="1")
    world.ctm.faults.expire_tokens_after_requests = 10

    response = world.run(world.rule_event({"selector": {"all": True}, "request_id": "jwt"}))

    # Then each 401 costs one re-authentication and one retry, and every key is refreshed
    unauthorized = [r for r in world.ctm.request_log if r.status == 401]
    assert len(unauthorized) >= 2
    assert world.ctm.tokens_issued == 1 + len(unauthorized)
    assert response["refreshed"] == 30
    assert {r["status"] for r in world.results("jwt").values()} == {"REFRESHED"}


def test_an_unknown_event_shape_fails_naming_what_was_expected(world: RefreshWorld) -> None:
    with pytest.raises(ValueError, match="EventBridge Scheduler envelope"):
        world.invoke({"hello": "world"})


def test_a_scheduled_run_requeues_pending_keys_instead_of_failing_them(
    world: RefreshWorld,
) -> None:
    # Given a queue that allows a single delivery, and a key CTM keeps failing with 503
    world.cold_start(TENANCY_QUEUE_URL="", MAX_RECEIVE_COUNT="1")
    flaky = world.ctm.keys[0]["id"]
    world.ctm.faults.fail_keys[flaky] = 503

    response = world.invoke(world.schedule_event({"keys": [flaky]}))

    # Then the schedule's pending key goes to the work queue, still PENDING
    assert response["handed_off"] == 1
    assert world.results("schedule-2026-11-28T06:00:00Z")[flaky]["status"] == "PENDING"
    [message] = world.stack.receive_all(world.stack.work_queue_url)
    body = json.loads(message["Body"])
    assert (body["keys"], body["run_id"]) == ([flaky], "schedule-2026-11-28T06:00:00Z")
    assert set(body) == {"keys", "run_id", "chunk"}


def test_a_selector_outlasting_its_invocation_hands_the_listing_on_and_completes(
    world: RefreshWorld,
) -> None:
    # Given pages of 4 keys, and an invocation whose time runs short after two pages (its
    # clock jumps 295 s ahead once CTM has answered two list calls)
    world.ctm.faults.max_page_size = 4

    class AfterTwoPages(SystemRuntime):
        def monotonic(self) -> float:
            pages = sum(1 for entry in world.ctm.request_log if entry.operation == "list")
            return super().monotonic() + (295.0 if pages >= 2 else 0.0)

    world.handler.function.runtime = AfterTwoPages()
    event = world.rule_event({"selector": {"all": True}, "request_id": "long-listing"})
    first = world.invoke(event, remaining=lambda: 300.0)

    # Then it queued what it listed and handed the rest of the listing on
    assert first["status"] == "RUNNING"
    assert first["handed_off"] == 1
    assert world.run_item("long-listing")["resolving"].startswith("at:")

    # And once the queues drain, every key was refreshed exactly once and the run completed
    world.drain()
    run = world.run_item("long-listing")
    assert (run["status"], run["requested"], run["refreshed"]) == ("COMPLETED", 30, 30)
    assert "resolving" not in run
    refreshed = [e.key_id for e in world.ctm.request_log if e.operation == "refresh"]
    assert sorted(refreshed) == sorted(key["id"] for key in world.ctm.keys)
