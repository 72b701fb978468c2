"""DynamoDB throttling the handler's writes: answers the SDK retries, batch writes left
unprocessed, and an error that outlasts the SDK's retries. Nothing is lost or written twice."""

from __future__ import annotations

import pytest

from tests.resilience.dynamodb_faults import DynamoDbFaults
from tests.resilience.scenario import Scenario

pytestmark = pytest.mark.resilience


def test_throttled_and_unprocessed_writes_are_written_again_and_lose_no_result(
    scenario: Scenario, dynamodb_faults: DynamoDbFaults
) -> None:
    # Given a table that throttles three KEY updates (botocore's standard retries see 400
    # ProvisionedThroughputExceeded) and leaves the first two batch writes wholly unprocessed
    dynamodb_faults.throttle_key_updates = 3
    dynamodb_faults.unprocess_batch_writes = 2
    keys = scenario.key_ids(12)

    # When the keys are refreshed through the work queue
    message_id = scenario.source.send({"keys": keys, "request_id": "throttled-table"})
    scenario.source.drain()

    # Then the throttles happened and were absorbed within the one delivery: every result
    # and every KEY item is written, once
    assert (dynamodb_faults.throttled, dynamodb_faults.unprocessed) == (3, 2)
    assert scenario.source.deliveries[message_id] == 1
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

    # When the keys are refreshed through the work queue
    message_id = scenario.source.send({"keys": keys, "request_id": "gave-up"})
    scenario.source.drain()

    # Then the delivery failed as a whole, SQS delivered it again, and the second delivery
    # recorded every key: one terminal result each, the run completed once
    assert dynamodb_faults.gave_up == 1
    assert scenario.source.deliveries[message_id] == 2
    results = scenario.promises_kept({"gave-up": keys})["gave-up"]
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
