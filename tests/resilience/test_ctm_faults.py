"""CTM misbehaving: short-lived JWTs, 5xx answers, dropped connections, throttle storms and
answers slower than the call timeout. Each scenario runs the real handler and drains the work
queue as SQS would, then checks the three promises (see promises.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.fixtures.ctm import ManualClock
from tests.resilience.conftest import MAX_RECEIVE_COUNT, MakeScenario
from tests.resilience.scenario import Scenario

pytestmark = pytest.mark.resilience


def statuses(results: dict[str, dict[str, Any]]) -> set[str]:
    return {result["status"] for result in results.values()}


def test_jwts_lasting_two_seconds_cost_re_authentication_never_a_key(
    make_scenario: MakeScenario,
) -> None:
    # Given CTM JWTs that live 2 s on CTM's clock, and every call taking 0.25 s of that clock
    # (the emulator's injected latency moves its own clock: nobody waits for real)
    clock = ManualClock()
    scenario = make_scenario(auth="password", clock=clock, sleep=clock.advance)
    scenario.ctm.faults.token_lifetime = 2
    scenario.ctm.faults.latency = 0.25
    scenario.world.cold_start(REFRESH_CONCURRENCY="2")

    # When a run refreshes all 30 keys (7.75 s of CTM time: JWTs expire mid-run, again and again)
    response = scenario.world.invoke(
        scenario.world.rule_event({"selector": {"all": True}, "request_id": "short-jwts"})
    )
    scenario.source.drain()

    # Then every expiry costs one re-authentication and one retry, and no key is lost to it
    unauthorized = [r for r in scenario.ctm.request_log if r.status == 401]
    assert len(unauthorized) >= 3
    assert scenario.ctm.tokens_issued >= 4
    assert response["refreshed"] == 30
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

    # Then keys whose retries ran out were PENDING, redelivered, and all end refreshed once
    assert scenario.source.deliveries[message_id] > 1
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
    # message is in the dead-letter queue after exactly maxReceiveCount deliveries
    assert scenario.source.redriven() == {message_id}
    assert scenario.source.deliveries[message_id] == MAX_RECEIVE_COUNT
    results = scenario.promises_kept({"hopeless": keys})["hopeless"]
    assert results[keys[0]]["status"] == "FAILED"
    assert results[keys[0]]["http_status"] == 503
    assert statuses({k: r for k, r in results.items() if k != keys[0]}) == {"REFRESHED"}
    assert scenario.ctm.refresh_count(keys[1]) == 1


def test_dropped_connections_are_retried_and_lose_no_key(scenario: Scenario) -> None:
    # Given CTM hanging up on 30 % of calls without an answer (seeded)
    scenario.ctm.faults.drop_rate = 0.3
    scenario.world.cold_start(CTM_MAX_ATTEMPTS="2")

    # When every key is requested through the work queue
    message_id = scenario.source.send({"selector": {"all": True}, "request_id": "dropped"})
    scenario.source.drain()

    # Then the dropped calls were CONNECTION errors, retried, and every key ends refreshed once
    assert sum(r.dropped for r in scenario.ctm.request_log) > 0
    assert scenario.source.deliveries[message_id] > 1
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


class SlowFirstCalls:
    """The emulator's latency, except that its first ``count`` calls take ``slow`` seconds."""

    def __init__(self, count: int, slow: float) -> None:
        self._left = count
        self._slow = slow
        self._lock = threading.Lock()

    def __call__(self, latency: float) -> None:
        with self._lock:
            slow = self._left > 0
            self._left -= slow
        time.sleep(self._slow if slow else latency)  # a socket timeout needs real time


def test_calls_slower_than_the_timeout_leave_keys_pending_until_a_redelivery(
    make_scenario: MakeScenario,
) -> None:
    # Given CTM_TIMEOUT_SECONDS=1 (0.5 s to connect, 0.5 s to answer), most calls answering
    # in 0.1 s and the first three in 0.7 s, just past the timeout
    scenario = make_scenario(sleep=SlowFirstCalls(3, slow=0.7))
    scenario.ctm.faults.latency = 0.1
    scenario.world.cold_start(
        CTM_TIMEOUT_SECONDS="1", CTM_MAX_ATTEMPTS="1", REFRESH_CONCURRENCY="4"
    )
    keys = scenario.key_ids(12)

    # When the keys are requested (the results are looked at after the first delivery)
    message_id = scenario.source.send({"keys": keys, "request_id": "slow"})
    first = scenario.source.deliver_round()
    after_first = scenario.world.results("slow")
    scenario.source.drain()

    # Then the three slow calls timed out, their keys stayed PENDING, and the redelivery
    # refreshed them: every key ends refreshed once
    assert first == [{"batchItemFailures": [{"itemIdentifier": message_id}]}]
    pending = [r for r in after_first.values() if r["status"] == "PENDING"]
    assert len(pending) == 3
    assert {r["error_code"] for r in pending} == {"TIMEOUT"}
    results = scenario.promises_kept({"slow": keys})
    assert statuses(results["slow"]) == {"REFRESHED"}
