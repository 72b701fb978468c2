"""A chat webhook that hangs costs no SNS notification: the notify function publishes the
whole stream batch first and gives the webhook only the time its invocation has left.

The webhook is the local sink with ``hang`` set: it accepts each POST and never answers, so
the test lasts as long as the function lets itself wait (one POST timeout, 10 s), not the
60 s of the hang nor 200 of them. The exact budget arithmetic (a deadline shorter than the
POST timeout, retries that do not fit) is unit-tested on a fake clock in
``tests/unit/test_notify_mirror.py``; a wall-clock deadline that tight would make this test
depend on how fast moto is on the day.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from cckm_refresh.notify.webhook import SAFETY_MARGIN
from devkit.aws_local import LocalAwsStack
from devkit.lambda_runtime import FakeLambdaContext, load_handler
from devkit.template import load_template
from devkit.webhook_sink import WebhookSink

pytestmark = pytest.mark.resilience

BURST = 200


def notify_timeout() -> float:
    """The notify function's timeout in template.yaml (60 s): the fake context's deadline."""
    return float(load_template()["Resources"]["NotifyFunction"]["Properties"]["Timeout"])


def write_rejected_requests(stack: LocalAwsStack, count: int) -> list[str]:
    """``count`` REJECTED items, as the refresh function writes them; their source ids."""
    sources = [f"sqs-{n:04d}" for n in range(count)]
    with stack.table.batch_writer() as table:
        for source in sources:
            table.put_item(
                Item={
                    "pk": f"REJECTED#{source}",
                    "sk": "REQUEST",
                    "item_type": "REJECTED",
                    "error": "keys[0]: not a CCKM id or OCI key OCID",
                    "body": '{"keys": ["../x"]}',
                    "received_at": "2026-11-28T06:00:00.000Z",
                    "expires_at": 1803607219,
                }
            )
    return sources


def published_to(stack: LocalAwsStack, topic_arn: str) -> list[dict[str, Any]]:
    """The bodies of every message the topic took, read from moto's record of the topic (its
    documented way to check publishes; the SQS capture of the other tests is ~40 ms a
    message here, which 200 messages would turn into the slowest part of the test)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sns import sns_backends

    topic = sns_backends[DEFAULT_ACCOUNT_ID][stack.region].topics[topic_arn]
    return [json.loads(message) for _, message, *_ in topic.sent_notifications]


def metric_totals(stdout: str) -> Counter[str]:
    """The sum of every metric in the EMF lines Powertools printed."""
    totals: Counter[str] = Counter()
    for line in stdout.splitlines():
        try:
            blob = json.loads(line)
        except ValueError:
            continue
        if not isinstance(blob, dict) or "_aws" not in blob:
            continue
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                totals[metric["Name"]] += int(sum(value) if isinstance(value, list) else value)
    return totals


def test_a_webhook_hanging_through_a_burst_of_200_notifications_costs_no_sns_notification(
    aws_stack: LocalAwsStack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    no_ca_env: None,
) -> None:
    with WebhookSink() as sink:
        # Given a chat webhook that accepts every POST and never answers
        sink.hang = True
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", sink.ca_file)
        secret_id = f"{aws_stack.prefix}-webhook-hung"
        aws_stack.client("secretsmanager").create_secret(
            Name=secret_id, SecretString=json.dumps({"url": sink.url})
        )
        notify = load_handler("notify", aws_stack.notify_env(WEBHOOK_SECRET_ID=secret_id))

        # And a burst of 200 notifications in one stream batch
        sources = write_rejected_requests(aws_stack, BURST)
        batch: dict[str, Any] = aws_stack.stream_event()
        assert len(batch["Records"]) == BURST
        capsys.readouterr()

        # When the notify function handles the batch
        deadline = notify_timeout()
        started = time.monotonic()
        response = notify.handler(batch, FakeLambdaContext("notify", timeout_seconds=deadline))
        took = time.monotonic() - started
        hung = sink.hung

    # Then it returned before its deadline (and its margin), reporting no record as failed
    assert took < deadline - SAFETY_MARGIN
    assert response == {"batchItemFailures": []}

    # And every one of the 200 notifications reached SNS exactly once
    published = Counter(m["source_id"] for m in published_to(aws_stack, aws_stack.topic_arn))
    assert published == Counter(sources)

    # And the webhook was waited on once; the other 199 mirrors were skipped and counted
    output = capsys.readouterr()
    totals = metric_totals(output.out)
    assert (hung, sink.received) == (1, [])
    assert totals["NotificationsPublished"] == BURST
    assert (totals["WebhookFailures"], totals["WebhookSkipped"]) == (1, BURST - 1)
    assert "XXXXSECRETXXXX" not in output.out + output.err + caplog.text
