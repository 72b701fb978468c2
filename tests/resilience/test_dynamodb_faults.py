"""DynamoDB refusing the handler's writes: throttles the SDK retries, transactions cancelled
by a conflict (the store runs them again), and an error that outlasts the SDK's retries.
Nothing is lost or written twice."""

from __future__ import annotations

import pytest

from tests.resilience.dynamodb_faults import DynamoDbFaults
from tests.resilience.scenario import Scenario
from tests.resilience.work_queue_source import TENANCY_QUEUE

pytestmark = pytest.mark.resilience


def test_throttled_and_conflicting_writes_are_written_again_and_lose_no_result(
    scenario: Scenario, dynamodb_faults: DynamoDbFaults
) -> None:
    # Given a table that throttles three KEY updates (botocore's standard retries see 400
    # ProvisionedThroughputExceeded) and cancels the first two transactions (registering a
    # chunk) as conflicting with another one, which the SDK does not retry
    dynamodb_faults.throttle_key_updates = 3
    dynamodb_faults.conflict_transactions = 2
    keys = scenario.key_ids(12)

    # When the keys are refreshed through the work queue and the tenancy queue
    scenario.source.send({"keys": keys, "request_id": "throttled-table"})
    scenario.source.drain()

    # Then the throttles and conflicts happened and were absorbed within one delivery of
    # each message: every result and every KEY item is written, once
    assert (dynamodb_faults.throttled, dynamodb_faults.conflicted) == (3, 2)
    assert scenario.source.of(TENANCY_QUEUE)
    assert set(scenario.source.deliveries.values()) == {1}
    results = scenario.promises_kept({"throttled-table": keys})["throttled-table"]
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    for key_id in keys:
        latest = scenario.world.latest(key_id)
        assert latest is not None
        assert latest["last_run_id"] == "throttled-table"


def test_a_write_the_sdk_gave_up_on_costs_a_redelivery_never_a_result(
    scenario: Scenario, dynamodb_faults: DynamoDbFaults
) -> None:
    # Given the fifth KEY update failing after the SDK's own retries
    # (ProvisionedThroughputExceededException raised to the store)
    dynamodb_faults.give_up_on_key_update = 5
    keys = scenario.key_ids(12)

    # When the keys are refreshed through the work queue and the tenancy queue
    message_id = scenario.source.send({"keys": keys, "request_id": "gave-up"})
    scenario.source.drain()

    # Then the request was resolved once; the invocation that met the error failed as a
    # whole, SQS delivered its chunks again, and the second delivery recorded every key: one
    # terminal result each, the run completed once
    assert dynamodb_faults.gave_up == 1
    assert scenario.source.deliveries[message_id] == 1
    [crashed] = [i for i in scenario.source.invocations if i.response is None]
    assert crashed.queue == TENANCY_QUEUE
    assert [scenario.source.deliveries[m] for m in crashed.message_ids] == [2] * len(
        crashed.message_ids
    )
    results = scenario.promises_kept({"gave-up": keys})["gave-up"]
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
