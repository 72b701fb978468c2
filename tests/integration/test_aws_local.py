"""The local AWS stack has the shape template.yaml gives the deployed one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities import parameters

from cckm_refresh.ctm.credentials import CredentialsCache
from cckm_refresh.ctm.errors import CtmCredentialsError
from cckm_refresh.wiring import secret_loader
from devkit.aws_local import LocalAwsStack
from devkit.moto_server import MotoServer
from devkit.template import load_template

pytestmark = pytest.mark.integration


def _template_table() -> dict[str, Any]:
    properties: dict[str, Any] = load_template()["Resources"]["ResultsTable"]["Properties"]
    return properties


def test_the_table_has_the_templates_keys_index_and_stream(aws_stack: LocalAwsStack) -> None:
    expected = _template_table()

    table = aws_stack.client("dynamodb").describe_table(TableName=aws_stack.table_name)["Table"]

    assert table["KeySchema"] == expected["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(
        expected["AttributeDefinitions"], key=str
    )
    [index] = table["GlobalSecondaryIndexes"]
    [template_index] = expected["GlobalSecondaryIndexes"]
    assert (index["IndexName"], index["KeySchema"]) == ("by-key", template_index["KeySchema"])
    assert table["StreamSpecification"] == {
        "StreamEnabled": True,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_the_table_expires_items_by_expires_at(aws_stack: LocalAwsStack) -> None:
    ttl = aws_stack.client("dynamodb").describe_time_to_live(TableName=aws_stack.table_name)

    assert ttl["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED",
        "AttributeName": "expires_at",
    }


def test_the_work_queue_has_the_templates_visibility_and_redrive(
    moto_server: MotoServer,
) -> None:
    stack = LocalAwsStack.create(moto_server.endpoint_url, prefix="redrive", max_receive_count=3)

    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.work_queue_url, AttributeNames=["All"]
    )["Attributes"]

    assert attributes["VisibilityTimeout"] == "1800"
    assert attributes["SqsManagedSseEnabled"] == "true"
    assert json.loads(attributes["RedrivePolicy"]) == {
        "deadLetterTargetArn": stack.dead_letter_queue_arn,
        "maxReceiveCount": 3,
    }
    assert stack.refresh_env()["MAX_RECEIVE_COUNT"] == "3"


def test_max_receive_count_defaults_to_the_template_parameter(aws_stack: LocalAwsStack) -> None:
    default = load_template()["Parameters"]["MaxReceiveCount"]["Default"]

    assert aws_stack.max_receive_count == int(default)
    assert aws_stack.refresh_env()["MAX_RECEIVE_COUNT"] == str(default)


def test_a_message_moves_to_the_dead_letter_queue_after_max_receive_count(
    moto_server: MotoServer,
) -> None:
    # Given a work queue that allows two deliveries
    stack = LocalAwsStack.create(moto_server.endpoint_url, prefix="dlq", max_receive_count=2)
    stack.client("sqs").send_message(QueueUrl=stack.work_queue_url, MessageBody='{"keys": []}')

    # When it is received twice without being deleted
    counts = []
    for _ in range(2):
        [message] = stack.receive_all(stack.work_queue_url)
        counts.append(message["Attributes"]["ApproximateReceiveCount"])
        stack.release_messages(stack.work_queue_url, [message])

    # Then the next receive finds it in the dead-letter queue instead
    assert counts == ["1", "2"]
    assert stack.receive_all(stack.work_queue_url) == []
    assert [m["Body"] for m in stack.receive_all(stack.dead_letter_queue_url)] == ['{"keys": []}']


def test_received_messages_become_a_lambda_sqs_event(aws_stack: LocalAwsStack) -> None:
    aws_stack.client("sqs").send_message(
        QueueUrl=aws_stack.work_queue_url,
        MessageBody='{"keys": ["k"]}',
        MessageAttributes={"error": {"DataType": "String", "StringValue": "keys: bad"}},
    )
    messages = aws_stack.receive_all(aws_stack.work_queue_url)

    [record] = aws_stack.sqs_event(messages)["Records"]

    assert record["messageId"] == messages[0]["MessageId"]
    assert record["receiptHandle"] == messages[0]["ReceiptHandle"]
    assert record["body"] == '{"keys": ["k"]}'
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"]["error"] == {
        "stringValue": "keys: bad",
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == aws_stack.work_queue_arn
    assert record["awsRegion"] == "us-east-1"


def test_deleted_messages_are_gone(aws_stack: LocalAwsStack) -> None:
    aws_stack.client("sqs").send_message(QueueUrl=aws_stack.work_queue_url, MessageBody="{}")
    messages = aws_stack.receive_all(aws_stack.work_queue_url)

    aws_stack.delete_messages(aws_stack.work_queue_url, messages)

    attributes = aws_stack.client("sqs").get_queue_attributes(
        QueueUrl=aws_stack.work_queue_url, AttributeNames=["All"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_stream_events_carry_each_change_once_in_lambdas_shape(aws_stack: LocalAwsStack) -> None:
    # Given a run item written, then completed
    key = {"pk": "RUN#r1", "sk": "RUN"}
    aws_stack.table.put_item(Item={**key, "item_type": "RUN", "status": "RUNNING"})
    aws_stack.table.update_item(
        Key=key,
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": "COMPLETED"},
    )

    # When the stream is read twice, with one more write in between
    first = aws_stack.stream_event()["Records"]
    aws_stack.table.put_item(Item={"pk": "KEY#k1", "sk": "LATEST", "item_type": "KEY"})
    second = aws_stack.stream_event()["Records"]

    # Then each change comes exactly once, as Lambda delivers it
    modify = first[1]
    change = modify["dynamodb"]
    assert {
        "first read": [r["eventName"] for r in first],
        "second read": [r["eventName"] for r in second],
        "eventSource": modify["eventSource"],
        "eventVersion": modify["eventVersion"],
        "eventSourceARN": modify["eventSourceARN"],
        "awsRegion": modify["awsRegion"],
        "creation time an int": isinstance(change["ApproximateCreationDateTime"], int),
        "Keys": change["Keys"],
        "old status": change["OldImage"]["status"],
        "new status": change["NewImage"]["status"],
        "StreamViewType": change["StreamViewType"],
        "sequence and size": {"SequenceNumber", "SizeBytes"} & change.keys(),
    } == {
        "first read": ["INSERT", "MODIFY"],
        "second read": ["INSERT"],
        "eventSource": "aws:dynamodb",
        "eventVersion": "1.1",
        "eventSourceARN": aws_stack.table_stream_arn,
        "awsRegion": "us-east-1",
        "creation time an int": True,
        "Keys": {"pk": {"S": "RUN#r1"}, "sk": {"S": "RUN"}},
        "old status": {"S": "RUNNING"},
        "new status": {"S": "COMPLETED"},
        "StreamViewType": "NEW_AND_OLD_IMAGES",
        "sequence and size": {"SequenceNumber", "SizeBytes"},
    }
    assert aws_stack.stream_event() == {"Records": []}


def test_published_notifications_are_captured_with_subject_and_attributes(
    aws_stack: LocalAwsStack,
) -> None:
    capture = aws_stack.capture_notifications()

    aws_stack.client("sns").publish(
        TopicArn=aws_stack.topic_arn,
        Subject="Run r1 completed",
        Message=json.dumps({"event_type": "RUN_COMPLETED"}),
        MessageAttributes={"severity": {"DataType": "String", "StringValue": "INFO"}},
    )

    assert capture.messages() == [
        {
            "Subject": "Run r1 completed",
            "Message": {"event_type": "RUN_COMPLETED"},
            "MessageAttributes": {"severity": {"Type": "String", "Value": "INFO"}},
        }
    ]


def test_the_secret_holds_what_was_put(aws_stack: LocalAwsStack) -> None:
    aws_stack.put_secret({"refresh_token": "rt"})

    value = aws_stack.client("secretsmanager").get_secret_value(SecretId=aws_stack.secret_id)

    assert json.loads(value["SecretString"]) == {"refresh_token": "rt"}


def test_the_functions_secret_loader_reads_the_secret(aws_stack: LocalAwsStack) -> None:
    parameters.clear_caches()  # Powertools keeps its client and values process-wide
    aws_stack.put_secret({"refresh_token": "rt"})

    assert json.loads(secret_loader(aws_stack.secret_id)(False)) == {"refresh_token": "rt"}


def test_a_secret_that_does_not_exist_is_a_permanent_error_naming_the_sdks_code(
    aws_stack: LocalAwsStack,
) -> None:
    # Given a secret id that names nothing (Powertools wraps the SDK's error in its own)
    parameters.clear_caches()
    loader = secret_loader(aws_stack.secret_id + "-missing")

    # When the CTM client reads it, Then the SDK's code decides: permanent, and named
    with pytest.raises(CtmCredentialsError, match="ResourceNotFoundException") as caught:
        CredentialsCache(loader).get()
    assert not caught.value.transient


def test_function_environments_name_the_local_resources(aws_stack: LocalAwsStack) -> None:
    refresh = aws_stack.refresh_env(CTM_BASE_URL="https://127.0.0.1:9443")
    notify = aws_stack.notify_env()

    assert refresh["CTM_BASE_URL"] == "https://127.0.0.1:9443"
    assert refresh["CTM_SECRET_ID"] == aws_stack.secret_id
    assert refresh["RESULTS_TABLE"] == notify["RESULTS_TABLE"] == aws_stack.table_name
    assert refresh["WORK_QUEUE_URL"] == aws_stack.work_queue_url
    assert refresh["DEAD_LETTER_QUEUE_URL"] == aws_stack.dead_letter_queue_url
    assert notify["TOPIC_ARN"] == aws_stack.topic_arn
    assert refresh["AWS_ENDPOINT_URL"] == notify["AWS_ENDPOINT_URL"] == aws_stack.endpoint_url


def test_function_environments_are_the_templates_variables(aws_stack: LocalAwsStack) -> None:
    resources = load_template()["Resources"]

    for function, env in (
        ("RefreshFunction", aws_stack.refresh_env()),
        ("NotifyFunction", aws_stack.notify_env()),
    ):
        declared = set(resources[function]["Properties"]["Environment"]["Variables"])
        # WEBHOOK_SECRET_ID is AWS::NoValue without a webhook secret, as when deployed.
        assert set(env) == (declared - {"WEBHOOK_SECRET_ID"}) | {
            "AWS_ENDPOINT_URL",
            "AWS_DEFAULT_REGION",
        }
