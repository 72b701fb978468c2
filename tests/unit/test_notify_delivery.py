"""Exactly-once delivery: ledger claims, SNS failures, and a webhook that never blocks SNS."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from cckm_refresh.notify.delivery import Notifier, Webhook, WebhookError
from cckm_refresh.notify.events import EventType, Notification, Severity

NOTE = Notification(
    event_type=EventType.KEY_ROTATED,
    severity=Severity.INFO,
    subject="[INFO] OCI key k1 rotated",
    summary="OCI key k1 rotated: version v1 -> v2",
    dedupe_key="KEY_ROTATED#k1#v2",
)


@dataclass
class FakeLedger:
    states: dict[str, str] = field(default_factory=dict)

    def claim(self, key: str) -> bool:
        if self.states.get(key) in (None, "FAILED"):
            self.states[key] = "SENDING"
            return True
        return False

    def mark(self, key: str, state: str, message_id: str | None = None) -> None:
        self.states[key] = state


@dataclass
class FakePublisher:
    fail: bool = False
    published: list[Notification] = field(default_factory=list)

    def publish(self, notification: Notification) -> str:
        if self.fail:
            raise RuntimeError("SNS is down")
        self.published.append(notification)
        return f"m{len(self.published)}"


@dataclass
class FakeResponse:
    status_code: int


@dataclass
class FakeSession:
    answers: list[Any]
    posts: list[dict[str, Any]] = field(default_factory=list)

    def post(self, url: str, **kwargs: Any) -> FakeResponse:
        self.posts.append({"url": url} | kwargs)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return FakeResponse(answer)


URL = "https://hooks.example.com/services/T000/B000/SECRETPART"


def webhook(*answers: Any) -> tuple[Webhook, FakeSession]:
    session = FakeSession(list(answers))
    return Webhook(lambda: URL, session, sleep=lambda s: None, rng=lambda: 0.5), session


def test_a_notification_is_published_once_even_when_delivered_twice() -> None:
    publisher = FakePublisher()
    notifier = Notifier(FakeLedger(), publisher, None)  # type: ignore[arg-type]
    assert notifier.deliver(NOTE) is True
    assert notifier.deliver(NOTE) is False
    assert publisher.published == [NOTE]


def test_a_failed_publish_releases_the_claim_so_a_retry_sends_it() -> None:
    ledger, publisher = FakeLedger(), FakePublisher(fail=True)
    notifier = Notifier(ledger, publisher, None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        notifier.deliver(NOTE)
    assert ledger.states[NOTE.dedupe_key] == "FAILED"

    publisher.fail = False
    assert notifier.deliver(NOTE) is True
    assert ledger.states[NOTE.dedupe_key] == "SENT"


def test_a_webhook_outage_neither_blocks_nor_repeats_sns() -> None:
    hook, session = webhook(500, 503, 502)
    events: list[str] = []
    publisher = FakePublisher()
    notifier = Notifier(FakeLedger(), publisher, hook, on_event=events.append)  # type: ignore[arg-type]

    assert notifier.deliver(NOTE) is True

    assert len(publisher.published) == 1
    assert len(session.posts) == 3
    assert events == ["NotificationsPublished", "WebhookFailures"]


def test_the_webhook_retries_429_and_5xx_then_succeeds() -> None:
    hook, session = webhook(429, 500, 200)
    hook.post(NOTE)
    assert len(session.posts) == 3
    post = session.posts[0]
    assert post["json"]["text"].endswith(NOTE.summary)
    assert post["timeout"] == 10.0
    assert post["verify"] is True


def test_the_webhook_does_not_retry_a_client_error() -> None:
    hook, session = webhook(404)
    with pytest.raises(WebhookError, match="HTTP 404"):
        hook.post(NOTE)
    assert len(session.posts) == 1


def test_a_connection_error_never_reveals_the_url() -> None:
    import requests

    hook, _ = webhook(*[requests.ConnectionError(f"cannot reach {URL}")] * 3)
    with pytest.raises(WebhookError) as caught:
        hook.post(NOTE)
    assert "SECRETPART" not in str(caught.value)
    assert "ConnectionError" in str(caught.value)


def test_a_plain_http_webhook_is_refused_without_quoting_it() -> None:
    hook = Webhook(lambda: "http://hooks.example.com/SECRETPART", FakeSession([]))
    with pytest.raises(WebhookError) as caught:
        hook.post(NOTE)
    assert "SECRETPART" not in str(caught.value)
