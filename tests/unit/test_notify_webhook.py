"""The chat webhook: Slack/Teams body, retries bounded by attempts and by the deadline,
strict TLS, and a URL that stays secret."""

from __future__ import annotations

import pytest
import requests

from cckm_refresh.notify.events import EventType, Notification, Severity
from cckm_refresh.notify.webhook import (
    BACKOFF_CAP,
    MIN_ATTEMPT_TIME,
    WEBHOOK_TIMEOUT,
    NoTimeLeft,
    WebhookError,
    WebhookTimedOut,
    WebhookUnavailable,
    webhook_payload,
)
from tests.unit.notify_fakes import HANGS, URL, ClockedSession, clocked_webhook, within

NOTE = Notification(
    event_type=EventType.KEY_STATE_CHANGED,
    severity=Severity.ERROR,
    subject="[ERROR] OCI key k1 is now DISABLED",
    summary="OCI key k1 changed state ENABLED -> DISABLED",
    dedupe_key="KEY_STATE_CHANGED#k1#ENABLED>DISABLED#t",
)


def session(*script: object, delay: float = 0.0) -> ClockedSession:
    return ClockedSession(script=list(script), delay=delay)


def test_the_body_is_slack_and_teams_text_with_the_summary() -> None:
    payload = webhook_payload(NOTE)
    assert payload["text"] == NOTE.summary
    assert payload["title"] == NOTE.subject
    assert (payload["event_type"], payload["severity"]) == ("KEY_STATE_CHANGED", "ERROR")


def test_one_post_with_a_10_second_timeout_and_verified_tls() -> None:
    chat = session(200)
    clocked_webhook(chat).post(NOTE, within(chat))
    [post] = chat.posts
    assert post["url"] == URL
    assert post["json"] == webhook_payload(NOTE)
    assert post["timeout"] == WEBHOOK_TIMEOUT == 10.0
    assert post["verify"] is True
    assert post["allow_redirects"] is False


def test_a_post_waits_no_longer_than_the_deadline_leaves() -> None:
    # Given 4.5 s left before the deadline, When a notification is posted
    chat = session(200)
    clocked_webhook(chat).post(NOTE, within(chat, 4.5))

    # Then the POST's timeout is what is left, not the contract's 10 s
    assert chat.timeouts == [4.5]


def test_429_and_5xx_are_retried_with_capped_growing_pauses_then_succeed() -> None:
    chat = session(429, 503, 200)
    clocked_webhook(chat).post(NOTE, within(chat))
    assert len(chat.posts) == 3
    at = [post["at"] for post in chat.posts]
    pauses = [at[1] - at[0], at[2] - at[1]]
    assert pauses == [1.0, 2.0]  # full jitter drawn at its top: 0.5 * 2^attempt
    assert all(p <= BACKOFF_CAP for p in pauses)


def test_three_failed_attempts_raise_without_a_fourth() -> None:
    chat = session(500, 502, 503)
    with pytest.raises(WebhookUnavailable, match="HTTP 503"):
        clocked_webhook(chat).post(NOTE, within(chat))
    assert len(chat.posts) == 3


def test_a_retry_is_made_only_when_its_pause_and_a_post_fit_before_the_deadline() -> None:
    # Given 2.5 s to the deadline, and a webhook answering 503 (pauses: 1 s, then 2 s)
    chat = session(503, 503, 503)

    # When a notification is posted
    with pytest.raises(WebhookError, match="HTTP 503, no time left to retry"):
        clocked_webhook(chat).post(NOTE, within(chat, 2.5))

    # Then the second attempt fitted (1 s pause, 1.5 s left), the third did not
    assert chat.timeouts == [2.5, 1.5]


def test_no_post_is_started_with_less_than_the_minimum_left() -> None:
    chat = session(200)
    with pytest.raises(NoTimeLeft):
        clocked_webhook(chat).post(NOTE, within(chat, MIN_ATTEMPT_TIME - 0.01))
    assert chat.posts == []


def test_a_client_error_is_not_retried() -> None:
    chat = session(404)
    with pytest.raises(WebhookError, match="HTTP 404") as caught:
        clocked_webhook(chat).post(NOTE, within(chat))
    assert len(chat.posts) == 1
    assert not isinstance(caught.value, WebhookUnavailable)  # the webhook is up; it refused


def test_a_redirect_is_not_followed() -> None:
    chat = session(302)
    with pytest.raises(WebhookError, match="HTTP 302"):
        clocked_webhook(chat).post(NOTE, within(chat))
    assert len(chat.posts) == 1


def test_connection_errors_are_retried_and_never_reveal_the_url() -> None:
    # Given a webhook host that refuses connections (requests quotes the URL in its errors)
    chat = session(*[requests.ConnectionError(f"cannot reach {URL}")] * 3)

    with pytest.raises(WebhookUnavailable) as caught:
        clocked_webhook(chat).post(NOTE, within(chat))

    assert len(chat.posts) == 3
    assert "ConnectionError" in str(caught.value)
    assert "SECRETPART" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


def test_a_webhook_that_does_not_answer_is_waited_on_once_and_not_retried() -> None:
    # Given a webhook that accepts the POST and never answers
    chat = session(delay=HANGS)

    # When a notification is posted
    with pytest.raises(WebhookTimedOut) as caught:
        clocked_webhook(chat).post(NOTE, within(chat))

    # Then one attempt, 10 s, and an error that neither quotes nor chains requests' error
    assert chat.timeouts == [WEBHOOK_TIMEOUT]
    assert chat.runtime.now - chat.posts[0]["at"] == WEBHOOK_TIMEOUT
    assert "SECRETPART" not in str(caught.value)
    assert caught.value.__context__ is None


def test_a_plain_http_url_is_refused_without_quoting_it() -> None:
    chat = session()
    with pytest.raises(WebhookError, match="https") as caught:
        clocked_webhook(chat, url="http://hooks.example.com/SECRETPART").post(NOTE, within(chat))
    assert "SECRETPART" not in str(caught.value)
    assert chat.posts == []
