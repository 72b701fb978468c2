"""The results store against moto's DynamoDB: forward-only KEY items, terminal results never
replaced, chunks counted once, exactly-once completion."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest

from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, Status, Trigger
from cckm_refresh.table.items import ChunkTally, KeyEntry, TenancyPace
from cckm_refresh.table.store import ResultStore

pytestmark = pytest.mark.integration
KEY = "90671f17-28ff-4f93-86dc-ff08983469e7"
RUN = RunInfo(run_id="r1", trigger=Trigger.CLI)


@pytest.fixture
def store(aws_stack: Any) -> ResultStore:
    return ResultStore(boto3.client("dynamodb"), aws_stack.table_name, retention_days=90)


def refreshed(version: str, at: str, state: str = "ENABLED") -> RefreshOutcome:
    key = KeyInfo(
        KEY,
        tenancy="acme",
        display_name="payments",
        lifecycle_state=state,
        current_key_version=version,
        refreshed_at=at,
    )
    return RefreshOutcome(key, Status.REFRESHED, attempts=1, http_status=200, recorded_at=at)


def latest(aws_stack: Any) -> dict[str, Any]:
    return dict(aws_stack.table.get_item(Key={"pk": f"KEY#{KEY}", "sk": "LATEST"})["Item"])


def run(name: str) -> RunInfo:
    return RunInfo(run_id=name, trigger=Trigger.CLI)


def result(aws_stack: Any, run_id: str, key_id: str = KEY) -> dict[str, Any]:
    return dict(
        aws_stack.table.get_item(Key={"pk": f"RUN#{run_id}", "sk": f"KEY#{key_id}"})["Item"]
    )


def run_item(aws_stack: Any, run_id: str) -> dict[str, Any]:
    return dict(aws_stack.table.get_item(Key={"pk": f"RUN#{run_id}", "sk": "RUN"})["Item"])


def test_a_result_older_than_the_key_item_does_not_move_it_backwards(
    store: ResultStore, aws_stack: Any
) -> None:
    store.record(RUN, refreshed("v2", "2026-11-28T06:00:05.000Z"), None)

    late = store.record(run("r0"), refreshed("v1", "2026-11-28T06:00:01.000Z", "DISABLED"), None)

    item = latest(aws_stack)
    assert (item["current_key_version"], item["lifecycle_state"]) == ("v2", "ENABLED")
    assert item["last_run_id"] == "r1"
    assert late is not None
    assert late.version_changed is False


def test_a_new_version_is_a_rotation_and_hands_back_the_previous_one(store: ResultStore) -> None:
    store.record(run("r0"), refreshed("v1", "2026-11-28T06:00:01.000Z"), None)

    recorded = store.record(RUN, refreshed("v2", "2026-11-28T06:00:02.000Z"), None)

    assert recorded is not None
    assert (recorded.version_changed, recorded.previous_key_version) == (True, "v1")


def test_the_first_sight_of_a_key_is_not_a_rotation(store: ResultStore) -> None:
    recorded = store.record(RUN, refreshed("v1", "2026-11-28T06:00:01.000Z"), None)
    assert recorded is not None
    assert (recorded.version_changed, recorded.previous_key_version) == (False, None)


def test_a_rotation_is_judged_against_the_version_before_the_run_even_when_resumed(
    store: ResultStore,
) -> None:
    # Given a run that saw v1 before touching the key, and a delivery killed after the key's
    # LATEST item moved to v2 but before its result was written
    before = KeyInfo(key_id=KEY, current_key_version="v1")
    store.record(run("killed"), refreshed("v2", "2026-11-28T06:00:01.000Z"), None)

    # When the redelivery refreshes the key again and records it
    recorded = store.record(RUN, refreshed("v2", "2026-11-28T06:00:02.000Z"), before)

    # Then the rotation is still recorded, against the version before the run
    assert recorded is not None
    assert (recorded.version_changed, recorded.previous_key_version) == (True, "v1")


def test_failures_count_up_and_a_success_resets_them(store: ResultStore, aws_stack: Any) -> None:
    failed = RefreshOutcome(
        KeyInfo(KEY),
        status=Status.FAILED,
        error_code="HTTP_403",
        recorded_at="2026-11-28T06:00:01Z",
    )
    store.record(run("a"), failed, None)
    store.record(run("b"), failed, None)
    assert latest(aws_stack)["consecutive_failures"] == 2

    store.record(run("c"), refreshed("v1", "2026-11-28T06:00:09.000Z"), None)
    assert latest(aws_stack)["consecutive_failures"] == 0


def test_a_terminal_result_is_never_replaced(store: ResultStore, aws_stack: Any) -> None:
    # Given a key refreshed in the run
    assert store.record(RUN, refreshed("v1", "2026-11-28T06:00:01.000Z"), None) is not None

    # When a stale delivery brings a PENDING or a second terminal outcome
    pending = RefreshOutcome(KeyInfo(KEY), status=Status.PENDING, error_code="TIMEOUT")
    failed = RefreshOutcome(KeyInfo(KEY), status=Status.FAILED, error_code="HTTP_403")

    # Then neither is written
    assert store.record(RUN, pending, None) is None
    assert store.record(RUN, failed, None) is None
    assert result(aws_stack, "r1")["status"] == "REFRESHED"


def test_a_pending_result_turns_terminal(store: ResultStore, aws_stack: Any) -> None:
    pending = RefreshOutcome(KeyInfo(KEY), status=Status.PENDING, error_code="TIMEOUT")
    assert store.record(RUN, pending, None) is not None
    assert store.record(RUN, refreshed("v1", "2026-11-28T06:00:01.000Z"), None) is not None
    assert result(aws_stack, "r1")["status"] == "REFRESHED"


def test_a_chunk_registers_once_and_a_key_joins_a_run_once(
    store: ResultStore, aws_stack: Any
) -> None:
    store.start_run(RUN)
    entries = [KeyEntry("k1", KeyInfo("k1", tenancy="t", current_key_version="v1")), KeyEntry("k2")]

    first = store.register_chunk(RUN, "c" * 32, "t", entries)
    again = store.register_chunk(RUN, "c" * 32, "t", entries)  # a retried fan-out
    other = store.register_chunk(RUN, "d" * 32, "t", [KeyEntry("k2"), KeyEntry("k3")])

    assert [e.key_id for e in first] == ["k1", "k2"]
    assert [e.key_id for e in again] == ["k1", "k2"]
    assert [e.key_id for e in other] == ["k3"]  # k2 is already the first chunk's
    item = run_item(aws_stack, "r1")
    assert (item["requested"], item["open_chunks"]) == (3, 2)
    pending = result(aws_stack, "r1", "k1")
    assert (pending["status"], pending["tenancy"], pending["previous_key_version"]) == (
        "PENDING",
        "t",
        "v1",
    )


def test_a_run_completes_exactly_once_when_its_last_chunk_closes(
    store: ResultStore, aws_stack: Any
) -> None:
    # Given a run (started twice) of two chunks, three keys, whose resolution has finished
    started = (store.start_run(RUN), store.start_run(RUN))
    store.register_chunk(RUN, "a" * 32, "t", [KeyEntry("k1"), KeyEntry("k2")])
    store.register_chunk(RUN, "b" * 32, "t", [KeyEntry("k3")])
    store.finish_resolution("r1", "start")
    before_any_chunk = store.complete_if_done("r1")

    # When chunk a closes, then again (a late duplicate), then chunk b
    closed = [store.finish_chunk("r1", "a" * 32, ChunkTally(refreshed=1, not_found=1, rotated=1))]
    closed.append(store.finish_chunk("r1", "a" * 32, ChunkTally(refreshed=2)))
    after_a = store.complete_if_done("r1")
    closed.append(store.finish_chunk("r1", "b" * 32, ChunkTally(failed=1)))
    counts = store.complete_if_done("r1")

    # Then the run completes once, when its last chunk closes, each chunk counted once
    assert counts is not None
    assert {
        "started": started,
        "completed before any chunk closed": before_any_chunk,
        "chunks closed a, a, b": closed,
        "completed after a": after_a,
        "requested, refreshed, not found, failed, rotated": (
            counts.requested,
            counts.refreshed,
            counts.not_found,
            counts.failed,
            counts.rotated,
        ),
        "completed again": store.complete_if_done("r1"),
        "status": run_item(aws_stack, "r1")["status"],
    } == {
        "started": (True, False),
        "completed before any chunk closed": None,
        "chunks closed a, a, b": [True, False, True],
        "completed after a": None,
        "requested, refreshed, not found, failed, rotated": (3, 1, 1, 1, 1),
        "completed again": None,
        "status": "COMPLETED",
    }


def test_a_tenancy_s_pace_is_handed_on_with_a_chunk_s_close_and_read_with_its_keys(
    store: ResultStore, aws_stack: Any
) -> None:
    # Given a chunk of tenancy t
    store.start_run(RUN)
    store.register_chunk(RUN, "a" * 32, "t", [KeyEntry("k1"), KeyEntry("k2")])
    nothing_yet = store.results_and_pace("r1", ["k1", "k2"], "t")[1]

    # When it closes handing on t's pace, then a late duplicate closes it again with another
    closed = store.finish_chunk("r1", "a" * 32, ChunkTally(refreshed=2), TenancyPace("t", 1_000))
    again = store.finish_chunk("r1", "a" * 32, ChunkTally(refreshed=2), TenancyPace("t", 2_000))
    after_close = store.results_and_pace("r1", ["k1", "k2"], "t")
    store.record_pace(TenancyPace("t", 3_000))  # an invocation that closed nothing

    # Then the next chunk's read of its keys brings the pace along (one read), and the pace
    # item expires (TTL) a day after it was written
    results, pace = store.results_and_pace("r1", ["k1", "k2"], "t")
    item = aws_stack.table.get_item(Key={"pk": "TENANCY#t", "sk": "PACE"})["Item"]
    assert {
        "pace before any close": nothing_yet,
        "closed, closed again": (closed, again),
        "pace after the close": after_close[1],
        "pace now": pace,
        "result keys": sorted(results),
        "pace without a tenancy": store.results_and_pace("r1", ["k1"], None)[1],
        "item type, days kept": (
            item["item_type"],
            round((int(item["expires_at"]) - time.time()) / 86400),
        ),
    } == {
        "pace before any close": None,
        "closed, closed again": (True, False),
        "pace after the close": TenancyPace("t", 1_000),
        "pace now": TenancyPace("t", 3_000),
        "result keys": ["k1", "k2"],
        "pace without a tenancy": None,
        "item type, days kept": ("PACE", 1),
    }


def test_a_run_still_resolving_does_not_complete(store: ResultStore) -> None:
    store.start_run(RUN)
    store.register_chunk(RUN, "a" * 32, "t", [KeyEntry("k1")])
    assert store.finish_chunk("r1", "a" * 32, ChunkTally(refreshed=1))
    assert store.complete_if_done("r1") is None  # more chunks may come
    store.finish_resolution("r1", "start")
    assert store.complete_if_done("r1") is not None


def test_nothing_joins_a_completed_run(store: ResultStore, aws_stack: Any) -> None:
    store.start_run(RUN)
    store.finish_resolution("r1", "start")
    assert store.complete_if_done("r1") is not None

    assert store.register_chunk(RUN, "a" * 32, "t", [KeyEntry("k1")]) == ()
    missing = RefreshOutcome(KeyInfo("ocid1.key.oc1.iad.x"), status=Status.NOT_FOUND)
    assert store.record_found_nothing(RUN, [missing]) == 0
    assert run_item(aws_stack, "r1")["requested"] == 0


def test_keys_found_missing_are_counted_once(store: ResultStore, aws_stack: Any) -> None:
    store.start_run(RUN)
    missing = RefreshOutcome(KeyInfo("ocid1.key.oc1.iad.x"), status=Status.NOT_FOUND)
    assert store.record_found_nothing(RUN, [missing]) == 1
    assert store.record_found_nothing(RUN, [missing]) == 0  # a redelivery
    item = run_item(aws_stack, "r1")
    assert (item["requested"], item["not_found"]) == (1, 1)


def test_a_rejected_request_is_recorded_once(store: ResultStore, aws_stack: Any) -> None:
    assert store.record_rejected("m1", "keys: must be a list", "x" * 5000) is True
    assert store.record_rejected("m1", "keys: must be a list", "x" * 5000) is False
    item = aws_stack.table.get_item(Key={"pk": "REJECTED#m1", "sk": "REQUEST"})["Item"]
    assert len(item["body"]) == 4000


def test_only_the_segment_that_owns_the_resolution_hands_it_on_or_finishes_it(
    store: ResultStore, aws_stack: Any
) -> None:
    # Given a run whose first segment handed the listing on to a continuation at page 2
    store.start_run(RUN)
    assert store.hand_on_resolution("r1", "start", "at:page-2") is True

    # When a duplicate of the first delivery ends its own listing, or tries to hand on
    assert store.finish_resolution("r1", "start") is False
    assert store.hand_on_resolution("r1", "start", "at:page-3") is False

    # Then the resolution is still the continuation's, which alone finishes it
    assert run_item(aws_stack, "r1")["resolving"] == "at:page-2"
    assert store.finish_resolution("r1", "at:page-2") is True
    assert "resolving" not in run_item(aws_stack, "r1")


def test_the_key_item_says_changed_only_when_a_refresh_changed_its_version_or_state(
    store: ResultStore, aws_stack: Any
) -> None:
    # Given a key refreshed once (new to the table), then again unchanged
    store.record(run("a"), refreshed("v1", "2026-11-28T06:00:01.000Z"), None)
    first = latest(aws_stack)
    store.record(run("b"), refreshed("v1", "2026-11-28T06:00:02.000Z"), None)
    unchanged = latest(aws_stack)

    # When OCI rotated it, then disabled it, then nothing changed again
    store.record(run("c"), refreshed("v2", "2026-11-28T06:00:03.000Z"), None)
    rotated = latest(aws_stack)
    store.record(run("d"), refreshed("v2", "2026-11-28T06:00:04.000Z", "DISABLED"), None)
    disabled = latest(aws_stack)
    store.record(run("e"), refreshed("v2", "2026-11-28T06:00:05.000Z", "DISABLED"), None)

    # Then only the items a change wrote carry changed (what the notify function's stream
    # filter passes); every refresh still moved the item forward
    assert [item.get("changed") for item in (first, unchanged, rotated, disabled)] == [
        None,
        None,
        True,
        True,
    ]
    final = latest(aws_stack)
    assert ("changed" not in final, final["last_run_id"]) == (True, "e")
    assert (rotated["current_key_version"], disabled["lifecycle_state"]) == ("v2", "DISABLED")
