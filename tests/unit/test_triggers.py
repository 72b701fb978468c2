"""docs/reference.md 4.2 and 4.3: the three trigger shapes and the run ids they give."""

from __future__ import annotations

import pytest

from cckm_refresh.model import Trigger
from cckm_refresh.triggers import (
    UnsupportedEventError,
    is_sqs_event,
    run_name,
    single_delivery,
    sqs_delivery,
    sqs_delivery_of,
)


def test_a_scheduler_envelope_names_its_run_after_the_scheduled_time() -> None:
    delivery = single_delivery(
        {
            "scheduled_time": "2026-11-28T06:00:00Z",
            "execution_id": "exec-1",
            "request": {"selector": {"all": True}},
        }
    )
    assert delivery.trigger is Trigger.SCHEDULE
    assert delivery.default_run_id == "schedule-2026-11-28T06:00:00Z"
    assert delivery.source_id == "exec-1"
    assert delivery.document == {"selector": {"all": True}}


def test_an_eventbridge_rule_event_takes_its_request_from_detail() -> None:
    delivery = single_delivery(
        {"id": "abc-1", "detail-type": "Refresh", "source": "x", "detail": {"keys": ["k"]}}
    )
    assert delivery.trigger is Trigger.EVENT
    assert delivery.default_run_id == "event-abc-1"
    assert delivery.document == {"keys": ["k"]}


def test_an_sqs_message_names_its_run_after_the_message_id() -> None:
    delivery = sqs_delivery("059f36b4-87a3-44ab-83d2-661975830a7d", '{"keys": []}', 3)
    assert delivery.trigger is Trigger.SQS
    assert delivery.default_run_id == "sqs-059f36b4-87a3-44ab-83d2-661975830a7d"
    assert delivery.receive_count == 3
    assert delivery.group is None


def test_a_fifo_record_carries_its_message_group() -> None:
    record = {
        "messageId": "m-1",
        "body": "{}",
        "eventSource": "aws:sqs",
        "attributes": {"ApproximateReceiveCount": "2", "MessageGroupId": "ocid1.tenancy.oc1..a"},
    }
    delivery = sqs_delivery_of(record)
    assert (delivery.group, delivery.receive_count) == ("ocid1.tenancy.oc1..a", 2)
    assert sqs_delivery_of(record | {"attributes": {}}).group is None


@pytest.mark.parametrize(
    "event",
    [{}, {"foo": 1}, [], "text", {"Records": []}, {"Records": [{"eventSource": "aws:sns"}]}],
)
def test_other_shapes_fail_naming_what_was_expected(event: object) -> None:
    assert not is_sqs_event(event)
    with pytest.raises(UnsupportedEventError, match="EventBridge Scheduler envelope"):
        single_delivery(event)


def test_derived_run_ids_stay_in_the_contract_alphabet() -> None:
    assert run_name("schedule-2026/11/28 06:00") == "schedule-2026-11-28-06:00"
    assert len(run_name("x" * 500)) == 128
