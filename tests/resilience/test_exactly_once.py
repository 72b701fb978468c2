"""Every key exactly one outcome, whatever fails (CONTRACT 4.3, issue 11): a container killed
at each point of a run, the same message delivered twice at once and once more after the run
completed, and the last delivery with too little time left.

Each test drives the real handler through Lambda's pollers (``Containers.drain``) and asserts
on the table, the queues, CTM's request log and the captured logs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from boto3.dynamodb.conditions import Key

from devkit.ctm_emulator import generate_keys
from tests.resilience.conftest import MakeScenario
from tests.resilience.lambda_kills import (
    ContainerKilled,
    Containers,
    KillSwitch,
    closes_chunk,
    completes_run,
    puts_run_item,
    puts_terminal_result,
    registers_chunk,
)
from tests.resilience.promises import (
    assert_counts_are_the_results,
    assert_no_secret_anywhere,
    assert_one_terminal_result_per_key,
    refresh_calls,
    refreshes_between,
)
from tests.resilience.scenario import Scenario

pytestmark = pytest.mark.resilience
CONCURRENCY = 8  # the world's REFRESH_CONCURRENCY: the most refresh calls in flight


def finished_once(
    scenario: Scenario, containers: Containers, run_id: str, keys: list[str]
) -> dict[str, dict[str, Any]]:
    """One terminal result per key, the run completed once with its results' counts, and no
    secret in the logs, the run's items or the messages. Returns the results."""
    results = assert_one_terminal_result_per_key(scenario.world, run_id, keys)
    assert_counts_are_the_results(scenario.world, run_id, results)
    assert_no_secret_anywhere(
        scenario.world,
        scenario.logs,
        scenario.secrets,
        run_ids=[run_id],
        messages=containers.events + containers.kills.sent,
    )
    return results


def chunk_items(scenario: Scenario, run_id: str) -> list[dict[str, Any]]:
    page = scenario.world.stack.table.query(
        KeyConditionExpression=Key("pk").eq(f"RUN#{run_id}") & Key("sk").begins_with("CHUNK#"),
        ConsistentRead=True,
    )
    return [dict(item) for item in page["Items"]]


# --- 1. the kill at several points ------------------------------------------------------------


def test_a_container_killed_after_49_of_60_rotated_keys_records_each_rotation_once(
    make_scenario: MakeScenario, kills: KillSwitch
) -> None:
    # Given 60 keys over 3 tenancies, every one rotated in OCI since CCKM last looked, fanned
    # out to the tenancy queue in 3 chunks (one batch), and a container killed as it is about
    # to record the 50th outcome
    scenario = make_scenario(keys=generate_keys(60, seed=11))
    keys = scenario.key_ids()
    for key in keys:
        scenario.ctm.rotate(key)
    containers = Containers(scenario.world, kills)
    answer = containers.invoke(
        scenario.world.rule_event({"selector": {"all": True}, "request_id": "killed-at-49"})
    )
    assert answer["fanned_out"] == 60
    kills.at("PutItem", 50, puts_terminal_result)

    # When Lambda's poller delivers the chunks, and again after the crash
    report = containers.drain()

    # Then the batch crashed once and came back whole to a new container
    assert kills.kills == ["PutItem #50"]
    [crash] = report.crashes
    assert {report.deliveries[m] for m in crash.message_ids} == {2}
    # ... every key ends REFRESHED with its rotation recorded once: 60 version_changed, and
    # the run counts rotated=60
    results = finished_once(scenario, containers, "killed-at-49", keys)
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert sum(r["version_changed"] is True for r in results.values()) == 60
    assert int(scenario.world.run_item("killed-at-49")["rotated"]) == 60
    # ... and only the calls in flight at the kill were made again: the 49 recorded keys were
    # not refreshed again, each other key at most twice
    calls = refresh_calls(scenario.ctm, keys)
    in_crash = refreshes_between(scenario.ctm, crash.started, crash.ended)
    in_flight = sum(in_crash.values()) - 49
    repeated = {key: n - 1 for key, n in calls.items() if n > 1}
    assert set(calls.values()) <= {1, 2}
    assert set(repeated) <= set(in_crash)
    assert sum(repeated.values()) == in_flight <= CONCURRENCY


def test_a_schedule_killed_before_its_run_item_is_retried_and_refreshes_each_key_once(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # Given a container killed as it is about to write the run item
    containers = Containers(scenario.world, kills)
    event = scenario.world.schedule_event({"selector": {"all": True}})
    run_id = "schedule-2026-11-28T06:00:00Z"
    kills.at("PutItem", 1, puts_run_item)

    # When the schedule fires, is killed, and Lambda retries the invocation
    with pytest.raises(ContainerKilled):
        containers.invoke(event)
    assert (
        scenario.world.stack.table.get_item(Key={"pk": f"RUN#{run_id}", "sk": "RUN"}).get("Item")
        is None
    )
    answer = containers.invoke(event)
    containers.drain()

    # Then the retry made the run, and every key was refreshed exactly once
    assert answer["fanned_out"] == 30
    keys = scenario.key_ids()
    results = finished_once(scenario, containers, run_id, keys)
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert set(refresh_calls(scenario.ctm, keys).values()) == {1}


def test_a_fan_out_killed_after_12_chunks_registered_queues_each_chunk_once(
    make_scenario: MakeScenario, kills: KillSwitch
) -> None:
    # Given 60 keys in chunks of 4 of one tenancy (16 chunks, sent 10 at a time), and the
    # scheduled invocation killed as it registers the 13th chunk: 12 registered, 10 sent
    scenario = make_scenario(keys=generate_keys(60, seed=12))
    scenario.world.cold_start(FANOUT_CHUNK_SIZE="4")
    containers = Containers(scenario.world, kills)
    event = scenario.world.schedule_event({"selector": {"all": True}})
    run_id = "schedule-2026-11-28T06:00:00Z"
    kills.at("TransactWriteItems", 13, registers_chunk)

    # When Lambda retries the invocation, then the pollers deliver the tenancy queue
    with pytest.raises(ContainerKilled):
        containers.invoke(event)
    killed_run = scenario.world.run_item(run_id)
    assert (killed_run["requested"], killed_run["open_chunks"]) == (12 * 4, 12)
    sent_before = Counter(body["chunk"] for body in kills.sent)
    assert len(sent_before) == 10
    answer = containers.invoke(event)
    report = containers.drain()

    # Then the retry registered only the missing chunks (the run counts each key once) and
    # sent the 10 already sent again, with their deduplication ids: the FIFO queue delivered
    # each chunk once, and no key was refreshed twice
    assert answer["fanned_out"] == 60
    chunks = chunk_items(scenario, run_id)
    assert len(chunks) == 16
    assert sum(len(chunk["keys"]) for chunk in chunks) == 60
    sent = Counter(body["chunk"] for body in kills.sent)
    assert set(sent) == {chunk["chunk_id"] for chunk in chunks}
    assert sent - Counter(set(sent)) == sent_before
    delivered = Counter(body["chunk"] for body in containers.record_bodies())
    assert delivered == Counter(set(sent))
    assert len(report.deliveries) == 16
    keys = scenario.key_ids()
    results = finished_once(scenario, containers, run_id, keys)
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert set(refresh_calls(scenario.ctm, keys).values()) == {1}


def test_a_container_killed_before_closing_its_chunks_refreshes_nothing_again(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # Given 30 keys fanned out in 3 chunks (one batch), and the container killed after every
    # outcome was recorded, as it closes the first chunk
    containers = Containers(scenario.world, kills)
    containers.invoke(scenario.world.rule_event({"selector": {"all": True}, "request_id": "c"}))
    kills.at("TransactWriteItems", 1, closes_chunk)

    # When the poller delivers the batch, and again after the crash
    report = containers.drain()

    # Then the redelivery found every key terminal: it refreshed nothing, closed the chunks
    # and completed the run once
    assert kills.kills == ["TransactWriteItems #1"]
    assert len(report.crashes) == 1
    keys = scenario.key_ids()
    results = finished_once(scenario, containers, "c", keys)
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert set(refresh_calls(scenario.ctm, keys).values()) == {1}


@pytest.mark.parametrize("after", [False, True], ids=["before-the-write", "after-the-write"])
def test_a_container_killed_as_it_completes_the_run_leaves_it_completed_once(
    scenario: Scenario, kills: KillSwitch, after: bool
) -> None:
    # Given 30 keys fanned out in 3 chunks, and the container killed as it turns the run
    # COMPLETED: before the write reaches the table, or after (the answer lost)
    containers = Containers(scenario.world, kills)
    containers.invoke(scenario.world.rule_event({"selector": {"all": True}, "request_id": "r"}))
    kills.at("UpdateItem", 1, completes_run, after=after)

    # When the poller delivers the batch, and again after the crash
    report = containers.drain()

    # Then the redelivery refreshed nothing and the run is COMPLETED, once, with its counts
    assert len(kills.kills) == 1
    assert len(report.crashes) == 1
    keys = scenario.key_ids()
    results = finished_once(scenario, containers, "r", keys)
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert set(refresh_calls(scenario.ctm, keys).values()) == {1}
