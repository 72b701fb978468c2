"""A small world for refresh integration tests: the real handler, moto server, CTM emulator.

Everything goes over real HTTP: the handler's boto3 clients reach moto through
``AWS_ENDPOINT_URL``, its CTM client reaches the emulator over HTTPS with the emulator's CA.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from boto3.dynamodb.conditions import Key

from devkit.lambda_runtime import FakeLambdaContext, load_handler

# Longer than any call takes on a busy machine, so that no test meets a timeout it did not ask
# for (with CTM_MAX_ATTEMPTS=1, one would leave a key PENDING); a test about timeouts sets its
# own, with calls held for longer.
CTM_TIMEOUT_SECONDS = "10"


@dataclass
class RefreshWorld:
    stack: Any  # devkit.aws_local.LocalAwsStack
    ctm: Any  # devkit.ctm_emulator.CtmEmulator
    env_overrides: dict[str, str] = field(default_factory=dict)
    _handler: ModuleType | None = None

    def env(self) -> dict[str, str]:
        settings = {
            "CTM_BASE_URL": self.ctm.base_url,
            "CTM_TIMEOUT_SECONDS": CTM_TIMEOUT_SECONDS,
            "CTM_MAX_ATTEMPTS": "3",
            "TENANCY_RATE_LIMIT": "50",
            "REFRESH_CONCURRENCY": "8",
        }
        return self.stack.refresh_env(**(settings | self.env_overrides))

    @property
    def handler(self) -> ModuleType:
        if self._handler is None:
            self._handler = load_handler("refresh", self.env())
        return self._handler

    def cold_start(self, **overrides: str) -> None:
        self.env_overrides.update(overrides)
        self._handler = None

    def invoke(self, event: dict[str, Any], remaining: Callable[[], float] | None = None) -> Any:
        """One invocation of the handler, and nothing else (queued work stays queued)."""
        return self.handler.handler(event, FakeLambdaContext("refresh", remaining=remaining))

    def run(self, event: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Invoke with ``event``, then let Lambda's pollers drain both queues into the
        handler (as the template maps them); the answer, with the run's status and counts
        as the table holds them at the end."""
        response = dict(self.invoke(event))
        self.drain(timeout)
        if "run_id" in response:
            run = self.run_item(response["run_id"])
            response["status"] = run["status"]
            for name in ("requested", "refreshed", "not_found", "failed", "skipped", "rotated"):
                response[name] = int(run.get(name, 0))
        return response

    def drain(self, timeout: float = 60.0) -> Any:
        """Deliver the queues' messages to the handler until nothing is left in flight."""
        from devkit.lambda_poller import InProcessFunction, LambdaPoller, mappings_from_template

        target = InProcessFunction(self.handler)
        with LambdaPoller(
            self.stack.client("sqs"),
            mappings_from_template(self.stack),
            target,
            redeliver_failed_after=0,
            redeliver_crashed_after=0,
        ) as poller:
            report = poller.drain(timeout)
        assert report.drained, "the queues did not drain"
        return report

    # --- events -----------------------------------------------------------------------------

    @staticmethod
    def schedule_event(request: dict[str, Any], scheduled_time: str = "2026-11-28T06:00:00Z"):
        return {
            "scheduled_time": scheduled_time,
            "execution_id": f"exec-{uuid.uuid4()}",
            "request": request,
        }

    @staticmethod
    def rule_event(request: dict[str, Any]) -> dict[str, Any]:
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "CCKM OCI key refresh",
            "source": "rotation.pipeline",
            "account": "123456789012",
            "time": "2026-11-28T06:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": request,
        }

    def sqs_record(
        self, body: str | dict[str, Any], receive_count: int = 1, message_id: str | None = None
    ) -> dict[str, Any]:
        text = body if isinstance(body, str) else json.dumps(body)
        return {
            "messageId": message_id or str(uuid.uuid4()),
            "receiptHandle": "AQEB" + uuid.uuid4().hex,
            "body": text,
            "attributes": {
                "ApproximateReceiveCount": str(receive_count),
                "SentTimestamp": "1764309600000",
                "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                "ApproximateFirstReceiveTimestamp": "1764309600001",
            },
            "messageAttributes": {},
            "md5OfBody": "0" * 32,
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:work",
            "awsRegion": "us-east-1",
        }

    def sqs_event(self, *records: dict[str, Any]) -> dict[str, Any]:
        return {"Records": list(records)}

    def drain_work_queue(self, rounds: int = 10) -> list[Any]:
        """Feed every work-queue message to the handler until the queue is empty."""
        responses = []
        queue = self.stack.work_queue_url
        for _ in range(rounds):
            messages = self.stack.receive_all(queue)
            if not messages:
                return responses
            response = self.invoke(self.stack.sqs_event(messages))
            responses.append(response)
            # What Lambda does with a partial batch response: delete the successes only.
            failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
            self.stack.delete_messages(queue, [m for m in messages if m["MessageId"] not in failed])
            self.stack.release_messages(queue, [m for m in messages if m["MessageId"] in failed])
        raise AssertionError("the work queue did not drain")

    # --- table ------------------------------------------------------------------------------

    def run_item(self, run_id: str) -> dict[str, Any]:
        item = self.stack.table.get_item(
            Key={"pk": f"RUN#{run_id}", "sk": "RUN"}, ConsistentRead=True
        ).get("Item")
        assert item is not None, f"no RUN item for {run_id}"
        return dict(item)

    def results(self, run_id: str) -> dict[str, dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "KeyConditionExpression": Key("pk").eq(f"RUN#{run_id}") & Key("sk").begins_with("KEY#"),
            "ConsistentRead": True,
        }
        while True:
            page = self.stack.table.query(**kwargs)
            items += page["Items"]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return {item["key_id"]: dict(item) for item in items}

    def latest(self, key_id: str) -> dict[str, Any] | None:
        item = self.stack.table.get_item(Key={"pk": f"KEY#{key_id}", "sk": "LATEST"}).get("Item")
        return dict(item) if item else None

    def rejected(self, source_id: str) -> dict[str, Any] | None:
        item = self.stack.table.get_item(Key={"pk": f"REJECTED#{source_id}", "sk": "REQUEST"}).get(
            "Item"
        )
        return dict(item) if item else None
