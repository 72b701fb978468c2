"""The results store against moto's DynamoDB: forward-only KEY items, exactly-once completion."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, Status, Trigger
from cckm_refresh.store import ResultStore

pytestmark = pytest.mark.integration
KEY = "90671f17-28ff-4f93-86dc-ff08983469e7"
RUN = RunInfo(run_id="r1", trigger=Trigger.CLI)


@pytest.fixture
def store(aws_stack: Any) -> ResultStore:
    return ResultStore(boto3.client("dynamodb"), aws_stack.table_name, retention_days=90)


def refreshed(version: str, at: str, state: str = "ENABLED") -> RefreshOutcome:
    return RefreshOutcome(
        key_id=KEY,
        status=Status.REFRESHED,
        attempts=1,
        http_status=200,
        tenancy="acme",
        display_name="payments",
        lifecycle_state=state,
        current_key_version=version,
        refreshed_at=at,
        recorded_at=at,
    )


def latest(aws_stack: Any) -> dict[str, Any]:
    return dict(aws_stack.table.get_item(Key={"pk": f"KEY#{KEY}", "sk": "LATEST"})["Item"])


def test_a_result_older_than_the_key_item_does_not_move_it_backwards(
    store: ResultStore, aws_stack: Any
) -> None:
    store.record(RUN, [refreshed("v2", "2026-11-28T06:00:05.000Z")], {})

    late = store.record(
        RunInfo(run_id="r0", trigger=Trigger.CLI),
        [refreshed("v1", "2026-11-28T06:00:01.000Z", state="DISABLED")],
        {},
    )

    item = latest(aws_stack)
    assert (item["current_key_version"], item["lifecycle_state"]) == ("v2", "ENABLED")
    assert item["last_run_id"] == "r1"
    assert late[0].version_changed is False


def test_a_new_version_is_a_rotation_and_hands_back_the_previous_one(store: ResultStore) -> None:
    store.record(RUN, [refreshed("v1", "2026-11-28T06:00:01.000Z")], {})

    [result] = store.record(RUN, [refreshed("v2", "2026-11-28T06:00:02.000Z")], {})

    assert result.version_changed is True
    assert result.previous_key_version == "v1"


def test_the_first_sight_of_a_key_is_not_a_rotation(store: ResultStore) -> None:
    [result] = store.record(RUN, [refreshed("v1", "2026-11-28T06:00:01.000Z")], {})
    assert result.version_changed is False
    assert result.previous_key_version is None


def test_failures_count_up_and_a_success_resets_them(store: ResultStore, aws_stack: Any) -> None:
    failed = RefreshOutcome(
        key_id=KEY, status=Status.FAILED, error_code="HTTP_403", recorded_at="2026-11-28T06:00:01Z"
    )
    store.record(RUN, [failed], {})
    store.record(RUN, [failed], {})
    assert latest(aws_stack)["consecutive_failures"] == 2

    store.record(RUN, [refreshed("v1", "2026-11-28T06:00:09.000Z")], {})
    assert latest(aws_stack)["consecutive_failures"] == 0


def test_a_run_completes_exactly_once_when_every_key_is_terminal(store: ResultStore) -> None:
    assert store.start_run(RUN, requested=2) is True
    assert store.start_run(RUN, requested=99) is False
    store.track(RUN, [RefreshOutcome(key_id="k2", status=Status.PENDING)])
    store.record(RUN, [refreshed("v1", "2026-11-28T06:00:01.000Z")], {})
    assert store.complete_if_done("r1") is None

    store.record(RUN, [RefreshOutcome(key_id="k2", status=Status.NOT_FOUND)], {})
    counts = store.complete_if_done("r1")

    assert counts is not None
    assert (counts.requested, counts.refreshed, counts.not_found) == (2, 1, 1)
    assert store.complete_if_done("r1") is None


def test_a_rejected_request_is_recorded_once(store: ResultStore, aws_stack: Any) -> None:
    assert store.record_rejected("m1", "keys: must be a list", "x" * 5000) is True
    assert store.record_rejected("m1", "keys: must be a list", "x" * 5000) is False
    item = aws_stack.table.get_item(Key={"pk": "REJECTED#m1", "sk": "REQUEST"})["Item"]
    assert len(item["body"]) == 4000


def test_two_deliveries_at_once_both_see_the_rotation_they_started_from(
    store: ResultStore,
) -> None:
    # Given a key at v1 that both deliveries read before either wrote
    store.record(RUN, [refreshed("v1", "2026-11-28T06:00:01.000Z")], {})
    seen_at_start = {KEY: KeyInfo(key_id=KEY, current_key_version="v1")}

    # When both record the v2 they refreshed, one after the other
    [first] = store.record(RUN, [refreshed("v2", "2026-11-28T06:00:02.000Z")], seen_at_start)
    [second] = store.record(RUN, [refreshed("v2", "2026-11-28T06:00:03.000Z")], seen_at_start)

    # Then the result item, whichever write lands last, still says the key rotated from v1
    assert (first.version_changed, first.previous_key_version) == (True, "v1")
    assert (second.version_changed, second.previous_key_version) == (True, "v1")
