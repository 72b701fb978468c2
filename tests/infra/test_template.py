"""template.yaml, transformed by the SAM translator, is the system docs/reference.md (and the
README) describe."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cckm_refresh.request import parse_request
from cckm_refresh.triggers import is_sweep
from tests.infra.conftest import event_source_mapping, resources_of_type

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"

REFRESH_VARIABLES = {
    "CTM_BASE_URL",
    "CTM_SECRET_ID",
    "RESULTS_TABLE",
    "WORK_QUEUE_URL",
    "DEAD_LETTER_QUEUE_URL",
    "TENANCY_QUEUE_URL",
    "REFRESH_CONCURRENCY",
    "TENANCY_RATE_LIMIT",
    "CTM_TIMEOUT_SECONDS",
    "CTM_MAX_ATTEMPTS",
    "CTM_VERIFY_TLS",
    "MAX_RECEIVE_COUNT",
    "FANOUT_CHUNK_SIZE",
    "RESULT_RETENTION_DAYS",
}
NOTIFY_VARIABLES = {"RESULTS_TABLE", "TOPIC_ARN", "WEBHOOK_SECRET_ID", "RESULT_RETENTION_DAYS"}
POWERTOOLS_VARIABLES = {
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "POWERTOOLS_LOG_LEVEL",
}
# Emitted by Powertools itself (log_metrics(capture_cold_start_metric=True)), not by our calls.
POWERTOOLS_OWN_METRICS = {"ColdStart"}


def emitted_metrics() -> set[str]:
    """Every metric name the package emits: add_metric(name="...") and the count helpers'
    first argument (``_count("...")``, ``count_metric("...")``)."""
    names = set()
    for path in (ROOT / "layers/common/cckm_refresh").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            names |= {
                t.value
                for t in _metric_name_arguments(node)
                if isinstance(t, ast.Constant) and isinstance(t.value, str)
            }
    return names


def _metric_name_arguments(call: ast.Call) -> list[ast.expr]:
    """The argument naming the metric, if ``call`` emits one: add_metric's ``name=``, a
    count helper's first argument."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if called == "add_metric":
        return [k.value for k in call.keywords if k.arg == "name"]
    if called.endswith("count") or called == "count_metric":
        return call.args[:1]
    return []


# Actions AWS offers no resource-level permission for: a "*" resource is the narrowest there is.
UNSCOPABLE_ACTIONS = {
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
}


def properties(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    props: dict[str, Any] = template["Resources"][logical_id]["Properties"]
    return props


def variables(template: dict[str, Any], function: str) -> dict[str, Any]:
    env: dict[str, Any] = properties(template, function)["Environment"]["Variables"]
    return env


def allow_statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every Allow statement of every IAM role, unwrapped from Fn::If branches."""
    found = []
    for name, role in resources_of_type(template, "AWS::IAM::Role").items():
        for entry in role["Properties"].get("Policies", []):
            # A conditional policy is checked as if its condition held.
            policy = entry["Fn::If"][1] if "Fn::If" in entry else entry
            for statement in policy["PolicyDocument"]["Statement"]:
                if statement["Effect"] == "Allow":
                    found.append((name, statement))
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def matches(pattern: Any, event: Any) -> bool:
    """Lambda event-filter matching for the equality patterns the template uses."""
    if isinstance(pattern, dict):
        return isinstance(event, dict) and all(
            name in event and matches(sub, event[name]) for name, sub in pattern.items()
        )
    assert all(not isinstance(value, dict) for value in pattern), "only equality is modelled"
    return any(value in pattern for value in as_list(event))


def stream_filters(template: dict[str, Any]) -> list[Any]:
    mapping = event_source_mapping(template, "ResultsTable")
    return [json.loads(f["Pattern"]) for f in mapping["FilterCriteria"]["Filters"]]


def stream_record(event_name: str, new: dict[str, Any] | None) -> dict[str, Any]:
    change: dict[str, Any] = {"Keys": {"pk": {"S": "x"}, "sk": {"S": "y"}}}
    if new is not None:
        change["NewImage"] = {
            name: {"BOOL": value} if isinstance(value, bool) else {"S": value}
            for name, value in new.items()
        }
    return {"eventName": event_name, "eventSource": "aws:dynamodb", "dynamodb": change}


# --- event source mappings -------------------------------------------------------------------

# The queues the refresh function consumes, and each one's dead-letter queue.
CONSUMED_QUEUES = {"WorkQueue": "DeadLetterQueue", "TenancyQueue": "TenancyDeadLetterQueue"}


def test_the_work_queue_mapping_reports_partial_failures_with_bounded_concurrency(
    cfn_template: dict[str, Any], sam_template: dict[str, Any]
) -> None:
    mapping = event_source_mapping(cfn_template, "WorkQueue")

    assert mapping["FunctionName"] == {"Ref": "RefreshFunction"}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"] == {
        "MaximumConcurrency": {"Ref": "WorkQueueMaximumConcurrency"}
    }
    assert sam_template["Parameters"]["WorkQueueMaximumConcurrency"]["Default"] == 2
    assert 1 <= mapping["BatchSize"] <= 10
    assert 0 < mapping["MaximumBatchingWindowInSeconds"] <= 30


def test_the_tenancy_queue_mapping_takes_one_tenancy_at_a_time_and_scales_with_tenancies(
    cfn_template: dict[str, Any], sam_template: dict[str, Any]
) -> None:
    mapping = event_source_mapping(cfn_template, "TenancyQueue")
    parameter = sam_template["Parameters"]["TenancyQueueMaximumConcurrency"]

    assert mapping["FunctionName"] == {"Ref": "RefreshFunction"}
    # One chunk per invocation: a FIFO batch holds all its groups until it returns
    assert mapping["BatchSize"] == 1
    assert "MaximumBatchingWindowInSeconds" not in mapping  # FIFO mappings refuse a window
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"] == {
        "MaximumConcurrency": {"Ref": "TenancyQueueMaximumConcurrency"}
    }
    assert parameter["Default"] == 25


@pytest.mark.parametrize("name", ["WorkQueueMaximumConcurrency", "TenancyQueueMaximumConcurrency"])
def test_maximum_concurrency_parameters_accept_only_what_sqs_mappings_allow(
    sam_template: dict[str, Any], name: str
) -> None:
    parameter = sam_template["Parameters"][name]

    assert parameter["Type"] == "Number"
    assert (parameter["MinValue"], parameter["MaxValue"]) == (2, 1000)
    assert parameter["MinValue"] <= parameter["Default"] <= parameter["MaxValue"]


def test_refresh_concurrency_is_a_ceiling_of_256_defaulting_to_64(
    sam_template: dict[str, Any],
) -> None:
    parameter = sam_template["Parameters"]["RefreshConcurrency"]

    assert (parameter["Default"], parameter["MinValue"], parameter["MaxValue"]) == (64, 1, 256)


def test_the_stream_mapping_isolates_poison_records_and_gives_up_into_a_queue(
    cfn_template: dict[str, Any],
) -> None:
    mapping = event_source_mapping(cfn_template, "ResultsTable")

    assert mapping["FunctionName"] == {"Ref": "NotifyFunction"}
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["MaximumRetryAttempts"] == 3
    assert mapping["MaximumRecordAgeInSeconds"] == 3600
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["NotifyFailureQueue", "Arn"]
    }
    assert mapping["StartingPosition"] == "TRIM_HORIZON"


@pytest.mark.parametrize(
    ("event_name", "new", "delivered"),
    [
        ("MODIFY", {"item_type": "RUN", "status": "COMPLETED"}, True),
        ("INSERT", {"item_type": "RUN", "status": "COMPLETED"}, True),
        ("INSERT", {"item_type": "RUN", "status": "RUNNING"}, False),
        ("MODIFY", {"item_type": "RUN", "status": "RUNNING"}, False),
        ("MODIFY", {"item_type": "KEY", "changed": True}, True),
        ("MODIFY", {"item_type": "KEY"}, False),  # refreshed, nothing changed
        ("INSERT", {"item_type": "KEY", "changed": True}, False),
        ("INSERT", {"item_type": "REJECTED"}, True),
        ("INSERT", {"item_type": "RESULT", "status": "COMPLETED"}, False),
        ("MODIFY", {"item_type": "RESULT"}, False),
        ("INSERT", {"item_type": "NOTIFICATION"}, False),
        ("REMOVE", None, False),
    ],
)
def test_the_stream_filter_lets_through_only_records_that_can_notify(
    cfn_template: dict[str, Any], event_name: str, new: dict[str, Any] | None, delivered: bool
) -> None:
    record = stream_record(event_name, new)

    assert any(matches(f, record) for f in stream_filters(cfn_template)) is delivered


def test_each_mapping_failure_destination_is_writable_by_its_function(
    cfn_template: dict[str, Any],
) -> None:
    sends = {
        (role, json.dumps(resource, sort_keys=True))
        for role, statement in allow_statements(cfn_template)
        if "sqs:SendMessage" in as_list(statement["Action"])
        for resource in as_list(statement["Resource"])
    }

    notify_failures = json.dumps({"Fn::GetAtt": ["NotifyFailureQueue", "Arn"]}, sort_keys=True)
    schedule_failures = json.dumps({"Fn::GetAtt": ["ScheduleFailureQueue", "Arn"]}, sort_keys=True)
    assert ("NotifyRole", notify_failures) in sends
    assert ("RefreshRole", schedule_failures) in sends


# --- queues ----------------------------------------------------------------------------------


@pytest.mark.parametrize("queue", sorted(CONSUMED_QUEUES))
def test_a_consumed_queue_stays_invisible_for_six_function_timeouts(
    cfn_template: dict[str, Any], queue: str
) -> None:
    timeout = properties(cfn_template, "RefreshFunction")["Timeout"]
    visibility = properties(cfn_template, queue)["VisibilityTimeout"]

    assert visibility >= 6 * timeout


def test_both_queues_redrive_after_the_one_max_receive_count_the_function_is_told(
    cfn_template: dict[str, Any],
) -> None:
    redrives = {
        queue: properties(cfn_template, queue)["RedrivePolicy"] for queue in CONSUMED_QUEUES
    }

    for queue, dead_letters in CONSUMED_QUEUES.items():
        assert redrives[queue]["deadLetterTargetArn"] == {"Fn::GetAtt": [dead_letters, "Arn"]}
        assert redrives[queue]["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    assert variables(cfn_template, "RefreshFunction")["MAX_RECEIVE_COUNT"] == {
        "Ref": "MaxReceiveCount"
    }


@pytest.mark.parametrize("queue", ["TenancyQueue", "TenancyDeadLetterQueue"])
def test_the_tenancy_queues_are_fifo_deduplicating_and_throttling_per_tenancy(
    cfn_template: dict[str, Any], queue: str
) -> None:
    props = properties(cfn_template, queue)

    assert props["FifoQueue"] is True
    # The function sets MessageDeduplicationId itself.
    assert props["ContentBasedDeduplication"] is False
    assert props["DeduplicationScope"] == "messageGroup"
    assert props["FifoThroughputLimit"] == "perMessageGroupId"
    assert "QueueName" not in props  # generated (CloudFormation adds .fifo): stacks coexist


def test_the_tenancy_queue_url_reaches_the_refresh_function(cfn_template: dict[str, Any]) -> None:
    assert variables(cfn_template, "RefreshFunction")["TENANCY_QUEUE_URL"] == {
        "Ref": "TenancyQueue"
    }


def test_every_queue_refuses_requests_without_tls(cfn_template: dict[str, Any]) -> None:
    queues = resources_of_type(cfn_template, "AWS::SQS::Queue")
    guarded = {
        queue["Ref"]
        for policy in resources_of_type(cfn_template, "AWS::SQS::QueuePolicy").values()
        if any(
            s.get("Effect") == "Deny"
            and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            for s in policy["Properties"]["PolicyDocument"]["Statement"]
        )
        for queue in policy["Properties"]["Queues"]
    }

    assert guarded == set(queues)


def test_every_queue_and_topic_is_encrypted(cfn_template: dict[str, Any]) -> None:
    queues = resources_of_type(cfn_template, "AWS::SQS::Queue")
    topics = resources_of_type(cfn_template, "AWS::SNS::Topic")

    assert len(queues) == 7
    assert all(q["Properties"]["SqsManagedSseEnabled"] is True for q in queues.values())
    assert properties(cfn_template, "NotificationTopic")["KmsMasterKeyId"] == "alias/aws/sns"
    assert all("KmsMasterKeyId" in t["Properties"] for t in topics.values())


# --- table -----------------------------------------------------------------------------------


def test_the_table_is_contract_section_5_on_demand_encrypted_and_retained(
    cfn_template: dict[str, Any],
) -> None:
    table = cfn_template["Resources"]["ResultsTable"]
    props = table["Properties"]
    [index] = props["GlobalSecondaryIndexes"]

    assert {
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": {
            (a["AttributeName"], a["AttributeType"]) for a in props["AttributeDefinitions"]
        },
        "index": (index["IndexName"], index["KeySchema"]),
        "StreamSpecification": props["StreamSpecification"],
        "TimeToLiveSpecification": props["TimeToLiveSpecification"],
        "BillingMode": props["BillingMode"],
        "SSEEnabled is True": props["SSESpecification"]["SSEEnabled"] is True,
        "PointInTimeRecoverySpecification": props["PointInTimeRecoverySpecification"],
        "DeletionPolicy, UpdateReplacePolicy": (
            table["DeletionPolicy"],
            table["UpdateReplacePolicy"],
        ),
    } == {
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": {("pk", "S"), ("sk", "S"), ("gsi1pk", "S"), ("gsi1sk", "S")},
        "index": (
            "by-key",
            [
                {"AttributeName": "gsi1pk", "KeyType": "HASH"},
                {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
            ],
        ),
        "StreamSpecification": {"StreamViewType": "NEW_AND_OLD_IMAGES"},
        "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
        "BillingMode": "PAY_PER_REQUEST",
        "SSEEnabled is True": True,
        "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
        "DeletionPolicy, UpdateReplacePolicy": ("Retain", "Retain"),
    }


# --- functions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "expected", "foreign"),
    [
        ("RefreshFunction", REFRESH_VARIABLES, NOTIFY_VARIABLES - REFRESH_VARIABLES),
        ("NotifyFunction", NOTIFY_VARIABLES, REFRESH_VARIABLES - NOTIFY_VARIABLES),
    ],
)
def test_every_contract_variable_is_set_on_its_function_and_no_other(
    cfn_template: dict[str, Any], function: str, expected: set[str], foreign: set[str]
) -> None:
    names = set(variables(cfn_template, function))

    assert expected | POWERTOOLS_VARIABLES <= names
    assert not names & foreign


def test_the_webhook_variable_is_absent_unless_a_webhook_secret_is_given(
    cfn_template: dict[str, Any],
) -> None:
    assert variables(cfn_template, "NotifyFunction")["WEBHOOK_SECRET_ID"] == {
        "Fn::If": ["HasWebhookSecret", {"Ref": "WebhookSecretArn"}, {"Ref": "AWS::NoValue"}]
    }


def test_tls_verification_cannot_be_switched_off_by_deployment(
    cfn_template: dict[str, Any],
) -> None:
    assert variables(cfn_template, "RefreshFunction")["CTM_VERIFY_TLS"] == "true"


def test_functions_run_python313_on_arm64_with_json_logs_no_tracing_and_the_one_layer(
    cfn_template: dict[str, Any],
) -> None:
    [layer] = resources_of_type(cfn_template, "AWS::Lambda::LayerVersion")
    for function in ("RefreshFunction", "NotifyFunction"):
        props = properties(cfn_template, function)
        assert (props["Runtime"], props["Architectures"]) == ("python3.13", ["arm64"])
        assert props["LoggingConfig"]["LogFormat"] == "JSON"
        assert props["LoggingConfig"]["ApplicationLogLevel"] == {"Ref": "LogLevel"}
        # Decided against (README, Operations): per-call latency metrics and run_id in logs.
        assert "TracingConfig" not in props
        # One copy of Powertools: our layer only, never the public Powertools layer as well.
        assert props["Layers"] == [{"Ref": layer}]


def test_the_layer_is_built_by_its_makefile_for_python313_arm64_with_powertools_pinned(
    sam_template: dict[str, Any],
) -> None:
    layer = sam_template["Resources"]["CommonLayer"]
    requirements = (ROOT / "layers/common/requirements.txt").read_text(encoding="utf-8")
    makefile = (ROOT / "layers/common/Makefile").read_text(encoding="utf-8")

    # sam build runs layers/common/Makefile's build-CommonLayer (pip for cp313 arm64, bytecode)
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64"}
    assert re.search(r"^build-CommonLayer:", makefile, re.MULTILINE)
    assert "--python-version 3.13" in makefile
    assert "manylinux2014_aarch64" in makefile
    assert layer["Properties"]["ContentUri"] == "layers/common/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert re.search(r"^aws-lambda-powertools==\d+\.\d+\.\d+$", requirements, re.MULTILINE)


def test_the_refresh_function_joins_a_vpc_only_when_subnets_are_given(
    cfn_template: dict[str, Any],
) -> None:
    vpc = properties(cfn_template, "RefreshFunction")["VpcConfig"]

    assert vpc["Fn::If"][0] == "InVpc"
    assert vpc["Fn::If"][2] == {"Ref": "AWS::NoValue"}
    assert "VpcConfig" not in properties(cfn_template, "NotifyFunction")


# --- least privilege -------------------------------------------------------------------------


def test_no_iam_statement_allows_a_wildcard_action(cfn_template: dict[str, Any]) -> None:
    wildcards = [
        (role, action)
        for role, statement in allow_statements(cfn_template)
        for action in as_list(statement["Action"])
        if "*" in action
    ]

    assert wildcards == []


def test_a_wildcard_resource_appears_only_where_aws_offers_nothing_narrower(
    cfn_template: dict[str, Any],
) -> None:
    broad = [
        (role, action)
        for role, statement in allow_statements(cfn_template)
        if "*" in as_list(statement["Resource"])
        for action in as_list(statement["Action"])
        if action not in UNSCOPABLE_ACTIONS
    ]

    assert broad == []


def test_function_roles_carry_no_managed_policies(cfn_template: dict[str, Any]) -> None:
    # SAM's default execution policies grant queue and stream access on every resource.
    roles = resources_of_type(cfn_template, "AWS::IAM::Role")

    assert all(not role["Properties"].get("ManagedPolicyArns") for role in roles.values())


def test_the_refresh_role_reads_only_the_ctm_secret(cfn_template: dict[str, Any]) -> None:
    reads = [
        statement["Resource"]
        for role, statement in allow_statements(cfn_template)
        if role == "RefreshRole" and "secretsmanager:GetSecretValue" in as_list(statement["Action"])
    ]

    assert reads == [{"Fn::If": ["CreateCtmSecret", {"Ref": "CtmSecret"}, {"Ref": "CtmSecretArn"}]}]


# --- schedule --------------------------------------------------------------------------------


def test_the_schedule_sends_the_contract_envelope_under_a_generated_name(
    cfn_template: dict[str, Any], sam_template: dict[str, Any]
) -> None:
    schedule = refresh_schedule(cfn_template)
    target = schedule["Properties"]["Target"]
    default_request = sam_template["Parameters"]["ScheduledRequest"]["Default"]

    assert "Name" not in schedule["Properties"]  # OmitName: dev and prod stacks can coexist
    text = target["Input"]["Fn::Sub"].replace("${ScheduledRequest}", default_request)
    assert json.loads(text) == {
        "scheduled_time": "<aws.scheduler.scheduled-time>",
        "execution_id": "<aws.scheduler.execution-id>",
        "request": {"selector": {"all": True}, "reason": "scheduled refresh"},
    }
    assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["ScheduleFailureQueue", "Arn"]}}


def refresh_schedule(cfn_template: dict[str, Any]) -> dict[str, Any]:
    """The schedule that starts refresh runs (the other one is the sweep's)."""
    schedules = resources_of_type(cfn_template, "AWS::Scheduler::Schedule")
    [name] = [n for n in schedules if n.endswith("Schedule") and "Sweep" not in n]
    return schedules[name]


def test_the_sweep_schedule_sends_the_sweep_event_every_15_minutes(
    cfn_template: dict[str, Any],
) -> None:
    schedules = resources_of_type(cfn_template, "AWS::Scheduler::Schedule")
    [sweep] = [s for n, s in schedules.items() if "Sweep" in n]
    properties = sweep["Properties"]
    assert json.loads(properties["Target"]["Input"]) == {"sweep": "stuck-runs"}
    assert is_sweep(json.loads(properties["Target"]["Input"]))
    assert properties["ScheduleExpression"] == "rate(15 minutes)"
    assert properties["State"] == "ENABLED"


def test_the_default_scheduled_request_is_a_valid_request(sam_template: dict[str, Any]) -> None:
    default_request = sam_template["Parameters"]["ScheduledRequest"]["Default"]

    assert parse_request(json.loads(default_request)).reason == "scheduled refresh"


def test_failed_scheduled_invocations_land_on_the_schedule_failure_queue(
    cfn_template: dict[str, Any],
) -> None:
    [config] = resources_of_type(cfn_template, "AWS::Lambda::EventInvokeConfig").values()

    assert config["Properties"]["FunctionName"] == {"Ref": "RefreshFunction"}
    assert config["Properties"]["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["ScheduleFailureQueue", "Arn"]
    }


# --- operations ------------------------------------------------------------------------------


def test_alarms_watch_errors_dead_letters_iterator_age_and_failed_keys(
    cfn_template: dict[str, Any],
) -> None:
    watched = {
        (a["Properties"]["MetricName"], json.dumps(a["Properties"]["Dimensions"][0]["Value"]))
        for a in resources_of_type(cfn_template, "AWS::CloudWatch::Alarm").values()
    }

    def queue(name: str) -> str:
        return json.dumps({"Fn::GetAtt": [name, "QueueName"]})

    assert {
        ("Errors", json.dumps({"Ref": "RefreshFunction"})),
        ("Errors", json.dumps({"Ref": "NotifyFunction"})),
        ("ApproximateNumberOfMessagesVisible", queue("DeadLetterQueue")),
        ("ApproximateNumberOfMessagesVisible", queue("TenancyDeadLetterQueue")),
        ("ApproximateAgeOfOldestMessage", queue("TenancyQueue")),
        ("ApproximateNumberOfMessagesVisible", queue("ScheduleFailureQueue")),
        ("ApproximateNumberOfMessagesVisible", queue("NotifyFailureQueue")),
        ("IteratorAge", json.dumps({"Ref": "NotifyFunction"})),
        ("KeysFailed", json.dumps({"Ref": "AWS::StackName"})),
    } <= watched


def test_the_dashboard_shows_every_metric_the_code_emits(cfn_template: dict[str, Any]) -> None:
    body, values = properties(cfn_template, "Dashboard")["DashboardBody"]["Fn::Sub"]
    rendered = re.sub(r"\$\{[^}]+\}", "x", body.replace("${Namespace}", values["Namespace"]))

    shown = {
        metric[1]
        for widget in json.loads(rendered)["widgets"]
        for metric in widget["properties"]["metrics"]
        if metric[0] == "CckmOciRefresh"
    }
    assert len(emitted_metrics()) >= 10  # the reader sees the package's metrics
    assert shown == emitted_metrics() | POWERTOOLS_OWN_METRICS


def test_refresh_latency_is_shown_as_percentiles_of_calls(cfn_template: dict[str, Any]) -> None:
    body, _ = properties(cfn_template, "Dashboard")["DashboardBody"]["Fn::Sub"]
    widgets = json.loads(re.sub(r"\$\{[^}]+\}", "x", body))["widgets"]

    [latency] = [w for w in widgets if "RefreshLatency" in json.dumps(w)]
    stats = [m[-1]["stat"] for m in latency["properties"]["metrics"]]
    assert stats == ["p50", "p99"]


def test_the_dashboard_shows_the_depth_of_every_queue_the_function_reads_and_their_dlqs(
    cfn_template: dict[str, Any],
) -> None:
    body, _ = properties(cfn_template, "Dashboard")["DashboardBody"]["Fn::Sub"]
    rendered = re.sub(r"\$\{([A-Za-z]+)\.QueueName\}", r"\1", body)
    rendered = re.sub(r"\$\{[^}]+\}", "x", rendered)

    depths = {
        metric[3]
        for widget in json.loads(rendered)["widgets"]
        for metric in widget["properties"]["metrics"]
        if metric[:2] == ["AWS/SQS", "ApproximateNumberOfMessagesVisible"]
    }
    ages = {
        metric[3]
        for widget in json.loads(rendered)["widgets"]
        for metric in widget["properties"]["metrics"]
        if metric[:2] == ["AWS/SQS", "ApproximateAgeOfOldestMessage"]
    }
    assert depths >= set(CONSUMED_QUEUES) | set(CONSUMED_QUEUES.values())
    assert ages >= set(CONSUMED_QUEUES)


def test_every_parameter_is_in_exactly_one_console_group(sam_template: dict[str, Any]) -> None:
    groups = sam_template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [name for group in groups for name in group["Parameters"]]

    assert sorted(grouped) == sorted(sam_template["Parameters"])


def test_outputs_name_queue_table_topic_secret_and_dashboard(
    cfn_template: dict[str, Any],
) -> None:
    assert {
        "WorkQueueUrl",
        "DeadLetterQueueUrl",
        "ResultsTableName",
        "NotificationTopicArn",
        "CtmSecretArn",
        "DashboardUrl",
    } <= set(cfn_template["Outputs"])


# --- deployment and deletion -----------------------------------------------------------------

# The queues the functions consume; every other queue is where something failed ends up.
WORK_QUEUES = {"WorkQueue", "TenancyQueue"}


def test_dead_letter_queues_and_log_groups_outlive_the_stack(cfn_template: dict[str, Any]) -> None:
    queues = resources_of_type(cfn_template, "AWS::SQS::Queue")
    kept = {
        name
        for name, resource in cfn_template["Resources"].items()
        if (resource.get("DeletionPolicy"), resource.get("UpdateReplacePolicy"))
        == ("Retain", "Retain")
    }
    log_groups = set(resources_of_type(cfn_template, "AWS::Logs::LogGroup"))

    assert len(queues) - len(WORK_QUEUES) == 5
    assert set(queues) - WORK_QUEUES <= kept
    assert log_groups == {"RefreshLogGroup", "NotifyLogGroup"}
    assert log_groups <= kept
    assert "ResultsTable" in kept


def test_log_retention_is_a_parameter_cloudwatch_accepts(
    cfn_template: dict[str, Any], sam_template: dict[str, Any]
) -> None:
    parameter = sam_template["Parameters"]["LogRetentionDays"]

    assert parameter["Default"] == 90
    assert {90, 365, 3653} <= set(parameter["AllowedValues"])
    for group in resources_of_type(cfn_template, "AWS::Logs::LogGroup").values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_the_template_explains_itself_without_documents_it_does_not_ship() -> None:
    text = (ROOT / "template.yaml").read_text(encoding="utf-8")

    assert "CONTRACT" not in text
    assert "shared/" not in text


def test_the_placeholder_secret_says_what_to_store_and_holds_no_credential(
    sam_template: dict[str, Any],
) -> None:
    from cckm_refresh.ctm.credentials import CtmCredentials
    from cckm_refresh.ctm.errors import CtmCredentialsError

    placeholder = sam_template["Resources"]["CtmSecret"]["Properties"]["SecretString"]
    note = json.loads(placeholder)["note"]

    assert all(field in note for field in ("refresh_token", "username", "password", "ca_bundle"))
    with pytest.raises(CtmCredentialsError, match="holds no refresh_token"):
        _ = CtmCredentials.parse(placeholder).method


def test_an_event_rule_exists_only_with_a_pattern_and_may_invoke_only_the_function(
    cfn_template: dict[str, Any], sam_template: dict[str, Any]
) -> None:
    rule = cfn_template["Resources"]["RefreshEventRule"]
    permission = cfn_template["Resources"]["RefreshEventRulePermission"]
    [target] = rule["Properties"]["Targets"]

    assert sam_template["Parameters"]["EventPattern"]["Default"] == ""
    assert cfn_template["Conditions"]["HasEventPattern"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "EventPattern"}, ""]}]
    }
    assert (rule["Condition"], permission["Condition"]) == ("HasEventPattern", "HasEventPattern")
    assert rule["Properties"]["EventPattern"] == {"Ref": "EventPattern"}
    assert target["Arn"] == {"Fn::GetAtt": ["RefreshFunction", "Arn"]}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["ScheduleFailureQueue", "Arn"]}}
    assert permission["Properties"]["Principal"] == "events.amazonaws.com"
    assert permission["Properties"]["SourceArn"] == {"Fn::GetAtt": ["RefreshEventRule", "Arn"]}
    assert permission["Properties"]["FunctionName"] == {"Ref": "RefreshFunction"}


def test_the_scheduler_role_invokes_only_the_refresh_function_for_this_account(
    cfn_template: dict[str, Any],
) -> None:
    role = cfn_template["Resources"]["SchedulerRole"]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    schedules = resources_of_type(cfn_template, "AWS::Scheduler::Schedule").values()
    granted = {
        (action, json.dumps(statement["Resource"]))
        for _, statement in allow_statements(cfn_template)
        if statement in role["Policies"][0]["PolicyDocument"]["Statement"]
        for action in as_list(statement["Action"])
    }

    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    for schedule in schedules:
        assert schedule["Properties"]["Target"]["RoleArn"] == {
            "Fn::GetAtt": ["SchedulerRole", "Arn"]
        }
    assert granted == {
        ("lambda:InvokeFunction", json.dumps({"Fn::GetAtt": ["RefreshFunction", "Arn"]})),
        ("sqs:SendMessage", json.dumps({"Fn::GetAtt": ["ScheduleFailureQueue", "Arn"]})),
    }


def test_the_aws_endpoint_variable_is_declared_for_sam_local_but_never_deployed(
    sam_template: dict[str, Any],
) -> None:
    variables = sam_template["Globals"]["Function"]["Environment"]["Variables"]

    assert variables["AWS_ENDPOINT_URL"] == {"Ref": "AWS::NoValue"}


# --- samples and configuration ---------------------------------------------------------------


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
    return event


def test_the_schedule_sample_is_the_scheduler_envelope() -> None:
    event = load_event("schedule.json")

    assert set(event) == {"scheduled_time", "execution_id", "request"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["scheduled_time"])
    assert event["request"] == {"selector": {"all": True}, "reason": "nightly refresh"}


def test_the_eventbridge_sample_carries_a_valid_request_as_detail() -> None:
    event = load_event("eventbridge.json")

    assert {"version", "id", "detail-type", "source", "time", "detail"} <= set(event)
    request = parse_request(event["detail"])
    assert (len(request.key_ids), len(request.ocids)) == (1, 1)


def test_the_sqs_sample_is_an_aws_shaped_batch_of_valid_requests() -> None:
    records = load_event("sqs.json")["Records"]

    assert len(records) >= 2
    for record in records:
        assert record["eventSource"] == "aws:sqs"
        assert record["attributes"]["ApproximateReceiveCount"] == "1"
        assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()  # noqa: S324
        parse_request(json.loads(record["body"]))  # raises when the body is not a request


def test_the_stream_sample_is_a_run_turning_completed_that_passes_the_filter(
    cfn_template: dict[str, Any],
) -> None:
    [record] = load_event("dynamodb-stream.json")["Records"]
    change = record["dynamodb"]

    assert (record["eventSource"], record["eventName"]) == ("aws:dynamodb", "MODIFY")
    assert change["OldImage"]["status"] == {"S": "RUNNING"}
    assert change["NewImage"]["status"] == {"S": "COMPLETED"}
    assert change["Keys"] == {"pk": change["NewImage"]["pk"], "sk": {"S": "RUN"}}
    assert any(matches(f, record) for f in stream_filters(cfn_template))


# --- lint ------------------------------------------------------------------------------------


def test_cfn_lint_with_the_serverless_rules_is_clean() -> None:
    cfn_lint = shutil.which("cfn-lint", path=str(Path(sys.executable).parent))
    assert cfn_lint is not None

    result = subprocess.run(
        [cfn_lint, "template.yaml", "-a", "cfn_lint_serverless.rules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
