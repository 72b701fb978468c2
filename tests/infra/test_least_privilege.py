"""Each function's role grants exactly the AWS calls its code makes, and what Lambda does for it.

The calls are read from the code (tests/infra/aws_calls.py), so adding a call without a grant,
or keeping a grant nothing calls, fails here. What Lambda itself does with the role (poll a
queue or a stream, write the logs, deliver to a failure destination, attach to a VPC) follows
from the template's own event sources and settings, through the small tables below.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.infra.aws_calls import ROOT, calls_of
from tests.infra.conftest import resources_of_type

# What Lambda calls with the function's role, by what the template configures.
SQS_POLLER = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
STREAM_POLLER = {
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
    "dynamodb:ListStreams",
}
FAILURE_DESTINATION = {"SQS": {"sqs:SendMessage"}}
LOG_WRITER = {"logs:CreateLogStream", "logs:PutLogEvents"}
TRACE_WRITER = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
VPC_ATTACHMENT = {
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}
# Reading a secret under a customer-managed key: Secrets Manager decrypts with the caller's
# kms:Decrypt, which the template grants only through Secrets Manager (kms:ViaService).
SECRET_KEY = {"kms:Decrypt"}
STREAM_ACTIONS = STREAM_POLLER


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def functions(sam_template: dict[str, Any]) -> dict[str, tuple[str, Path]]:
    """Each function's logical id -> (its role's logical id, its handler's source file)."""
    found = {}
    for name, resource in sam_template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        module = props["Handler"].rsplit(".", 1)[0]
        found[name] = (props["Role"]["Fn::GetAtt"][0], ROOT / props["CodeUri"] / f"{module}.py")
    return found


def grants(cfn_template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """The role's Allow statements; a conditional policy as if its condition held."""
    statements = []
    for entry in cfn_template["Resources"][role]["Properties"].get("Policies", []):
        policy = entry["Fn::If"][1] if "Fn::If" in entry else entry
        statements += [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    return statements


def granted_actions(cfn_template: dict[str, Any], role: str) -> set[str]:
    return {action for s in grants(cfn_template, role) for action in as_list(s["Action"])}


def resources_of(cfn_template: dict[str, Any], role: str, action: str) -> set[str]:
    return {
        json.dumps(resource, sort_keys=True)
        for s in grants(cfn_template, role)
        if action in as_list(s["Action"])
        for resource in as_list(s["Resource"])
    }


def mappings_of(cfn_template: dict[str, Any], function: str) -> list[dict[str, Any]]:
    return [
        m["Properties"]
        for m in resources_of_type(cfn_template, "AWS::Lambda::EventSourceMapping").values()
        if m["Properties"]["FunctionName"] == {"Ref": function}
    ]


def queues_read_by(cfn_template: dict[str, Any], function: str) -> set[str]:
    return {
        m["EventSourceArn"]["Fn::GetAtt"][0]
        for m in mappings_of(cfn_template, function)
        if m["EventSourceArn"]["Fn::GetAtt"][1] == "Arn"
    }


def lambda_actions(cfn_template: dict[str, Any], function: str) -> set[str]:
    """What Lambda calls with the function's role, from the template's configuration."""
    props = cfn_template["Resources"][function]["Properties"]
    actions = set(LOG_WRITER) if "LoggingConfig" in props else set()
    if "VpcConfig" in props:
        actions |= VPC_ATTACHMENT
    if props.get("TracingConfig", {}).get("Mode") == "Active":
        actions |= TRACE_WRITER
    for mapping in mappings_of(cfn_template, function):
        attribute = mapping["EventSourceArn"]["Fn::GetAtt"][1]
        actions |= STREAM_POLLER if attribute == "StreamArn" else SQS_POLLER
        destination = mapping.get("DestinationConfig", {}).get("OnFailure")
        if destination:
            actions |= FAILURE_DESTINATION["SQS"]
    for config in resources_of_type(cfn_template, "AWS::Lambda::EventInvokeConfig").values():
        if config["Properties"]["FunctionName"] == {"Ref": function}:
            on_failure = config["Properties"]["DestinationConfig"]["OnFailure"]
            actions |= FAILURE_DESTINATION[on_failure.get("Type", "SQS")]
    return actions


FUNCTIONS = ["RefreshFunction", "NotifyFunction"]


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_role_grants_exactly_what_the_code_and_lambda_call(
    sam_template: dict[str, Any], cfn_template: dict[str, Any], function: str
) -> None:
    role, handler = functions(sam_template)[function]
    code = calls_of(handler)
    needed = code.actions | lambda_actions(cfn_template, function)
    if "secretsmanager:GetSecretValue" in code.actions:
        needed |= SECRET_KEY & granted_actions(cfn_template, role)

    granted = granted_actions(cfn_template, role)

    assert code.resources_unread == []  # boto3 resources are not read: use clients
    assert {"missing": sorted(needed - granted), "unused": sorted(granted - needed)} == {
        "missing": [],
        "unused": [],
    }


def test_every_function_of_the_template_is_checked(sam_template: dict[str, Any]) -> None:
    assert sorted(functions(sam_template)) == sorted(FUNCTIONS)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_table_calls_are_granted_on_the_table_alone_unless_the_code_queries_an_index(
    sam_template: dict[str, Any], cfn_template: dict[str, Any], function: str
) -> None:
    role, handler = functions(sam_template)[function]
    code = calls_of(handler)
    table = json.dumps({"Fn::GetAtt": ["ResultsTable", "Arn"]}, sort_keys=True)

    item_actions = {
        a for a in granted_actions(cfn_template, role) if a.startswith("dynamodb:")
    } - STREAM_ACTIONS

    index = json.dumps({"Fn::Sub": "${ResultsTable.Arn}/index/by-key"}, sort_keys=True)
    assert item_actions
    for action in item_actions:
        # The by-key index only for Query, and only for the function that queries it (the
        # refresh function's sweep reads the open runs there)
        on_index = action == "dynamodb:Query" and code.uses_index
        expected = {table, index} if on_index else {table}
        assert resources_of(cfn_template, role, action) == expected, action


@pytest.mark.parametrize("function", FUNCTIONS)
def test_queue_polling_is_granted_on_exactly_the_queues_the_mappings_read(
    sam_template: dict[str, Any], cfn_template: dict[str, Any], function: str
) -> None:
    role, _ = functions(sam_template)[function]
    queues = {
        json.dumps({"Fn::GetAtt": [q, "Arn"]}, sort_keys=True)
        for q in queues_read_by(cfn_template, function)
    }

    for action in SQS_POLLER:
        assert resources_of(cfn_template, role, action) == queues, action


def test_the_refresh_role_sends_only_to_its_queues_its_dead_letter_queue_and_failure_queue(
    cfn_template: dict[str, Any],
) -> None:
    def arn(queue: str) -> str:
        return json.dumps({"Fn::GetAtt": [queue, "Arn"]}, sort_keys=True)

    sends = resources_of(cfn_template, "RefreshRole", "sqs:SendMessage")
    revisits = resources_of(cfn_template, "RefreshRole", "sqs:ChangeMessageVisibility")

    assert sends == {
        arn(q) for q in ("WorkQueue", "TenancyQueue", "DeadLetterQueue", "ScheduleFailureQueue")
    }
    assert revisits == {arn("WorkQueue"), arn("TenancyQueue")}


# --- the reader itself -----------------------------------------------------------------------


def test_the_reader_sees_client_calls_batches_paginators_transactions_and_powertools(
    tmp_path: Path,
) -> None:
    # Given a handler making one call of each kind, and calls that are not AWS calls
    handler = tmp_path / "app.py"
    handler.write_text(
        textwrap.dedent(
            """
            import boto3
            from aws_lambda_powertools.utilities import parameters

            sqs = boto3.client("sqs")
            db = boto3.client("dynamodb")

            def handler(event, context):
                sqs.send_message_batch(QueueUrl="q", Entries=[])
                sqs.purge_queue(QueueUrl="q")
                db.get_paginator("scan")
                db.transact_write_items(TransactItems=[{"Put": {}}, {"ConditionCheck": {}}])
                parameters.get_secret("s")
                event.publish("positional: not a client call")
                event.get_item(Unknown="not a member of GetItem's input")
            """
        ),
        encoding="utf-8",
    )

    # When it is read
    code = calls_of(handler)

    # Then every AWS call is mapped to the IAM action that authorises it, and nothing else
    assert code.services == {"sqs", "dynamodb"}
    assert code.actions == {
        "sqs:SendMessage",
        "sqs:PurgeQueue",
        "dynamodb:Scan",
        "dynamodb:PutItem",
        "dynamodb:ConditionCheckItem",
        "secretsmanager:GetSecretValue",
    }
