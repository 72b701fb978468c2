"""The chat webhook: Slack/Teams body, bounded retries, strict TLS, and a URL that stays secret."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from cckm_refresh.notify.events import EventType, Notification, Severity
from cckm_refresh.notify.webhook import (
    BACKOFF_CAP,
    WEBHOOK_TIMEOUT,
    Webhook,
    WebhookError,
    webhook_payload,
)

NOTE = Notification(
    event_type=EventType.KEY_STATE_CHANGED,
    severity=Severity.ERROR,
    subject="[ERROR] OCI key k1 is now DISABLED",
    summary="OCI key k1 changed state ENABLED -> DISABLED",
    dedupe_key="KEY_STATE_CHANGED#k1#ENABLED>DISABLED#t",
)
URL = "https://hooks.example.com/services/T000/B000/SECRETPART"


@dataclass
class FakeResponse:
    status_code: int


@dataclass
class FakeSession:
    """Answers each POST with the next scripted status code or exception."""

    answers: list[Any]
    posts: list[dict[str, Any]] = field(default_factory=list)

    def post(self, url: str, **kwargs: Any) -> FakeResponse:
        self.posts.append({"url": url} | kwargs)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return FakeResponse(answer)


def webhook(*answers: Any, url: str = URL) -> tuple[Webhook, FakeSession, list[float]]:
    session, pauses = FakeSession(list(answers)), []
    hook = Webhook(lambda: url, session, sleep=pauses.append, rng=lambda: 1.0)
    return hook, session, pauses


def test_the_body_is_slack_and_teams_text_with_the_summary() -> None:
    payload = webhook_payload(NOTE)
    assert payload["text"] == NOTE.summary
    assert payload["title"] == NOTE.subject
    assert (payload["event_type"], payload["severity"]) == ("KEY_STATE_CHANGED", "ERROR")


def test_one_post_with_a_10_second_timeout_and_verified_tls() -> None:
    hook, session, _ = webhook(200)
    hook.post(NOTE)
    [post] = session.posts
    assert post["url"] == URL
    assert post["json"] == webhook_payload(NOTE)
    assert post["timeout"] == WEBHOOK_TIMEOUT == 10.0
    assert post["verify"] is True
    assert post["allow_redirects"] is False


def test_429_and_5xx_are_retried_with_capped_growing_pauses_then_succeed() -> None:
    hook, session, pauses = webhook(429, 503, 200)
    hook.post(NOTE)
    assert len(session.posts) == 3
    assert pauses == [1.0, 2.0]  # full jitter drawn at its top: 0.5 * 2^attempt
    assert all(p <= BACKOFF_CAP for p in pauses)


def test_three_failed_attempts_raise_without_a_fourth() -> None:
    hook, session, pauses = webhook(500, 502, 503)
    with pytest.raises(WebhookError, match="HTTP 503"):
        hook.post(NOTE)
    assert len(session.posts) == 3
    assert len(pauses) == 2


def test_a_client_error_is_not_retried() -> None:
    hook, session, _ = webhook(404)
    with pytest.raises(WebhookError, match="HTTP 404"):
        hook.post(NOTE)
    assert len(session.posts) == 1


def test_a_redirect_is_not_followed() -> None:
    hook, session, _ = webhook(302)
    with pytest.raises(WebhookError, match="HTTP 302"):
        hook.post(NOTE)
    assert len(session.posts) == 1


def test_connection_errors_are_retried_and_never_reveal_the_url() -> None:
    # Given a webhook host that refuses connections (requests quotes the URL in its errors)
    hook, session, _ = webhook(*[requests.ConnectionError(f"cannot reach {URL}")] * 3)

    with pytest.raises(WebhookError) as caught:
        hook.post(NOTE)

    assert len(session.posts) == 3
    assert "ConnectionError" in str(caught.value)
    assert "SECRETPART" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_a_timeout_is_retried() -> None:
    hook, session, _ = webhook(requests.Timeout(URL), 200)
    hook.post(NOTE)
    assert len(session.posts) == 2


def test_a_plain_http_url_is_refused_without_quoting_it() -> None:
    hook, session, _ = webhook(url="http://hooks.example.com/SECRETPART")
    with pytest.raises(WebhookError, match="https") as caught:
        hook.post(NOTE)
    assert "SECRETPART" not in str(caught.value)
    assert session.posts == []
