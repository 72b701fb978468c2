"""Every key exactly one outcome, whatever fails (docs/reference.md 4.3, issue 11): a container
killed at each point of a run, the same message delivered twice at once and once more after the run
completed, and the last delivery with too little time left.

Each test drives the real handler through Lambda's pollers (``Containers.drain``) and asserts
on the table, the queues, CTM's request log and the captured logs.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devkit.ctm_emulator import generate_keys
from devkit.lambda_poller import InvocationRecord, PollerReport
from tests.resilience.conftest import MAX_RECEIVE_COUNT, MakeScenario
from tests.resilience.lambda_kills import (
    ContainerKilled,
    Containers,
    KillSwitch,
    closes_chunk,
    completes_run,
    finishes_resolution,
    puts_result,
    puts_terminal_result,
    registers_chunk,
    starts_run,
)
from tests.resilience.promises import (
    refresh_calls,
    refreshes_between,
    run_items,
)
from tests.resilience.scenario import Scenario, finished_once

pytestmark = pytest.mark.resilience
CONCURRENCY = 8  # the world's REFRESH_CONCURRENCY: the most refresh calls in flight


def chunk_items(scenario: Scenario, run_id: str) -> list[dict[str, Any]]:
    return run_items(scenario.world, run_id, "CHUNK#")


# --- 1. the kill at several points ------------------------------------------------------------


def test_a_container_killed_after_49_of_60_rotated_keys_records_each_rotation_once(
    make_scenario: MakeScenario, kills: KillSwitch
) -> None:
    # Given 60 keys of one tenancy, every one rotated in OCI since CCKM last looked, fanned
    # out to the tenancy queue in two chunks (a first one of 25 keys, then 35: one tenancy,
    # so one invocation at a time, and every refresh CTM sees while one runs is its own), a
    # password in the secret (each new container logs in), and a container killed as it is
    # about to record the 50th outcome (the 25th of the second chunk)
    scenario = make_scenario(auth="password", keys=generate_keys(60, tenancies=1, seed=11))
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
    [crash] = report.crashes
    redelivered = {report.deliveries[m] for m in crash.message_ids}
    assert (kills.kills, redelivered) == (["PutItem #50"], {2})
    # ... every key ends REFRESHED with its rotation recorded once: 60 version_changed, and
    # the run counts rotated=60
    results = finished_once(scenario, containers, "killed-at-49", keys)
    run_rotated = int(scenario.world.run_item("killed-at-49")["rotated"])
    assert (
        {r["status"] for r in results.values()},
        sum(r["version_changed"] is True for r in results.values()),
        run_rotated,
    ) == ({"REFRESHED"}, 60, 60)
    # ... and only the calls in flight at the kill were made again: the 49 recorded keys were
    # not refreshed again, each other key at most twice
    calls = refresh_calls(scenario, keys)
    in_crash = refreshes_between(scenario.ctm, crash.started, crash.ended)
    recorded_before = refreshes_between(scenario.ctm, 0.0, crash.started)  # the first chunk
    in_flight = len(in_crash) - (49 - len(recorded_before))  # keys, not calls (retries)
    repeated = {key: n - 1 for key, n in calls.items() if n > 1}
    assert {
        "refresh calls per key, other than 1 or 2": set(calls.values()) - {1, 2},
        "keys refreshed again, not in flight at the kill": set(repeated) - set(in_crash),
    } == {
        "refresh calls per key, other than 1 or 2": set(),
        "keys refreshed again, not in flight at the kill": set(),
    }
    assert sum(repeated.values()) == in_flight <= CONCURRENCY


def test_a_schedule_killed_before_its_run_item_is_retried_and_refreshes_each_key_once(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # Given a container killed as it is about to write the run item
    keys = scenario.key_ids(12)
    containers = Containers(scenario.world, kills)
    event = scenario.world.schedule_event({"keys": keys})
    run_id = "schedule-2026-11-28T06:00:00Z"
    kills.at("TransactWriteItems", 1, starts_run)

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
    assert answer["fanned_out"] == 12
    results = finished_once(scenario, containers, run_id, keys)
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert set(refresh_calls(scenario, keys).values()) == {1}


def chunks_sent(kills: KillSwitch) -> Counter[str]:
    """Chunk messages sent to the tenancy queue so far, by chunk id (a retry sends again)."""
    return Counter(body["chunk"] for body in kills.sent)


def test_a_fan_out_killed_after_12_chunks_registered_queues_each_chunk_once(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # Given 30 keys of 3 tenancies in chunks of 2 (each tenancy's first chunk sent at once, the
    # others 10 at a time), and the scheduled invocation killed as it registers the 13th
    # chunk: 12 registered, the 3 first chunks sent
    scenario.world.cold_start(FANOUT_CHUNK_SIZE="2")
    containers = Containers(scenario.world, kills)
    event = scenario.world.schedule_event({"selector": {"all": True}})
    run_id = "schedule-2026-11-28T06:00:00Z"
    kills.at("TransactWriteItems", 13, registers_chunk)

    # When Lambda retries the invocation, then the pollers deliver the tenancy queue
    with pytest.raises(ContainerKilled):
        containers.invoke(event)
    killed_run = scenario.world.run_item(run_id)
    sent_before = chunks_sent(kills)
    killed = (killed_run["requested"], killed_run["open_chunks"], len(sent_before))
    assert killed == (12 * 2, 12, 3)
    answer = containers.invoke(event)
    report = containers.drain()

    # Then the retry registered only the missing chunks (the run counts each key once) and
    # sent the 3 already sent again, with their deduplication ids: the FIFO queue delivered
    # each chunk once, and no key was refreshed twice
    chunks = chunk_items(scenario, run_id)
    fan_out = (answer["fanned_out"], len(chunks) > 12, sum(len(c["keys"]) for c in chunks))
    assert fan_out == (30, True, 30)
    sent = chunks_sent(kills)
    registered = {chunk["chunk_id"] for chunk in chunks}
    assert (set(sent), sent - Counter(set(sent))) == (registered, sent_before)
    delivered = Counter(body["chunk"] for body in containers.record_bodies())
    assert (delivered, len(report.deliveries)) == (Counter(set(sent)), len(chunks))
    keys = scenario.key_ids()
    results = finished_once(scenario, containers, run_id, keys)
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert set(refresh_calls(scenario, keys).values()) == {1}


def test_a_container_killed_before_closing_its_chunks_refreshes_nothing_again(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # Given 12 keys fanned out in 3 chunks (one batch), and the container killed after every
    # outcome was recorded, as it closes the first chunk
    keys = scenario.key_ids(12)
    containers = Containers(scenario.world, kills)
    containers.invoke(scenario.world.rule_event({"keys": keys, "request_id": "c"}))
    kills.at("TransactWriteItems", 1, closes_chunk)

    # When the poller delivers the batch, and again after the crash
    report = containers.drain()

    # Then the redelivery found every key terminal: it refreshed nothing, closed the chunks
    # and completed the run once
    assert kills.kills == ["TransactWriteItems #1"]
    assert len(report.crashes) == 1
    results = finished_once(scenario, containers, "c", keys)
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert set(refresh_calls(scenario, keys).values()) == {1}


@pytest.mark.parametrize("after", [False, True], ids=["before-the-write", "after-the-write"])
def test_a_container_killed_as_it_completes_the_run_leaves_it_completed_once(
    scenario: Scenario, kills: KillSwitch, after: bool
) -> None:
    # Given 12 keys fanned out in 3 chunks, and the container killed as it turns the run
    # COMPLETED: before the write reaches the table, or after (the answer lost)
    keys = scenario.key_ids(12)
    containers = Containers(scenario.world, kills)
    containers.invoke(scenario.world.rule_event({"keys": keys, "request_id": "r"}))
    kills.at("UpdateItem", 1, completes_run, after=after)

    # When the poller delivers the batch, and again after the crash
    report = containers.drain()

    # Then the redelivery refreshed nothing and the run is COMPLETED, once, with its counts
    assert len(kills.kills) == 1
    assert len(report.crashes) == 1
    results = finished_once(scenario, containers, "r", keys)
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert set(refresh_calls(scenario, keys).values()) == {1}


def test_a_schedule_killed_after_finishing_its_resolution_completes_on_its_retry(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # Given a scheduled run whose chunks are all worked while it is still resolving (the
    # pollers deliver them the moment it is about to finish its resolution), and the
    # container killed once that write is made, before it completes the run
    keys = scenario.key_ids(12)
    containers = Containers(scenario.world, kills)
    event = scenario.world.schedule_event({"keys": keys})
    run_id = "schedule-2026-11-28T06:00:00Z"
    kills.on("UpdateItem", finishes_resolution, before=lambda _request: containers.drain())
    kills.at("UpdateItem", 1, finishes_resolution, after=True)

    # When Lambda retries the invocation
    with pytest.raises(ContainerKilled):
        containers.invoke(event)
    killed_run = scenario.world.run_item(run_id)
    assert (killed_run["status"], killed_run["open_chunks"]) == ("RUNNING", 0)
    assert "resolving" not in killed_run
    answer = containers.invoke(event)

    # Then the retry completed the run (once, with its counts), refreshing nothing again
    assert answer["status"] == "COMPLETED"
    results = finished_once(scenario, containers, run_id, keys)
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert set(refresh_calls(scenario, keys).values()) == {1}


# --- 2. two deliveries of one message at once, and a third after completion -------------------

WAIT = 30.0  # seconds a gate waits for the other delivery before the test fails


def wait_for(condition: Callable[[], bool], seen: Callable[[], str] = str) -> None:
    """Hold the calling thread until ``condition`` holds (a gate between two deliveries);
    ``seen`` says what was there instead when it never does."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"the other delivery never got there; {seen()}"
        time.sleep(0.005)


def ctm_calls_seen(scenario: Scenario) -> str:
    """What CTM was asked, for a gate that timed out: each call's operation, key, answer."""
    calls = [
        f"{entry.operation or entry.path} {(entry.key_id or '')[-6:]} {entry.status}"
        f"{'' if entry.authenticated else ' unauthenticated'}"
        for entry in scenario.ctm.request_log
    ]
    return f"CTM saw {len(calls)} calls: " + ", ".join(calls)


def concurrently(*calls: Callable[[], Any], seen: Callable[[], str] = str) -> list[Any]:
    """Run ``calls`` in threads at once; their results in order (an exception re-raised);
    ``seen`` says what was there when they do not finish in time."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        try:
            return [future.result(timeout=WAIT) for future in futures]
        except TimeoutError:
            raise AssertionError(f"not finished after {WAIT:.0f} s; {seen()}") from None


def queue_the_request(
    scenario: Scenario, kills: KillSwitch, queue: str, request: dict[str, Any]
) -> str:
    """Queues ``request`` as a pipeline's message on the work queue (refreshed in place) or as
    the chunk messages its intake sends to the tenancy queue; the queue's URL."""
    world = scenario.world
    if queue == "work":
        world.cold_start(CTM_MAX_ATTEMPTS="1", TENANCY_QUEUE_URL="")
        scenario.source.send(request)
        return str(world.stack.work_queue_url)
    world.cold_start(CTM_MAX_ATTEMPTS="1")
    intake = Containers(world, kills)
    assert intake.invoke(world.rule_event(request))["fanned_out"] == len(request["keys"])
    return str(world.stack.tenancy_queue_url)


def gate_result_writes(scenario: Scenario, kills: KillSwitch, keys: list[str]) -> dict[str, float]:
    """Holds each RESULT write: a terminal one until CTM was called twice for every key, a
    PENDING one until its key's terminal result was written. Returns when each key's
    terminal result was written (filled in as the writes are made)."""
    terminal_at: dict[str, float] = {}
    recorded = {key: threading.Event() for key in keys}

    def hold(request: dict[str, Any]) -> None:
        key = request["Item"]["key_id"]["S"]
        if request["Item"]["status"]["S"] == "PENDING":
            assert recorded[key].wait(WAIT)
        else:
            wait_for(
                lambda: scenario.ctm.refresh_count() >= 2 * len(keys),
                lambda: ctm_calls_seen(scenario),
            )

    def written(request: dict[str, Any]) -> None:
        key = request["Item"]["key_id"]["S"]
        if request["Item"]["status"]["S"] != "PENDING":
            terminal_at.setdefault(key, time.monotonic())
            recorded[key].set()

    kills.on("PutItem", puts_result, before=hold, after=written)
    return terminal_at


def called_after_outcome(scenario: Scenario, terminal_at: dict[str, float]) -> list[str]:
    """Keys CTM was asked to refresh after their terminal result was written."""
    return [
        entry.key_id
        for entry in scenario.ctm.request_log
        if entry.operation == "refresh"
        and entry.key_id in terminal_at
        and entry.monotonic > terminal_at[entry.key_id]
    ]


@pytest.mark.parametrize("queue", ["work", "tenancy"])
def test_one_message_delivered_twice_at_once_and_again_after_completion_is_recorded_once(
    scenario: Scenario, kills: KillSwitch, queue: str
) -> None:
    # Given 6 keys over 3 tenancies, one of which CTM answers 503 once (no retry in the call);
    # and the message a pipeline sent to the work queue (refreshed in place), or the batch of
    # chunk messages the intake queued to the tenancy queue
    keys = scenario.key_ids(6)
    scenario.ctm.faults.fail_key(keys[0], 503, times=1)
    world = scenario.world
    url = queue_the_request(scenario, kills, queue, {"keys": keys, "request_id": "twice"})
    messages = world.stack.receive_all(url)
    event = world.stack.sqs_event(messages, url)
    # ... and gates that make the worst interleaving certain: no outcome is recorded before
    # both deliveries have called CTM for every key (each read them all PENDING), and the
    # stale PENDING of the 503 arrives after the other delivery recorded the key REFRESHED
    terminal_at = gate_result_writes(scenario, kills, keys)
    containers = Containers(world, kills)

    # When SQS hands the same message to two containers at the same moment
    answers = concurrently(
        lambda: containers.invoke(event),
        lambda: containers.invoke(event),
        seen=lambda: ctm_calls_seen(scenario),
    )

    # Then both succeed (Lambda deletes the message); both read every key PENDING, so each
    # key was called twice (the price of an overlap, which the work queue's at-least-once
    # delivery allows), but no key was called after its outcome was recorded, each terminal
    # result was written once, the stale PENDING replaced nothing, and the run completed once
    assert (answers, containers.cold_starts) == ([{"batchItemFailures": []}] * 2, 2)
    world.stack.delete_messages(url, messages)
    assert {
        "refresh calls per key": set(refresh_calls(scenario, keys).values()),
        "keys called after their outcome was recorded": called_after_outcome(scenario, terminal_at),
    } == {"refresh calls per key": {2}, "keys called after their outcome was recorded": []}
    results = finished_once(scenario, containers, "twice", keys)
    assert {r["status"] for r in results.values()} == {"REFRESHED"}

    # When the message comes a third time, after the run completed
    items_before = run_items(scenario.world, "twice")
    third = containers.invoke(event)

    # Then nothing is refreshed and nothing in the run changes
    assert {
        "answer": third,
        "refresh calls per key": set(refresh_calls(scenario, keys).values()),
        "the run's items": run_items(scenario.world, "twice"),
    } == {
        "answer": {"batchItemFailures": []},
        "refresh calls per key": {2},
        "the run's items": items_before,
    }


def tenancies_overlapping(batches: list[InvocationRecord]) -> list[str]:
    """The message groups (tenancies) of which two batches were in flight at once."""
    overlapping = []
    for group in sorted({g for batch in batches for g in batch.groups}):
        spans = sorted((b.started, b.ended) for b in batches if group in b.groups)
        if any(ended > started for (_, ended), (started, _) in itertools.pairwise(spans)):
            overlapping.append(group)
    return overlapping


def test_the_tenancy_queue_never_has_two_batches_of_one_tenancy_in_flight(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # The FIFO design removes the overlapping path for chunks: SQS lets one batch per message
    # group (tenancy) be in flight, and a message comes back only after its visibility timeout
    # (1,800 s, longer than any invocation), so a chunk is never worked by two containers at
    # once; only a pipeline's message on the standard work queue can be (test above).
    # Given 12 keys in chunks of 2 (6 chunks, 2 per tenancy) and one key failing once
    scenario.world.cold_start(FANOUT_CHUNK_SIZE="2", CTM_MAX_ATTEMPTS="1")
    keys = scenario.key_ids(12)
    flaky = keys[0]
    scenario.ctm.faults.fail_key(flaky, 503, times=1)
    containers = Containers(scenario.world, kills)
    containers.invoke(scenario.world.rule_event({"keys": keys, "request_id": "f"}))

    # When Lambda's pollers deliver the tenancy queue (the failed chunk comes back at once)
    report = containers.drain()

    # Then batches of one tenancy never overlapped, nothing had to be held back, the failed
    # chunk was delivered again, and every key was refreshed once (the flaky one twice)
    assert {
        "most deliveries of a message": max(report.deliveries.values()),
        "held back": report.held_back,
        "tenancies with two batches in flight at once": tenancies_overlapping(
            report.of("TenancyQueue")
        ),
    } == {
        "most deliveries of a message": 2,
        "held back": 0,
        "tenancies with two batches in flight at once": [],
    }
    results = finished_once(scenario, containers, "f", keys)
    calls = refresh_calls(scenario, keys)
    flaky_calls = calls.pop(flaky)
    assert {
        "statuses": {r["status"] for r in results.values()},
        "refresh calls of the flaky key": flaky_calls,
        "refresh calls per other key": set(calls.values()),
    } == {
        "statuses": {"REFRESHED"},
        "refresh calls of the flaky key": 2,
        "refresh calls per other key": {1},
    }


def test_a_retried_schedule_never_doubles_its_fan_out(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # Given a scheduled run that fanned out its chunks
    scenario.world.cold_start(FANOUT_CHUNK_SIZE="4")
    keys = scenario.key_ids(12)
    containers = Containers(scenario.world, kills)
    event = scenario.world.schedule_event({"keys": keys})
    run_id = "schedule-2026-11-28T06:00:00Z"
    first = containers.invoke(event)
    assert first["fanned_out"] == 12
    chunks = chunk_items(scenario, run_id)
    sent = len(kills.sent)
    assert sent == len(chunks)

    # When Lambda invokes it again with the same event, before and after the chunks were worked
    again = containers.invoke(event)
    containers.drain()
    late = containers.invoke(event)

    # Then neither retry registered or sent anything: each chunk was delivered once, each key
    # refreshed once, and the late retry answers with the completed run
    assert again["fanned_out"] == 0
    assert (late["status"], late["refreshed"]) == ("COMPLETED", 12)
    assert len(kills.sent) == sent
    assert len(chunk_items(scenario, run_id)) == len(chunks)
    assert Counter(b["chunk"] for b in containers.record_bodies()) == Counter(
        c["chunk_id"] for c in chunks
    )
    finished_once(scenario, containers, run_id, keys)
    assert set(refresh_calls(scenario, keys).values()) == {1}


# --- 3. the last delivery with 5 s left --------------------------------------------------------


def five_seconds_on_the_last_delivery(event: dict[str, Any]) -> Callable[[], float] | None:
    """An invocation's remaining time: 5 s (below the margin) when it holds a message on its
    last delivery, else the usual."""
    counts = [int(r["attributes"]["ApproximateReceiveCount"]) for r in event.get("Records", [])]
    return (lambda: 5.0) if MAX_RECEIVE_COUNT in counts else None


def last_holding(report: PollerReport, message_id: str) -> InvocationRecord:
    """The last invocation that held the message (other tenancies' chunks run beside it)."""
    holding = (i for i in report.invocations if message_id in i.message_ids)
    return max(holding, key=lambda invocation: invocation.ended)


def test_a_chunk_on_its_last_delivery_with_5_s_left_fails_its_keys_and_is_dead_lettered(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # Given 30 keys fanned out in 3 chunks, one key CTM answers 503 to every time (no retry in
    # the call), and an invocation holding a last delivery with 5 s left, below the margin
    # (2 x CTM_TIMEOUT_SECONDS + 5 s)
    scenario.world.cold_start(CTM_MAX_ATTEMPTS="1")
    keys = scenario.key_ids()
    hopeless = keys[0]
    scenario.ctm.faults.fail_keys[hopeless] = 503
    containers = Containers(scenario.world, kills, remaining=five_seconds_on_the_last_delivery)
    containers.invoke(scenario.world.rule_event({"selector": {"all": True}, "request_id": "l"}))

    # When the pollers deliver the chunks until SQS gives up on the hopeless one
    report = containers.drain()

    # Then its chunk was delivered maxReceiveCount times; the last delivery made no call,
    # failed the key with DEADLINE and named the message, which SQS dead-lettered
    [(message_id, deliveries)] = [(m, n) for m, n in report.deliveries.items() if n > 1]
    [dead] = scenario.world.stack.receive_all(scenario.world.stack.tenancy_dead_letter_queue_url)
    assert {
        "deliveries": deliveries,
        "failures the last delivery named": last_holding(report, message_id).failed,
        "refresh calls of the hopeless key": scenario.ctm.refresh_count(hopeless),
        "dead letter, with the hopeless key": (
            dead["MessageId"],
            hopeless in json.loads(dead["Body"])["keys"],
        ),
    } == {
        "deliveries": MAX_RECEIVE_COUNT,
        "failures the last delivery named": (message_id,),
        "refresh calls of the hopeless key": MAX_RECEIVE_COUNT - 1,
        "dead letter, with the hopeless key": (message_id, True),
    }
    # ... and the run completed with the right counts: 29 refreshed once, 1 failed
    results = finished_once(scenario, containers, "l", keys)
    run = scenario.world.run_item("l")
    others = refresh_calls(scenario, [key for key in keys if key != hopeless])
    assert {
        "the hopeless key": (results[hopeless]["status"], results[hopeless]["error_code"]),
        "statuses": Counter(r["status"] for r in results.values()),
        "run's refreshed, failed": (run["refreshed"], run["failed"]),
        "refresh calls per other key": set(others.values()),
    } == {
        "the hopeless key": ("FAILED", "DEADLINE"),
        "statuses": {"REFRESHED": 29, "FAILED": 1},
        "run's refreshed, failed": (29, 1),
        "refresh calls per other key": {1},
    }


def test_a_pipeline_request_on_its_last_delivery_with_5_s_left_fails_its_keys(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # Given a pipeline's request on the work queue (no tenancy queue) that has been received
    # twice already, and its last delivery with 5 s left
    scenario.world.cold_start(TENANCY_QUEUE_URL="")
    keys = scenario.key_ids(5)
    message_id = scenario.source.send({"keys": keys, "request_id": "last"})
    queue = scenario.world.stack.work_queue_url
    for _ in range(MAX_RECEIVE_COUNT - 1):
        scenario.world.stack.release_messages(queue, scenario.world.stack.receive_all(queue))
    [message] = scenario.world.stack.receive_all(queue)
    assert message["Attributes"]["ApproximateReceiveCount"] == str(MAX_RECEIVE_COUNT)
    containers = Containers(scenario.world, kills, remaining=five_seconds_on_the_last_delivery)

    # When it is delivered, then SQS takes it back
    answer = containers.invoke(scenario.world.stack.sqs_event([message]))
    scenario.world.stack.release_messages(queue, [message])
    containers.drain()

    # Then no key was called: each FAILED with DEADLINE, the message was named (SQS moved
    # it to the dead-letter queue) and the run completed with 5 failed
    assert answer == {"batchItemFailures": [{"itemIdentifier": message_id}]}
    assert scenario.ctm.refresh_count() == 0
    dead = scenario.world.stack.receive_all(scenario.world.stack.dead_letter_queue_url)
    assert [m["MessageId"] for m in dead] == [message_id]
    results = finished_once(scenario, containers, "last", keys)
    assert {(r["status"], r["error_code"]) for r in results.values()} == {("FAILED", "DEADLINE")}
    assert scenario.world.run_item("last")["failed"] == 5
