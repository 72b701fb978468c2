"""The stateful AWS resources of ``template.yaml``, recreated on a local AWS endpoint (moto).

The table, the work queue, the tenancy queue (FIFO), their dead-letter queues, the topic and the
CTM secret are created from the template's OWN properties (key schema, index, stream, TTL, queue
attributes, FIFO settings, redrive), so the local system has the shape of the deployed one and
drifts with it, never apart.

    server = MotoServer(); server.start()
    stack = LocalAwsStack.create(server.endpoint_url, prefix="demo", max_receive_count=5)
    env = stack.refresh_env(CTM_BASE_URL="https://127.0.0.1:8443")

It also turns what moto holds back into the events Lambda would deliver: an SQS batch from
received messages, a DynamoDB stream batch from the stream's new records, and the SNS
envelopes a subscribed queue received.

Run as a module, it serves a stack at fixed loopback addresses until Ctrl-C, for
``sam local invoke --env-vars events/env.local.json`` (the file is what it prints):

    python -m devkit.aws_local --port 5000 --prefix local \
        --ctm-ca ctm-ca.pem --ctm-user admin --ctm-password '...'
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from devkit.lambda_events import epoch_seconds, sqs_event
from devkit.moto_server import MotoServer
from devkit.template import (
    CTM_EMULATOR_URL,
    CTM_PLACEHOLDER_URL,
    DEAD_LETTER_QUEUE_ID,
    LOCAL_PORT,
    LOCAL_PREFIX,
    NO_VALUE,
    NOTIFY_FUNCTION_ID,
    REFRESH_FUNCTION_ID,
    REGION,
    SECRET_ID,
    TABLE_ID,
    TEMPLATE,
    TENANCY_DEAD_LETTER_QUEUE_ID,
    TENANCY_QUEUE_ID,
    TOPIC_ID,
    WORK_QUEUE_ID,
    Intrinsics,
    load_template,
    parameter_defaults,
)

# The template's functions, whose environments the local stack resolves.
FUNCTIONS = (REFRESH_FUNCTION_ID, NOTIFY_FUNCTION_ID)
# CloudFormation queue properties that are SQS queue attributes under the same name.
_QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "SqsManagedSseEnabled",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
)


@dataclass
class NotificationCapture:
    """A queue subscribed to the topic; collects every notification published after creation."""

    sqs: Any
    queue_url: str
    subscription_arn: str
    _captured: list[dict[str, Any]] = field(default_factory=list)

    def messages(self) -> list[dict[str, Any]]:
        """Every notification so far, oldest first: ``{Subject, Message, MessageAttributes}``.

        ``Message`` is the parsed JSON body (the raw text when it is not JSON);
        ``MessageAttributes`` is SNS's own shape, ``{"event_type": {"Type": "String",
        "Value": "RUN_COMPLETED"}}``.
        """
        for message in _receive_all(self.sqs, self.queue_url, wait=False):
            envelope = json.loads(message["Body"])
            try:
                body: Any = json.loads(envelope["Message"])
            except ValueError:
                body = envelope["Message"]
            self._captured.append(
                {
                    "Subject": envelope.get("Subject"),
                    "Message": body,
                    "MessageAttributes": envelope.get("MessageAttributes", {}),
                }
            )
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return list(self._captured)


def _receive_all(sqs: Any, queue_url: str, wait: bool) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
            # Long-poll only while nothing has arrived yet: wait=True waits for the first.
            WaitTimeSeconds=5 if wait and not messages else 0,
        ).get("Messages", [])
        if not batch:
            return messages
        messages += batch


# --- the local stack -------------------------------------------------------------------------


@dataclass
class LocalAwsStack:
    """The template's stateful resources on a local endpoint, named by a unique prefix."""

    endpoint_url: str
    prefix: str
    region: str
    max_receive_count: int
    table_name: str
    table_stream_arn: str
    work_queue_url: str
    work_queue_arn: str
    dead_letter_queue_url: str
    dead_letter_queue_arn: str
    tenancy_queue_url: str
    tenancy_queue_arn: str
    tenancy_dead_letter_queue_url: str
    tenancy_dead_letter_queue_arn: str
    topic_arn: str
    secret_id: str
    # The functions' own Environment.Variables of template.yaml, resolved for this stack.
    function_environments: Mapping[str, Mapping[str, str]]
    # Every variable each function declares (its own, then Globals'), set or AWS::NoValue.
    declared_variables: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    _shard_iterators: dict[str, str | None] = field(default_factory=dict)
    _captures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- creation ---

    @classmethod
    def create(
        cls,
        endpoint_url: str,
        prefix: str | None = None,
        max_receive_count: int | None = None,
        region: str = REGION,
        template_path: Path = TEMPLATE,
    ) -> LocalAwsStack:
        """Create table, queues (work, tenancy FIFO, their dead-letter queues), topic and secret
        as ``template.yaml`` defines them.

        Names start with ``prefix`` (random when omitted), so stacks never collide on one
        server. ``max_receive_count`` overrides the ``MaxReceiveCount`` parameter's default.
        """
        prefix = prefix or f"s{uuid.uuid4().hex[:10]}"
        template = load_template(template_path)
        resources = template["Resources"]
        refs = _references(template, prefix, region, max_receive_count)
        attributes: dict[str, str] = {}
        conditions = template.get("Conditions", {})
        if not Intrinsics(refs, attributes, conditions).holds("CreateCtmSecret"):
            raise ValueError("the local stack always creates its CTM secret")
        client = _clients(endpoint_url, region)
        table_name, stream_arn = _create_table(client("dynamodb"), prefix, resources)
        queues = _create_queues(client("sqs"), prefix, resources, refs, attributes)
        topic_arn = _create_topic(client("sns"), prefix, resources, refs, attributes)
        secret_arn = _create_secret(client("secretsmanager"), prefix, resources)
        refs |= {TABLE_ID: table_name, TOPIC_ID: topic_arn, SECRET_ID: secret_arn}
        environments = _environments(resources, Intrinsics(refs, attributes, conditions))
        return cls(
            endpoint_url=endpoint_url,
            prefix=prefix,
            region=region,
            # What the function is told must be what the queue does: read it back from the queue.
            max_receive_count=_max_receive_count(client("sqs"), queues[WORK_QUEUE_ID][0]),
            table_name=table_name,
            table_stream_arn=stream_arn,
            work_queue_url=queues[WORK_QUEUE_ID][0],
            work_queue_arn=queues[WORK_QUEUE_ID][1],
            dead_letter_queue_url=queues[DEAD_LETTER_QUEUE_ID][0],
            dead_letter_queue_arn=queues[DEAD_LETTER_QUEUE_ID][1],
            tenancy_queue_url=queues[TENANCY_QUEUE_ID][0],
            tenancy_queue_arn=queues[TENANCY_QUEUE_ID][1],
            tenancy_dead_letter_queue_url=queues[TENANCY_DEAD_LETTER_QUEUE_ID][0],
            tenancy_dead_letter_queue_arn=queues[TENANCY_DEAD_LETTER_QUEUE_ID][1],
            topic_arn=topic_arn,
            secret_id=secret_arn,
            function_environments=environments,
            declared_variables={f: _declared_variables(template, f) for f in FUNCTIONS},
        )

    # --- clients ---

    def client(self, service: str) -> Any:
        """A boto3 client of ``service`` on this stack's endpoint and region."""
        return _clients(self.endpoint_url, self.region)(service)

    @property
    def table(self) -> Any:
        """The results table as a boto3 ``Table`` resource."""
        resource = boto3.resource(
            "dynamodb", endpoint_url=self.endpoint_url, region_name=self.region
        )
        return resource.Table(self.table_name)

    # --- function environments (docs/reference.md 2) ---

    def refresh_env(self, **overrides: str) -> dict[str, str]:
        """The refresh function's variables as the template sets them, plus ``AWS_ENDPOINT_URL``.

        ``CTM_BASE_URL`` is a placeholder unless overridden. Globals (Powertools settings) are
        left to the caller's environment.
        """
        return self._with_aws(self.function_environments[REFRESH_FUNCTION_ID], overrides)

    def notify_env(self, **overrides: str) -> dict[str, str]:
        """The notify function's variables as the template sets them, plus ``AWS_ENDPOINT_URL``."""
        return self._with_aws(self.function_environments[NOTIFY_FUNCTION_ID], overrides)

    def sam_env_vars(self, ctm_base_url: str = CTM_EMULATOR_URL) -> dict[str, dict[str, str]]:
        """The ``sam local invoke --env-vars`` file for this stack, keyed by function logical id.

        SAM CLI sets only variables the template declares, and leaves intrinsics it cannot
        resolve as text, so every function variable is given: the stack's values, ``""`` for
        one the template leaves out (read as unset), the secret by name (its ARN ends in a
        random suffix), and ``AWS_ENDPOINT_URL`` (declared in Globals for this) = this stack.
        """
        overrides = {
            "CTM_BASE_URL": ctm_base_url,
            "CTM_SECRET_ID": _secret_name(self.prefix),
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }
        files = {}
        for function in FUNCTIONS:
            env = self.function_environments[function]
            names = [
                n for n in self.declared_variables[function] if not n.startswith("POWERTOOLS_")
            ]
            files[function] = {name: overrides.get(name, env.get(name, "")) for name in names}
        return files

    def _with_aws(self, env: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
        return {
            **env,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            **overrides,
        }

    # --- secret ---

    def put_secret(self, value: str | Mapping[str, Any]) -> None:
        """Store the CTM credentials (a JSON object or a bare string, docs/reference.md 3)."""
        text = value if isinstance(value, str) else json.dumps(value)
        self.client("secretsmanager").put_secret_value(SecretId=self.secret_id, SecretString=text)

    # --- queues ---

    def receive_all(self, queue_url: str, wait: bool = False) -> list[dict[str, Any]]:
        """Receive every visible message of the queue (deleting none); each is now in flight.

        Messages carry ``Attributes`` (``ApproximateReceiveCount``...) and
        ``MessageAttributes``. ``wait=True`` long-polls until the first message arrives.
        """
        return _receive_all(self.client("sqs"), queue_url, wait)

    def delete_messages(self, queue_url: str, messages: Sequence[Mapping[str, Any]]) -> None:
        """Delete received messages (what Lambda does for a successful batch)."""
        sqs = self.client("sqs")
        for message in messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])

    def release_messages(self, queue_url: str, messages: Sequence[Mapping[str, Any]]) -> None:
        """Make received messages visible again now, as if their visibility timeout ran out."""
        sqs = self.client("sqs")
        for message in messages:
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )

    def sqs_event(
        self, messages: Sequence[Mapping[str, Any]], queue_url: str | None = None
    ) -> dict[str, Any]:
        """The Lambda SQS event for received messages (by default from the work queue; pass
        ``tenancy_queue_url`` for the tenancy queue's, whose records carry its ARN)."""
        return sqs_event(messages, self._queue_arn(queue_url or self.work_queue_url), self.region)

    def _queue_arn(self, queue_url: str) -> str:
        known = {
            self.work_queue_url: self.work_queue_arn,
            self.dead_letter_queue_url: self.dead_letter_queue_arn,
            self.tenancy_queue_url: self.tenancy_queue_arn,
            self.tenancy_dead_letter_queue_url: self.tenancy_dead_letter_queue_arn,
        }
        if queue_url in known:
            return known[queue_url]
        return str(
            self.client("sqs").get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
        )

    # --- stream ---

    def stream_event(self) -> dict[str, Any]:
        """The Lambda DynamoDB stream event of every record written since the last call."""
        streams = self.client("dynamodbstreams")
        records: list[dict[str, Any]] = []
        with self._lock:
            shards = _all_shards(streams, self.table_stream_arn)
            for shard_id in shards:
                if shard_id not in self._shard_iterators:
                    self._shard_iterators[shard_id] = streams.get_shard_iterator(
                        StreamArn=self.table_stream_arn,
                        ShardId=shard_id,
                        ShardIteratorType="TRIM_HORIZON",
                    )["ShardIterator"]
                iterator = self._shard_iterators[shard_id]
                while iterator:
                    page = streams.get_records(ShardIterator=iterator, Limit=1000)
                    records += [self._lambda_stream_record(r) for r in page["Records"]]
                    next_iterator = page.get("NextShardIterator")
                    # Keep the iterator that follows the last record, for the next call.
                    self._shard_iterators[shard_id] = next_iterator
                    if not page["Records"]:
                        break
                    iterator = next_iterator
        return {"Records": records}

    def _lambda_stream_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        change = dict(record["dynamodb"])
        change["ApproximateCreationDateTime"] = epoch_seconds(
            change.get("ApproximateCreationDateTime")
        )
        return {
            "eventID": record["eventID"],
            "eventName": record["eventName"],
            "eventVersion": "1.1",  # what Lambda sends (the streams API says 1.0)
            "eventSource": "aws:dynamodb",
            "awsRegion": self.region,
            "eventSourceARN": self.table_stream_arn,
            "dynamodb": change,
        }

    # --- notifications ---

    def capture_notifications(self) -> NotificationCapture:
        """Subscribe a fresh queue to the topic, with the SNS envelope (Subject, attributes)."""
        self._captures += 1
        sqs = self.client("sqs")
        url, arn = _create_queue(sqs, f"{self.prefix}-capture-{self._captures}", {})
        subscription = self.client("sns").subscribe(
            TopicArn=self.topic_arn,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"RawMessageDelivery": "false"},
            ReturnSubscriptionArn=True,
        )
        return NotificationCapture(sqs, url, subscription["SubscriptionArn"])


# --- creation details ------------------------------------------------------------------------


def _references(
    template: Mapping[str, Any], prefix: str, region: str, max_receive_count: int | None
) -> dict[str, Any]:
    """What ``!Ref`` resolves to before any resource exists: parameters and pseudo parameters."""
    parameters = parameter_defaults(template)
    if max_receive_count is not None:
        parameters["MaxReceiveCount"] = str(max_receive_count)
    return {
        **parameters,
        # A required parameter: a placeholder until the caller names the CTM to use.
        "CtmBaseUrl": CTM_PLACEHOLDER_URL,
        "AWS::Region": region,
        "AWS::AccountId": "123456789012",
        "AWS::Partition": "aws",
        "AWS::StackName": prefix,
    }


def _create_queues(
    sqs: Any,
    prefix: str,
    resources: Mapping[str, Any],
    refs: dict[str, Any],
    attributes: dict[str, str],
) -> dict[str, tuple[str, str]]:
    """The four queues, dead-letter queues first (the redrive policies name them); each
    becomes a reference and attributes the next ones resolve."""
    queues: dict[str, tuple[str, str]] = {}
    for logical_id, stem in (
        (DEAD_LETTER_QUEUE_ID, f"{prefix}-work-dlq"),
        (WORK_QUEUE_ID, f"{prefix}-work"),
        (TENANCY_DEAD_LETTER_QUEUE_ID, f"{prefix}-tenancy-dlq"),
        (TENANCY_QUEUE_ID, f"{prefix}-tenancy"),
    ):
        properties = Intrinsics(refs, attributes).resolve(resources[logical_id]["Properties"])
        # A FIFO queue's name ends in .fifo (CloudFormation appends it to generated names).
        fifo = properties.get("FifoQueue") in (True, "true")
        name = f"{stem}.fifo" if fifo else stem
        url, arn = _create_queue(sqs, name, properties)
        queues[logical_id] = (url, arn)
        refs[logical_id] = url
        attributes[f"{logical_id}.Arn"] = arn
        attributes[f"{logical_id}.QueueName"] = name
    return queues


def _create_topic(
    sns: Any,
    prefix: str,
    resources: Mapping[str, Any],
    refs: Mapping[str, Any],
    attributes: Mapping[str, str],
) -> str:
    properties = Intrinsics(dict(refs), dict(attributes)).resolve(resources[TOPIC_ID]["Properties"])
    return str(
        sns.create_topic(
            Name=f"{prefix}-notifications",
            Attributes={
                name: str(properties[name])
                for name in ("DisplayName", "KmsMasterKeyId")
                if name in properties
            },
        )["TopicArn"]
    )


def _create_secret(secretsmanager: Any, prefix: str, resources: Mapping[str, Any]) -> str:
    properties = resources[SECRET_ID]["Properties"]
    return str(
        secretsmanager.create_secret(
            Name=_secret_name(prefix),
            Description=str(properties.get("Description", "")),
            SecretString=str(properties.get("SecretString", "{}")),
        )["ARN"]
    )


def _max_receive_count(sqs: Any, queue_url: str) -> int:
    """The ``maxReceiveCount`` of the queue's redrive policy, as the queue holds it."""
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    return int(json.loads(attributes["Attributes"]["RedrivePolicy"])["maxReceiveCount"])


def _declared_variables(template: Mapping[str, Any], function: str) -> tuple[str, ...]:
    """The environment variables the template declares for ``function`` (its own and the
    Globals'): the only ones ``sam local invoke --env-vars`` may set."""
    globals_ = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    own = template["Resources"][function]["Properties"].get("Environment", {})
    return (*own.get("Variables", {}), *globals_.get("Variables", {}))


def _secret_name(prefix: str) -> str:
    return f"{prefix}-ctm-credentials"


def _clients(endpoint_url: str, region: str) -> Callable[[str], Any]:
    def client(service: str) -> Any:
        return boto3.client(service, endpoint_url=endpoint_url, region_name=region)

    return client


def _environments(
    resources: Mapping[str, Any], intrinsics: Intrinsics
) -> dict[str, dict[str, str]]:
    """Each function's Environment.Variables resolved (``_environment``), by logical id."""
    return {
        function: _environment(intrinsics, resources[function]["Properties"])
        for function in FUNCTIONS
    }


def _environment(intrinsics: Intrinsics, properties: Mapping[str, Any]) -> dict[str, str]:
    """A function's Environment.Variables resolved; variables set to AWS::NoValue left out."""
    variables = intrinsics.resolve(properties.get("Environment", {}).get("Variables", {}))
    return {name: str(value) for name, value in variables.items() if value is not NO_VALUE}


def _create_table(dynamodb: Any, prefix: str, resources: Mapping[str, Any]) -> tuple[str, str]:
    """Create the table with the template's schema; return its name and stream ARN."""
    name = f"{prefix}-results"
    properties = resources[TABLE_ID]["Properties"]
    arguments: dict[str, Any] = {
        "TableName": name,
        "KeySchema": properties["KeySchema"],
        "AttributeDefinitions": properties["AttributeDefinitions"],
        "BillingMode": properties.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if "GlobalSecondaryIndexes" in properties:
        arguments["GlobalSecondaryIndexes"] = [
            {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
            for index in properties["GlobalSecondaryIndexes"]
        ]
    if "StreamSpecification" in properties:
        arguments["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": properties["StreamSpecification"]["StreamViewType"],
        }
    if "SSESpecification" in properties:
        arguments["SSESpecification"] = {
            "Enabled": properties["SSESpecification"]["SSEEnabled"],
            **(
                {"SSEType": properties["SSESpecification"]["SSEType"]}
                if "SSEType" in properties["SSESpecification"]
                else {}
            ),
        }
    description = dynamodb.create_table(**arguments)["TableDescription"]
    ttl = properties.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        dynamodb.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
        )
    recovery = properties.get("PointInTimeRecoverySpecification", {})
    if recovery.get("PointInTimeRecoveryEnabled"):
        dynamodb.update_continuous_backups(
            TableName=name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )
    return name, str(description.get("LatestStreamArn", ""))


def _create_queue(sqs: Any, name: str, properties: Mapping[str, Any]) -> tuple[str, str]:
    """Create a queue with the template's (resolved) attributes; return its URL and ARN."""
    attributes = {
        name: _attribute_text(properties[name]) for name in _QUEUE_ATTRIBUTES if name in properties
    }
    if "RedrivePolicy" in properties:
        redrive = properties["RedrivePolicy"]
        attributes["RedrivePolicy"] = json.dumps(
            {
                "deadLetterTargetArn": redrive["deadLetterTargetArn"],
                "maxReceiveCount": int(redrive["maxReceiveCount"]),
            }
        )
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return str(url), str(arn)


def _attribute_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _all_shards(streams: Any, stream_arn: str) -> list[str]:
    shards: list[str] = []
    arguments: dict[str, Any] = {"StreamArn": stream_arn}
    while True:
        description = streams.describe_stream(**arguments)["StreamDescription"]
        shards += [shard["ShardId"] for shard in description.get("Shards", [])]
        last = description.get("LastEvaluatedShardId")
        if not last:
            return shards
        arguments["ExclusiveStartShardId"] = last


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the template's stack on 127.0.0.1 until Ctrl-C; print its --env-vars file."""
    parser = argparse.ArgumentParser(prog="python -m devkit.aws_local", description=__doc__)
    parser.add_argument("--port", type=int, default=LOCAL_PORT, help="moto's port (5000)")
    parser.add_argument("--prefix", default=LOCAL_PREFIX, help="resource name prefix (local)")
    parser.add_argument("--ctm-url", default=CTM_EMULATOR_URL, help="CTM_BASE_URL to give")
    parser.add_argument("--ctm-ca", help="PEM of the CA of CTM's certificate (the emulator's)")
    parser.add_argument("--ctm-user", help="store username/password credentials in the secret")
    parser.add_argument("--ctm-password")
    parser.add_argument("--env-vars-out", help="also write the --env-vars file here")
    args = parser.parse_args(argv)

    server = MotoServer(port=args.port)
    server.start()
    stack = LocalAwsStack.create(server.endpoint_url, prefix=args.prefix)
    if args.ctm_user:
        credentials = {"username": args.ctm_user, "password": args.ctm_password or ""}
        if args.ctm_ca:
            credentials["ca_bundle"] = Path(args.ctm_ca).read_text(encoding="utf-8")
        stack.put_secret(credentials)
    env_vars = json.dumps(stack.sam_env_vars(args.ctm_url), indent=2) + "\n"
    if args.env_vars_out:
        Path(args.env_vars_out).write_text(env_vars, encoding="utf-8")
    print(env_vars, end="")
    print(f"local stack {args.prefix!r} on {server.endpoint_url}; Ctrl-C stops it", file=sys.stderr)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
