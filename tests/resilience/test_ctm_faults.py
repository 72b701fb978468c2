"""CTM misbehaving: short-lived JWTs, 5xx answers, dropped connections, throttle storms and
answers slower than the call timeout. Each scenario runs the real handler and drains the work
queue and the tenancy queue as Lambda's mappings would, then checks the three promises (see
promises.py). A request is resolved by one delivery from the work queue; its keys are refreshed
from chunk messages on the tenancy queue, which is where redeliveries happen."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from devkit.ctm_emulator import generate_keys
from devkit.lambda_poller import LambdaPoller, mappings_from_template
from tests.fixtures.ctm import ManualClock
from tests.resilience.conftest import MAX_RECEIVE_COUNT, MakeScenario
from tests.resilience.lambda_kills import Containers, KillSwitch
from tests.resilience.promises import refresh_calls, table_changes
from tests.resilience.scenario import Scenario
from tests.resilience.work_queue_source import TENANCY_QUEUE

pytestmark = pytest.mark.resilience
# The pace test's tenancy rate, and the spacing of its calls (the limiter keeps 5 % headroom).
PACED_RATE = 0.5
SPACING = 1 / (PACED_RATE * 0.95)
# How much closer than the spacing two calls may reach CTM: their paths through the network
# stack and the emulator's threads on a busy machine, not the pacing (a call held up on its way,
# a new container's TLS handshake, makes the next gap that much short). Without the pace
# handed on, the gap at a chunk boundary was 0.15-0.3 s, far below the spacing less this.
PACE_JITTER = SPACING / 2
# The timeout tests: one attempt may take CALL_TIMEOUT; a slow call takes SLOW_CALL, a usual
# one 0.1 s. Seconds either side, so that a busy machine moves no call across the timeout.
CALL_TIMEOUT = 3
SLOW_CALL = 2 * CALL_TIMEOUT


def statuses(results: dict[str, dict[str, Any]]) -> set[str]:
    return {result["status"] for result in results.values()}


def redelivered_chunks(scenario: Scenario) -> set[str]:
    """Tenancy-queue messages delivered more than once."""
    source = scenario.source
    return {m for m in source.of(TENANCY_QUEUE) if source.deliveries[m] > 1}


def keys_recorded_timed_out(scenario: Scenario) -> set[str]:
    """Keys whose RESULT was ever written PENDING with a TIMEOUT (the stream keeps each write)."""
    return {
        c.new["key_id"]
        for c in table_changes(scenario.world)
        if c.new.get("item_type") == "RESULT"
        and c.new.get("status") == "PENDING"
        and c.new.get("error_code") == "TIMEOUT"
    }


def batch_item_failures(scenario: Scenario) -> set[str]:
    """The messages any invocation reported as batch item failures."""
    return {
        failure["itemIdentifier"]
        for invocation in scenario.source.invocations
        for failure in (invocation.response or {}).get("batchItemFailures", [])
    }


def test_jwts_expiring_mid_run_cost_re_authentication_never_a_key(
    make_scenario: MakeScenario,
) -> None:
    # Given CTM JWTs that live 8 s on CTM's clock, and every call taking 1 s of that clock
    # (the emulator's injected latency moves its own clock: nobody waits for real). CTM's
    # clock runs far ahead of the function's: a JWT expires after 8 calls, which would have to
    # take 6 s of real time (8 s less the renewal margin) for the function to renew it first
    clock = ManualClock()
    scenario = make_scenario(auth="password", clock=clock, sleep=clock.advance)
    scenario.ctm.faults.token_lifetime = 8
    scenario.ctm.faults.latency = 1.0
    scenario.world.cold_start(REFRESH_CONCURRENCY="2")

    # When a run refreshes all 30 keys (over 30 s of CTM time: JWTs expire mid-run, again
    # and again)
    scenario.world.invoke(
        scenario.world.rule_event({"selector": {"all": True}, "request_id": "short-jwts"})
    )
    scenario.source.drain()

    # Then every expiry costs one re-authentication and one retry, and no key is lost to it
    unauthorized = [r for r in scenario.ctm.request_log if r.status == 401]
    assert len(unauthorized) >= 3
    assert scenario.ctm.tokens_issued >= 4
    assert int(scenario.world.run_item("short-jwts")["refreshed"]) == 30
    results = scenario.promises_kept({"short-jwts": scenario.key_ids()})
    assert statuses(results["short-jwts"]) == {"REFRESHED"}


def test_thirty_percent_of_refreshes_answering_5xx_end_refreshed_after_redelivery(
    scenario: Scenario,
) -> None:
    # Given CTM answering 503 to 30 % of calls (seeded: the same calls fail on every run)
    scenario.ctm.faults.error_rate = 0.3
    scenario.world.cold_start(CTM_MAX_ATTEMPTS="2")

    # When a pipeline asks for every key through the work queue, and SQS redelivers failures
    message_id = scenario.source.send({"selector": {"all": True}, "request_id": "five-xx"})
    scenario.source.drain()

    # Then the request was resolved once; keys whose retries ran out were PENDING, their
    # chunks redelivered, and all end refreshed once
    assert scenario.source.deliveries[message_id] == 1
    assert redelivered_chunks(scenario)
    results = scenario.promises_kept({"five-xx": scenario.key_ids()})
    assert statuses(results["five-xx"]) == {"REFRESHED"}


def test_a_key_failing_on_every_delivery_fails_once_and_its_message_is_dead_lettered(
    scenario: Scenario,
) -> None:
    # Given one key CTM answers 503 for, always
    keys = scenario.key_ids(6)
    scenario.ctm.faults.fail_keys[keys[0]] = 503

    # When its request is delivered until SQS gives up on it
    message_id = scenario.source.send({"keys": keys, "request_id": "hopeless"})
    scenario.source.drain()

    # Then the last delivery records it FAILED, the others stay refreshed once, and the
    # chunk message carrying it is in the tenancy queue's dead-letter queue after exactly
    # maxReceiveCount deliveries (the request itself was resolved, once)
    [chunk] = scenario.source.carrying(keys[0]) - {message_id}
    assert scenario.source.redriven() == scenario.source.redriven(TENANCY_QUEUE) == {chunk}
    assert scenario.source.deliveries[chunk] == MAX_RECEIVE_COUNT
    assert scenario.source.deliveries[message_id] == 1
    results = scenario.promises_kept({"hopeless": keys})["hopeless"]
    assert results[keys[0]]["status"] == "FAILED"
    assert results[keys[0]]["http_status"] == 503
    assert statuses({k: r for k, r in results.items() if k != keys[0]}) == {"REFRESHED"}
    chunk_keys = json.loads(scenario.source.bodies[chunk])["keys"]
    assert len(chunk_keys) > 1  # the failing key shares its chunk (its tenancy) with others
    assert [scenario.ctm.refresh_count(k) for k in keys[1:]] == [1] * 5


def test_dropped_connections_are_retried_and_lose_no_key(scenario: Scenario) -> None:
    # Given CTM hanging up on 30 % of calls without an answer (seeded)
    scenario.ctm.faults.drop_rate = 0.3
    scenario.world.cold_start(CTM_MAX_ATTEMPTS="2")

    # When every key is requested through the work queue
    message_id = scenario.source.send({"selector": {"all": True}, "request_id": "dropped"})
    scenario.source.drain()

    # Then the dropped calls were CONNECTION errors, retried, and every key ends refreshed once
    assert sum(r.dropped for r in scenario.ctm.request_log) > 0
    assert scenario.source.deliveries[message_id] == 1
    assert redelivered_chunks(scenario)
    results = scenario.promises_kept({"dropped": scenario.key_ids()})
    assert statuses(results["dropped"]) == {"REFRESHED"}


@pytest.mark.parametrize("throttle_status", [429, 500], ids=["429", "500-TooManyRequests"])
def test_a_throttle_storm_slows_the_run_down_and_fails_no_key(
    scenario: Scenario, throttle_status: int
) -> None:
    # Given OCI allowing 4 reads per second per tenancy (2 refreshes), throttled answers as
    # 429 or, as when CCKM wraps OCI's error, as 500 with TooManyRequests in the body; and a
    # function configured for 10 times that rate
    scenario.ctm.faults.tenancy_read_limit = 4
    scenario.ctm.faults.throttle_status = throttle_status
    scenario.world.cold_start(TENANCY_RATE_LIMIT="20", CTM_MAX_ATTEMPTS="4")
    keys = scenario.key_ids(12)

    # When 12 keys over 3 tenancies are requested
    scenario.source.send({"keys": keys, "request_id": "storm"})
    scenario.source.drain()

    # Then throttles happened, were treated as transient, and every key ends refreshed once
    assert scenario.ctm.throttled_count > 0
    results = scenario.promises_kept({"storm": keys})
    assert statuses(results["storm"]) == {"REFRESHED"}


class SlowCalls:
    """The emulator's latency, except that the ``count`` calls after ``slow_next(count)``
    take ``slow`` seconds."""

    def __init__(self, slow: float) -> None:
        self._left = 0
        self._slow = slow
        self._lock = threading.Lock()

    def slow_next(self, count: int) -> None:
        with self._lock:
            self._left = count

    def __call__(self, latency: float) -> None:
        with self._lock:
            slow = self._left > 0
            self._left -= slow
        time.sleep(self._slow if slow else latency)  # a socket timeout needs real time


def slow_scenario(make_scenario: MakeScenario, **env: str) -> tuple[Scenario, SlowCalls]:
    """A scenario whose calls answer in 0.1 s, but those ``slow_next`` names in SLOW_CALL s,
    with CALL_TIMEOUT as CTM_TIMEOUT_SECONDS and ``env`` set at cold start."""
    slow_calls = SlowCalls(slow=SLOW_CALL)
    scenario = make_scenario(sleep=slow_calls)
    scenario.ctm.faults.latency = 0.1
    scenario.world.cold_start(CTM_TIMEOUT_SECONDS=str(CALL_TIMEOUT), **env)
    return scenario, slow_calls


def test_calls_slower_than_the_timeout_leave_keys_pending_until_a_redelivery(
    make_scenario: MakeScenario,
) -> None:
    # Given CTM_TIMEOUT_SECONDS=3 (the most one attempt may take) and most calls answering
    # in 0.1 s
    scenario, slow_calls = slow_scenario(
        make_scenario, CTM_MAX_ATTEMPTS="1", REFRESH_CONCURRENCY="4"
    )
    keys = scenario.key_ids(12)
    # ... a request resolved (CTM described its keys) and queued in chunks, one per tenancy
    scenario.world.invoke(scenario.world.rule_event({"keys": keys, "request_id": "slow"}))

    # When the first three refresh calls take 6 s, past the timeout, and the chunks are
    # delivered from the tenancy queue
    slow_calls.slow_next(3)
    scenario.source.drain()

    # Then the three slow calls timed out and their keys were recorded PENDING (the table's
    # stream keeps every write), the chunks carrying them were reported as batch item failures
    # and redelivered, and the redelivery refreshed them: every key ends refreshed once
    timed_out = keys_recorded_timed_out(scenario)
    carrying = set().union(*(scenario.source.carrying(key) for key in timed_out))
    assert {
        "keys timed out": len(timed_out),
        "messages reported as batch item failures": batch_item_failures(scenario),
        "deliveries of the chunks carrying them": {
            m: scenario.source.deliveries[m] for m in carrying
        },
    } == {
        "keys timed out": 3,
        "messages reported as batch item failures": carrying,
        "deliveries of the chunks carrying them": dict.fromkeys(carrying, 2),
    }
    results = scenario.promises_kept({"slow": keys})
    assert statuses(results["slow"]) == {"REFRESHED"}


def test_a_refresh_that_times_out_is_retried_and_counted_once_as_the_functions(
    make_scenario: MakeScenario,
) -> None:
    # Given a 3 s timeout with retries allowed, and the first refresh call taking 6 s: CTM
    # receives it, the function never sees its answer
    scenario, slow_calls = slow_scenario(make_scenario, CTM_MAX_ATTEMPTS="3")
    keys = scenario.key_ids(4)
    scenario.world.invoke(scenario.world.rule_event({"keys": keys, "request_id": "retried"}))

    # When the chunks are delivered and the first refresh times out
    slow_calls.slow_next(1)
    scenario.source.drain()

    # Then the function retried it in the same delivery: CTM counts two calls for that key,
    # and the tests' count of refreshes (refresh_calls) says each key was refreshed once
    raw = Counter({key: scenario.ctm.refresh_count(key) for key in keys})
    # (CTM logs the cut call when its 6 s end, so it may still count 1 here)
    assert 1 in raw.values()
    assert set(raw.values()) <= {1, 2}
    assert set(refresh_calls(scenario, keys).values()) == {1}
    assert not redelivered_chunks(scenario)
    results = scenario.promises_kept({"retried": keys})
    assert statuses(results["retried"]) == {"REFRESHED"}


def test_a_tenancy_s_next_chunk_in_a_new_container_keeps_the_tenancy_s_pace(
    make_scenario: MakeScenario, kills: KillSwitch
) -> None:
    # Given 6 keys of one tenancy at TENANCY_RATE_LIMIT=0.5 (one call every 2.1 s), fanned out
    # in chunks of 2, each delivered to a container of its own (none warm)
    scenario = make_scenario(keys=generate_keys(6, tenancies=1, seed=5))
    scenario.world.cold_start(TENANCY_RATE_LIMIT=str(PACED_RATE), FANOUT_CHUNK_SIZE="2")
    world = scenario.world
    answer = Containers(world, kills).invoke(world.rule_event({"selector": {"all": True}}))
    assert answer["fanned_out"] == 6

    # When Lambda's poller delivers the three chunks, one after the other (one group)
    def cold(event: dict[str, Any]) -> Any:
        return Containers(world, kills).invoke(event)

    with LambdaPoller(
        world.stack.client("sqs"), mappings_from_template(world.stack), cold, poll_interval=0.02
    ) as poller:
        report = poller.drain(60.0)

    # Then three new containers refreshed them, and across the chunks' boundaries too CTM
    # received the tenancy's refreshes one spacing apart (less the network's jitter): each new
    # container started from the pace its tenancy's last invocation handed on
    arrivals = [e.monotonic for e in scenario.ctm.request_log if e.operation == "refresh"]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(arrivals)]
    assert (len(report.invocations), len(arrivals)) == (3, 6)
    assert min(gaps) >= SPACING - PACE_JITTER, gaps
