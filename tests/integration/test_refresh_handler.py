"""The refresh function end to end: real handler, moto server, CTM emulator over HTTPS."""

from __future__ import annotations

import json
import re

import pytest
from boto3.dynamodb.conditions import Key

from tests.integration.refresh_world import RefreshWorld

pytestmark = pytest.mark.integration
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


def key_ids(world: RefreshWorld, count: int | None = None) -> list[str]:
    ids = [key["id"] for key in world.ctm.keys]
    return ids[:count] if count else ids


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
    run = world.run_item(run_id)
    assert run["item_type"] == "RUN"
    assert run["status"] == "COMPLETED"
    assert run["trigger"] == "schedule"
    assert run["reason"] == "nightly"
    assert run["dry_run"] is False
    assert run["requested"] == 30
    assert (run["refreshed"], run["not_found"], run["failed"], run["skipped"]) == (30, 0, 0, 0)
    assert run["rotated"] == 2
    assert ISO_Z.fullmatch(run["started_at"])
    assert ISO_Z.fullmatch(run["finished_at"])
    assert int(run["expires_at"]) > 0
    results = world.results(run_id)
    assert len(results) == 30
    assert {k for k, r in results.items() if r["version_changed"]} == set(rotated)


def test_every_result_and_key_attribute_of_the_contract_is_written(world: RefreshWorld) -> None:
    key = world.ctm.keys[0]
    world.run(world.rule_event({"keys": [key["id"]], "request_id": "first"}))
    world.ctm.rotate(key["id"])
    world.run(world.rule_event({"keys": [key["id"]], "request_id": "second"}))

    result = world.results("second")[key["id"]]
    refreshed = world.ctm.key(key["id"])
    assert result["item_type"] == "RESULT"
    assert result["pk"] == "RUN#second"
    assert result["sk"] == f"KEY#{key['id']}"
    assert result["run_id"] == "second"
    assert result["key_id"] == key["id"]
    assert result["oci_key_id"] == key["oci_params"]["key_id"]
    assert result["display_name"] == key["oci_params"]["display_name"]
    assert result["tenancy"] == key["tenancy"]
    assert result["region"] == key["region"]
    assert result["vault_name"] == key["oci_params"]["vault_name"]
    assert result["status"] == "REFRESHED"
    assert result["attempts"] == 1
    assert result["duration_ms"] >= 0
    assert result["http_status"] == 200
    assert result["lifecycle_state"] == refreshed["oci_params"]["lifecycle_state"]
    assert result["current_key_version"] == refreshed["oci_params"]["current_key_version"]
    assert result["previous_key_version"] == key["oci_params"]["current_key_version"]
    assert result["version_changed"] is True
    assert result["refreshed_at"] == refreshed["refreshed_at"]
    assert ISO_Z.fullmatch(result["recorded_at"])
    assert result["gsi1pk"] == f"KEY#{key['id']}"
    assert result["gsi1sk"] == result["recorded_at"]
    assert int(result["expires_at"]) > 0
    assert "error_code" not in result

    latest = world.latest(key["id"])
    assert latest is not None
    assert latest["item_type"] == "KEY"
    assert latest["key_id"] == key["id"]
    assert latest["oci_key_id"] == key["oci_params"]["key_id"]
    assert latest["display_name"] == key["oci_params"]["display_name"]
    assert latest["tenancy"] == key["tenancy"]
    assert latest["region"] == key["region"]
    assert latest["vault_name"] == key["oci_params"]["vault_name"]
    assert latest["lifecycle_state"] == "ENABLED"
    assert latest["current_key_version"] == refreshed["oci_params"]["current_key_version"]
    assert latest["last_status"] == "REFRESHED"
    assert latest["last_run_id"] == "second"
    assert latest["last_refreshed_at"] == refreshed["refreshed_at"]
    assert latest["consecutive_failures"] == 0
    assert latest["updated_at"] == result["recorded_at"]
    assert "expires_at" not in latest


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
    assert results[ok]["status"] == "REFRESHED"
    assert results[gone]["status"] == "NOT_FOUND"
    assert results[gone]["http_status"] == 404
    assert results[gone]["error_code"] == "NCERRResourceNotFound"
    assert results[denied]["status"] == "FAILED"
    assert results[denied]["http_status"] == 403
    assert results[flaky]["status"] == "PENDING"
    assert results[flaky]["attempts"] == 3
    assert results[flaky]["http_status"] == 503
    assert world.run_item("outcomes")["status"] == "RUNNING"
    assert world.latest(denied)["consecutive_failures"] == 1  # type: ignore[index]


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
    assert rejected["item_type"] == "REJECTED"
    assert rejected["error"].startswith(f"{field}:")
    assert rejected["body"] == body
    assert ISO_Z.fullmatch(rejected["received_at"])
    assert int(rejected["expires_at"]) > 0
    copies = world.stack.receive_all(world.stack.dead_letter_queue_url)
    assert [m["Body"] for m in copies] == [body]
    assert copies[0]["MessageAttributes"]["error"]["StringValue"].startswith(f"{field}:")
    assert world.ctm.refresh_count() == 1


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
    chunked = [key for chunk in chunks for key in chunk["keys"]]
    assert sorted(chunked) == sorted(k for k in tenancy_of if k != gone)
    for chunk in chunks:
        assert 1 <= len(chunk["keys"]) <= 8
        assert {tenancy_of[key] for key in chunk["keys"]} == {chunk["tenancy"]}
        assert chunk["chunk_status"] == "DONE"
    delivered = [m for i in report.of("TenancyQueue") for m in i.message_ids]
    assert len(delivered) == len(chunks)
    run = world.run_item("schedule-2026-11-28T06:00:00Z")
    assert (run["status"], run["requested"], run["refreshed"]) == ("COMPLETED", 29, 29)
    assert world.ctm.refresh_count() == 29


def test_an_invocation_short_of_time_hands_its_remaining_keys_on(world: RefreshWorld) -> None:
    # Given a rate of 1 refresh per second per tenancy and 0.5 s before the deadline margin
    world.cold_start(TENANCY_QUEUE_URL="", TENANCY_RATE_LIMIT="1", CTM_TIMEOUT_SECONDS="1")
    margin = 2 * 1 + 5
    tenancies = {k["tenancy"] for k in world.ctm.keys}

    response = world.invoke(
        world.rule_event({"selector": {"all": True}, "request_id": "short"}),
        remaining=lambda: margin + 0.5,
    )

    # Then one key per tenancy starts, the rest goes to the work queue under the same run,
    # in the chunks (one per tenancy) the keys were registered in
    assert world.ctm.refresh_count() == len(tenancies)
    assert response["handed_off"] == 30 - len(tenancies)
    messages = world.stack.receive_all(world.stack.work_queue_url)
    handed = [k for m in messages for k in json.loads(m["Body"])["keys"]]
    assert sorted(handed) == sorted(k["id"] for k in world.ctm.keys)
    assert {json.loads(m["Body"])["run_id"] for m in messages} == {"short"}
    pending = [r for r in world.results("short").values() if r["status"] == "PENDING"]
    assert len(pending) == 30 - len(tenancies)
    world.stack.release_messages(world.stack.work_queue_url, messages)

    world.cold_start(TENANCY_RATE_LIMIT="50")
    world.drain_work_queue()
    assert world.run_item("short")["status"] == "COMPLETED"
    assert world.ctm.refresh_count() == 30


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
    # Given pages of 4 keys, and an invocation whose time runs short after two pages
    world.ctm.faults.max_page_size = 4

    def remaining() -> float:
        pages = sum(1 for entry in world.ctm.request_log if entry.operation == "list")
        return 300.0 if pages < 2 else 5.0

    event = world.rule_event({"selector": {"all": True}, "request_id": "long-listing"})
    first = world.invoke(event, remaining=remaining)

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
