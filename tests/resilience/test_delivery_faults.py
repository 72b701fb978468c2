"""Faults in how work arrives: an invocation running out of time, the same SQS message
delivered twice at once, and an older result reaching the table after a newer one.

The first is a run through the tenancy queue (the intake queues chunks, later invocations
refresh them); the other two are about invocations that refresh in place, which is what
the function does with small requests when it has no tenancy queue (``TENANCY_QUEUE_URL``
empty)."""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from devkit.lambda_runtime import FakeLambdaContext, load_handler
from tests.resilience.dynamodb_faults import DynamoDbFaults
from tests.resilience.promises import refresh_calls
from tests.resilience.scenario import Scenario
from tests.resilience.work_queue_source import TENANCY_QUEUE, WORK_QUEUE

pytestmark = pytest.mark.resilience
WAIT = 30.0  # seconds a thread may wait for the other at a rendezvous before the test fails


class Countdown:
    """An invocation's remaining time that drops by ``step`` at every reading."""

    def __init__(self, start: float, step: float) -> None:
        self._left = start + step
        self._step = step
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self._left -= self._step
            return self._left


def test_an_invocation_running_out_of_time_hands_work_on_and_refreshes_each_key_once(
    scenario: Scenario,
) -> None:
    # Given 30 keys over 3 tenancies fanned out to the tenancy queue in chunks of at most 6
    # keys of one tenancy, and a margin of 2 x 1 s + 5 s
    scenario.world.cold_start(
        FANOUT_CHUNK_SIZE="6", CTM_TIMEOUT_SECONDS="1", TENANCY_RATE_LIMIT="4"
    )
    margin = 2 * 1 + 5
    response = scenario.world.invoke(
        scenario.world.rule_event({"selector": {"all": True}, "request_id": "deadline"})
    )
    assert response["fanned_out"] == 30
    chunks = _depth(scenario, scenario.world.stack.tenancy_queue_url)
    per_tenancy = Counter(key["tenancy"] for key in scenario.ctm.keys)
    assert chunks == sum(math.ceil(n / 6) for n in per_tenancy.values())

    # When the first batch's invocation has 0.6 s beyond the margin, losing 0.5 s at every
    # look at the clock: it starts one key per tenancy (slots are 0.25 s apart) and hands
    # the rest of its chunks on; later invocations have the usual 300 s
    first = Countdown(margin + 0.6, step=0.5)
    scenario.source.drain(remaining=lambda n: first if n == 0 else None)

    # Then the first invocation refreshed only a few keys and handed its chunks on in new
    # messages, yet every key was refreshed exactly once (an attempt that outlasted the 1 s
    # timeout on a busy machine and was tried again is the function's own retry, not a
    # second refresh) and the run completed once
    [handed_on, *_] = scenario.source.invocations
    assert handed_on.queue == TENANCY_QUEUE
    assert handed_on.response == {"batchItemFailures": []}
    delivered = scenario.source.of(TENANCY_QUEUE)
    assert len(delivered) > chunks, "no key was handed on at the deadline"
    results = scenario.promises_kept({"deadline": scenario.key_ids()})["deadline"]
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert set(refresh_calls(scenario, scenario.key_ids()).values()) == {1}


def test_the_same_message_delivered_twice_at_once_completes_the_run_once(
    scenario: Scenario, dynamodb_faults: DynamoDbFaults
) -> None:
    # Given two warm containers that refresh small requests in place (no tenancy queue), all
    # of a request's keys in flight at once, and a rendezvous per key that holds each one's
    # terminal result until both have refreshed it (the worst interleaving: neither sees the
    # other's result)
    scenario.world.cold_start(TENANCY_QUEUE_URL="", REFRESH_CONCURRENCY="16")
    containers = [load_handler("refresh", scenario.world.env()) for _ in range(2)]
    dynamodb_faults.before_result_put = _rendezvous_per_key(2)
    keys = scenario.key_ids(9)
    message_id = scenario.source.send({"keys": keys, "request_id": "twice"})
    [message] = scenario.world.stack.receive_all(scenario.world.stack.work_queue_url)
    scenario.source.deliveries[message_id] += 1
    event = scenario.world.stack.sqs_event([message])

    # When SQS hands the same message to both at the same moment
    responses = _concurrently(
        [lambda c=c: c.handler(event, FakeLambdaContext()) for c in containers]
    )

    # Then both succeed and Lambda deletes the message once; each key has one terminal result,
    # written once (the second container's conditional put finds it terminal), and the run
    # completed exactly once. At-least-once delivery has a price, stated here: with neither
    # seeing the other's results, each key was refreshed twice.
    assert responses == [{"batchItemFailures": []}] * 2
    scenario.world.stack.delete_messages(scenario.world.stack.work_queue_url, [message])
    scenario.source.done.add(message_id)
    scenario.source.queue_of[message_id] = WORK_QUEUE
    results = scenario.promises_kept({"twice": keys})["twice"]
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert [scenario.ctm.refresh_count(key) for key in keys] == [2] * len(keys)


def hold_first_key_update(faults: DynamoDbFaults) -> tuple[threading.Event, threading.Event]:
    """Holds the first KEY update in flight until ``release`` is set; ``held`` is set once it
    is held."""
    held, release = threading.Event(), threading.Event()

    def hold_first_update(key_id: str) -> None:
        if not held.is_set():
            held.set()
            assert release.wait(WAIT)

    faults.before_key_update = hold_first_update
    return held, release


def refresh_request(scenario: Scenario, key: str, run_id: str) -> dict[str, Any]:
    """An EventBridge request to refresh ``key`` in the run ``run_id``."""
    return scenario.world.rule_event({"keys": [key], "request_id": run_id})


@contextmanager
def running_in_a_thread(handler: Callable[..., Any], event: dict[str, Any]) -> Iterator[None]:
    """The handler given the event in a thread of its own; on leaving, the thread has ended."""
    thread = threading.Thread(target=handler, args=(event, FakeLambdaContext()))
    thread.start()
    yield
    thread.join(WAIT)
    assert not thread.is_alive()


def test_an_older_result_arriving_after_a_newer_one_never_moves_the_key_back(
    scenario: Scenario, dynamodb_faults: DynamoDbFaults
) -> None:
    # Given containers that refresh small requests in place (no tenancy queue), and a key
    # refreshed once, then rotated by OCI
    scenario.world.cold_start(TENANCY_QUEUE_URL="")
    key = scenario.key_ids(1)[0]
    scenario.world.invoke(refresh_request(scenario, key, "baseline"))
    scenario.ctm.rotate(key)
    # ... and a first container whose KEY update is held in flight
    held, release = hold_first_key_update(dynamodb_faults)
    older = load_handler("refresh", scenario.world.env())
    newer = load_handler("refresh", scenario.world.env())

    # When the older run refreshes (seeing the first rotation) but its KEY update is delayed,
    # OCI rotates again, a newer run refreshes and records, and only then the older one lands
    with running_in_a_thread(older.handler, refresh_request(scenario, key, "older")):
        assert held.wait(WAIT)
        newest_version = scenario.ctm.rotate(key)
        newer.handler(refresh_request(scenario, key, "newer"), FakeLambdaContext())
        release.set()

    # Then the KEY item still holds the newer state; the older result is kept as history, and
    # says what that run saw: a change from the version the key had before it touched it
    # (docs/reference.md 5), the first rotation, not the newest version
    latest = scenario.world.latest(key)
    assert latest is not None
    results = scenario.promises_kept({"older": [key], "newer": [key], "baseline": [key]})
    baseline_version = results["baseline"][key]["current_key_version"]
    older_result = results["older"][key]
    assert {
        "KEY item's run, version": (latest["last_run_id"], latest["current_key_version"]),
        "newer run's version_changed is True": results["newer"][key]["version_changed"] is True,
        "older run's status": older_result["status"],
        "older run's previous version, version_changed": (
            older_result["previous_key_version"],
            older_result["version_changed"],
        ),
        "older run's version neither the baseline's nor the newest": (
            older_result["current_key_version"] not in (baseline_version, newest_version)
        ),
    } == {
        "KEY item's run, version": ("newer", newest_version),
        "newer run's version_changed is True": True,
        "older run's status": "REFRESHED",
        "older run's previous version, version_changed": (baseline_version, True),
        "older run's version neither the baseline's nor the newest": True,
    }


def _rendezvous_per_key(parties: int) -> Callable[[str], None]:
    """A barrier per key: each caller waits until ``parties`` callers reached the same key."""
    barriers: defaultdict[str, threading.Barrier] = defaultdict(
        lambda: threading.Barrier(parties, timeout=WAIT)
    )
    lock = threading.Lock()

    def wait(key_id: str) -> None:
        with lock:
            barrier = barriers[key_id]
        barrier.wait()

    return wait


def _depth(scenario: Scenario, queue_url: str) -> int:
    """Messages a queue holds (visible or not)."""
    attributes = scenario.world.stack.client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


def _concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads at once; their results in order (an exception re-raised)."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except BaseException as error:  # surfaced in the test's thread below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]
    return results
