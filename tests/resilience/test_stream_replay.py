"""The notify function's side of the promises: a stream batch that Lambda delivers again
(after a failed publish, or to two containers at once) notifies people once per event."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest

from devkit.lambda_runtime import FakeLambdaContext, load_handler
from devkit.webhook_sink import WebhookSink
from tests.resilience.scenario import Scenario

pytestmark = pytest.mark.resilience


class FailingPublishes:
    """The next ``count`` SNS publishes fail as they do once the SDK's retries are spent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.failed = 0
        self._lock = threading.Lock()
        create = boto3.client

        def client(service_name: str, *args: Any, **kwargs: Any) -> Any:
            made = create(service_name, *args, **kwargs)
            if service_name == "sns":
                made.meta.events.register("before-call.sns.Publish", self._before(made))
            return made

        monkeypatch.setattr(boto3, "client", client)

    def _before(self, client: Any) -> Any:
        def before_call(**_: Any) -> None:
            with self._lock:
                fail = self.count > 0
                self.count -= fail
                self.failed += fail
            if fail:
                raise client.exceptions.ThrottledException(
                    {"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish"
                )

        return before_call


@pytest.fixture
def webhook(scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebhookSink]:
    """A chat webhook whose URL (a secret) is stored where WEBHOOK_SECRET_ID points."""
    with WebhookSink() as sink:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", sink.ca_file)
        scenario.world.stack.client("secretsmanager").create_secret(
            Name=f"{scenario.world.stack.prefix}-webhook",
            SecretString=json.dumps({"url": sink.url}),
        )
        scenario.secrets += (sink.url, sink.path)
        yield sink


def notify_container(scenario: Scenario) -> ModuleType:
    """A cold-started notify function with the webhook mirror configured."""
    env = scenario.world.stack.notify_env(
        WEBHOOK_SECRET_ID=f"{scenario.world.stack.prefix}-webhook"
    )
    return load_handler("notify", env)


def run_with_every_kind_of_event(scenario: Scenario) -> tuple[list[str], str]:
    """A baseline run, then a run where OCI rotated a key and one key is refused (403), and a
    rejected message; returns the second run's keys and the rotated key."""
    keys = scenario.key_ids(6)
    scenario.source.send({"keys": keys, "request_id": "baseline"})
    scenario.source.drain()
    scenario.ctm.rotate(keys[0])
    scenario.ctm.faults.fail_keys[keys[1]] = 403
    scenario.source.send({"keys": keys, "request_id": "nightly"})
    scenario.source.send({"keys": ["../../auth/tokens"]})
    scenario.source.drain()
    return keys, keys[0]


def test_a_stream_batch_replayed_after_a_failed_publish_notifies_each_event_once(
    scenario: Scenario, webhook: WebhookSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the records of two runs and a rejected request, and SNS failing one publish
    publishes = FailingPublishes(monkeypatch)
    keys, rotated = run_with_every_kind_of_event(scenario)
    capture = scenario.world.stack.capture_notifications()
    batch = scenario.world.stack.stream_event()
    notify = notify_container(scenario)
    publishes.count = 1

    # When the batch is delivered, reports a failure, and Lambda delivers it again, twice
    first = notify.handler(batch, FakeLambdaContext("notify"))
    second = notify.handler(batch, FakeLambdaContext("notify"))
    third = notify_container(scenario).handler(batch, FakeLambdaContext("notify"))

    # Then the failed record was retried, and each event reached SNS and the webhook once
    assert publishes.failed == 1
    assert len(first["batchItemFailures"]) >= 1
    assert second == third == {"batchItemFailures": []}
    published = Counter(m["Message"]["event_type"] for m in capture.messages())
    assert published == {"RUN_COMPLETED": 2, "KEY_ROTATED": 1, "REQUEST_REJECTED": 1}
    assert len(webhook.received) == 4
    assert len({m["text"] for m in webhook.received}) == 4
    results = scenario.promises_kept({"baseline": keys, "nightly": keys})
    assert results["nightly"][rotated]["version_changed"] is True
    assert results["nightly"][keys[1]]["status"] == "FAILED"


def at_the_same_moment(*calls: Callable[[], Any]) -> list[Any]:
    """Runs ``calls`` in threads released together; each one's result, None where it raised
    or had not returned within 30 s."""
    start = threading.Barrier(len(calls), timeout=30)
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        start.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_a_stream_batch_given_to_two_containers_at_once_notifies_each_event_once(
    scenario: Scenario, webhook: WebhookSink
) -> None:
    # Given the records of two runs and a rejected request, and two cold notify containers
    keys, _ = run_with_every_kind_of_event(scenario)
    capture = scenario.world.stack.capture_notifications()
    batch = scenario.world.stack.stream_event()
    containers = [notify_container(scenario) for _ in range(2)]

    # When both get the same batch at the same moment, then Lambda retries what each reported
    responses = at_the_same_moment(
        lambda: containers[0].handler(batch, FakeLambdaContext("notify")),
        lambda: containers[1].handler(batch, FakeLambdaContext("notify")),
    )
    retries = [containers[0].handler(batch, FakeLambdaContext("notify")) for _ in range(2)]

    # Then whichever claimed an event published it; the other backed off; nothing twice
    assert {
        "containers that answered": [r is not None for r in responses],
        "the last retry's answer": retries[-1],
        "published": Counter(m["Message"]["event_type"] for m in capture.messages()),
        "webhook messages": len(webhook.received),
    } == {
        "containers that answered": [True, True],
        "the last retry's answer": {"batchItemFailures": []},
        "published": {"RUN_COMPLETED": 2, "KEY_ROTATED": 1, "REQUEST_REJECTED": 1},
        "webhook messages": 4,
    }
    scenario.promises_kept({"baseline": keys, "nightly": keys})
