"""The local stack (devkit/aws_local.py) builds the tenancy FIFO queue as template.yaml does."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devkit.aws_local import LocalAwsStack
from devkit.moto_server import MotoServer
from devkit.template import load_template

pytestmark = pytest.mark.integration


def queue_attributes(stack: LocalAwsStack, url: str) -> dict[str, str]:
    attributes: dict[str, str] = stack.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["All"]
    )["Attributes"]
    return attributes


def template_queue(logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = load_template()["Resources"][logical_id]["Properties"]
    return properties


def test_the_tenancy_queue_has_the_templates_fifo_settings_visibility_and_redrive(
    moto_server: MotoServer,
) -> None:
    stack = LocalAwsStack.create(moto_server.endpoint_url, prefix="fifo", max_receive_count=3)
    expected = template_queue("TenancyQueue")

    attributes = queue_attributes(stack, stack.tenancy_queue_url)

    assert stack.tenancy_queue_url.endswith("/fifo-tenancy.fifo")
    assert attributes["FifoQueue"] == "true"
    assert attributes["ContentBasedDeduplication"] == "false"
    assert attributes["DeduplicationScope"] == expected["DeduplicationScope"]
    assert attributes["FifoThroughputLimit"] == expected["FifoThroughputLimit"]
    assert attributes["VisibilityTimeout"] == str(expected["VisibilityTimeout"])
    assert attributes["SqsManagedSseEnabled"] == "true"
    assert json.loads(attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": stack.tenancy_dead_letter_queue_arn,
        "maxReceiveCount": 3,
    }


def test_both_queues_move_messages_on_after_the_same_count(moto_server: MotoServer) -> None:
    stack = LocalAwsStack.create(moto_server.endpoint_url, prefix="counts", max_receive_count=4)

    counts = {
        json.loads(queue_attributes(stack, url)["RedrivePolicy"])["maxReceiveCount"]
        for url in (stack.work_queue_url, stack.tenancy_queue_url)
    }

    assert counts == {4}
    assert stack.refresh_env()["MAX_RECEIVE_COUNT"] == "4"


def test_the_tenancy_dead_letter_queue_is_fifo(aws_stack: LocalAwsStack) -> None:
    attributes = queue_attributes(aws_stack, aws_stack.tenancy_dead_letter_queue_url)

    assert aws_stack.tenancy_dead_letter_queue_arn.endswith("-tenancy-dlq.fifo")
    assert attributes["FifoQueue"] == "true"


def test_the_refresh_function_is_told_the_tenancy_queue(aws_stack: LocalAwsStack) -> None:
    assert aws_stack.refresh_env()["TENANCY_QUEUE_URL"] == aws_stack.tenancy_queue_url
    assert "TENANCY_QUEUE_URL" not in aws_stack.notify_env()


def test_a_tenancy_queue_batch_carries_its_arn_and_message_group(aws_stack: LocalAwsStack) -> None:
    aws_stack.client("sqs").send_message(
        QueueUrl=aws_stack.tenancy_queue_url,
        MessageBody='{"keys": ["k"], "run_id": "r1"}',
        MessageGroupId="tenancy-a",
        MessageDeduplicationId="r1-chunk-0",
    )
    messages = aws_stack.receive_all(aws_stack.tenancy_queue_url)

    [record] = aws_stack.sqs_event(messages, aws_stack.tenancy_queue_url)["Records"]

    assert record["eventSourceARN"] == aws_stack.tenancy_queue_arn
    assert record["attributes"]["MessageGroupId"] == "tenancy-a"
    assert record["attributes"]["MessageDeduplicationId"] == "r1-chunk-0"
