"""The webhook mirror of a batch: it gets only the invocation's time left (less a margin),
waits on a hanging webhook once, asks a webhook that is down for one message, and skips,
logs and counts what the time or the breaker leaves out.

The chat service is a fake on a manual clock: a POST takes exactly the time it is scripted
to, so every figure below is exact.
"""

from __future__ import annotations

import pytest

from cckm_refresh.notify.webhook import (
    SAFETY_MARGIN,
    WEBHOOK_TIMEOUT,
    Webhook,
    WebhookMirror,
)
from tests.unit.notify_fakes import (
    HANGS,
    URL,
    ClockedSession,
    Counted,
    clocked_webhook,
    note,
    within,
)

NOTES = [note(n) for n in range(10)]


def mirror_over(chat: ClockedSession, counted: Counted | None = None) -> WebhookMirror:
    return WebhookMirror(clocked_webhook(chat), count=counted or Counted())


def test_every_notification_is_posted_when_the_webhook_answers() -> None:
    chat, counted = ClockedSession(delay=0.2), Counted()
    mirror_over(chat, counted).mirror(NOTES[:3], within(chat, 60.0))
    assert chat.taken == [n.summary for n in NOTES[:3]]
    assert len(chat.posts) == 3
    assert counted.values == {}


def test_a_hanging_webhook_costs_the_batch_one_timeout_and_the_rest_are_skipped() -> None:
    # Given a webhook that never answers, and a batch of 10 published notifications
    chat, counted = ClockedSession(delay=HANGS), Counted()
    started = chat.runtime.now

    # When they are mirrored with 60 s of the invocation left
    mirror_over(chat, counted).mirror(NOTES, within(chat, 60.0))

    # Then the webhook is waited on once, for the contract's 10 s; the 9 others are skipped
    assert len(chat.posts) == 1
    assert chat.runtime.now - started == WEBHOOK_TIMEOUT
    assert chat.taken == []
    assert counted.values == {"WebhookFailures": 1, "WebhookSkipped": 9}


def test_a_slow_webhook_is_cut_off_at_the_budget_and_each_post_waits_only_what_is_left() -> None:
    # Given a webhook that answers after 4 s, and 30 s left in the invocation
    chat, counted = ClockedSession(delay=4.0), Counted()
    started = chat.runtime.now

    # When 10 notifications are mirrored
    mirror_over(chat, counted).mirror(NOTES, within(chat, 30.0))

    # Then no POST waits more than 10 s or past the budget (30 s less the margin): the 7th
    # gets the 3 s left, times out, and the budget ends the mirror to the second
    assert chat.timeouts == [10.0, 10.0, 10.0, 10.0, 10.0, 7.0, 3.0]
    assert chat.runtime.now - started == 30.0 - SAFETY_MARGIN
    assert len(chat.taken) == 6
    assert counted.values == {"WebhookFailures": 1, "WebhookSkipped": 3}


def test_mirrors_stop_when_too_little_time_is_left_to_start_a_post() -> None:
    # Given a webhook that answers after 4 s, and 11.5 s left (8.5 s for the webhook)
    chat, counted = ClockedSession(delay=4.0), Counted()
    started = chat.runtime.now

    # When 10 notifications are mirrored
    mirror_over(chat, counted).mirror(NOTES, within(chat, 11.5))

    # Then two are posted; with 0.5 s left no third POST starts, and 8 are skipped
    assert chat.taken == [n.summary for n in NOTES[:2]]
    assert chat.runtime.now - started == 8.0
    assert counted.values == {"WebhookSkipped": 8}


def test_with_only_the_margin_left_nothing_is_posted() -> None:
    chat, counted = ClockedSession(), Counted()
    mirror_over(chat, counted).mirror(NOTES[:4], within(chat, SAFETY_MARGIN))
    assert chat.posts == []
    assert counted.values == {"WebhookSkipped": 4}


def test_a_webhook_that_is_down_is_asked_for_one_message_then_the_rest_are_skipped() -> None:
    # Given a webhook that answers 503 at once (3 attempts, with 1 s and 2 s pauses)
    chat, counted = ClockedSession(status=503), Counted()
    started = chat.runtime.now

    # When 10 notifications are mirrored
    mirror_over(chat, counted).mirror(NOTES, within(chat, 60.0))

    # Then the first one's retries tell it is down: 3 POSTs, 3 s, and the 9 others skipped
    assert len(chat.posts) == 3
    assert chat.taken == []
    assert chat.runtime.now - started == 3.0
    assert counted.values == {"WebhookFailures": 1, "WebhookSkipped": 9}


def test_a_message_the_webhook_refuses_does_not_stop_the_others() -> None:
    # Given a webhook that refuses the first message (400) and takes the rest
    chat, counted = ClockedSession(script=[400]), Counted()

    mirror_over(chat, counted).mirror(NOTES[:3], within(chat, 60.0))

    assert chat.taken == [n.summary for n in NOTES[1:3]]
    assert len(chat.posts) == 3
    assert counted.values == {"WebhookFailures": 1}


def test_skipped_mirrors_are_logged_once_with_their_keys_and_never_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chat = ClockedSession(delay=HANGS)

    mirror_over(chat).mirror(NOTES[:3], within(chat, 60.0))

    [skipped] = [r for r in caplog.records if r.message == "webhook mirrors skipped"]
    assert skipped.skipped == 2  # type: ignore[attr-defined]
    assert skipped.dedupe_keys == [NOTES[1].dedupe_key, NOTES[2].dedupe_key]  # type: ignore[attr-defined]
    assert skipped.reason == "the webhook timed out"  # type: ignore[attr-defined]
    [failed] = [r for r in caplog.records if r.message == "webhook mirror failed"]
    assert failed.dedupe_key == NOTES[0].dedupe_key  # type: ignore[attr-defined]
    assert "SECRETPART" not in repr([vars(r) for r in caplog.records])


def test_an_unexpected_webhook_error_is_logged_by_type_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an error whose text quotes the URL (as requests' errors do)
    def load_url() -> str:
        raise ValueError(f"bad response from {URL}")

    chat, counted = ClockedSession(), Counted()
    hook = Webhook(load_url, chat, chat.runtime)

    WebhookMirror(hook, count=counted).mirror(NOTES[:1], within(chat, 60.0))

    assert counted.values == {"WebhookFailures": 1}
    [warning] = [r for r in caplog.records if r.message == "webhook mirror failed"]
    assert warning.reason == "ValueError"  # type: ignore[attr-defined]
    assert "SECRETPART" not in repr([vars(r) for r in caplog.records])
