"""Exactly-once delivery to SNS: ledger claims, SNS failures, a ledger that cannot be marked."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cckm_refresh.notify.delivery import NotificationInFlight, Notifier
from tests.unit.notify_fakes import FakeLedger, FakePublisher, note

NOTE = note()
LEASE = datetime(2026, 11, 28, 6, 1, tzinfo=UTC)


def notifier(
    ledger: FakeLedger | None = None,
    publisher: FakePublisher | None = None,
    counted: list[str] | None = None,
) -> Notifier:
    return Notifier(
        ledger or FakeLedger(),
        publisher or FakePublisher(),
        count=(counted if counted is not None else []).append,
    )


def test_a_notification_is_published_once_even_when_delivered_twice() -> None:
    # Given a notifier, When the same notification is delivered twice (a retried batch)
    publisher, counted = FakePublisher(), []
    deliver = notifier(publisher=publisher, counted=counted).deliver
    first, second = deliver(NOTE, LEASE), deliver(NOTE, LEASE)

    # Then SNS got it once, and the second delivery counted as a skipped duplicate
    assert (first, second) == (True, False)
    assert publisher.published == [NOTE]
    assert counted == ["NotificationsPublished", "NotificationsDuplicateSkipped"]


def test_a_failed_publish_releases_the_claim_and_fails_so_the_retry_sends_it() -> None:
    # Given SNS refuses the first publish
    ledger, publisher = FakeLedger(), FakePublisher(fail=True)
    with pytest.raises(RuntimeError):
        notifier(ledger, publisher).deliver(NOTE, LEASE)
    assert ledger.states[NOTE.dedupe_key] == "FAILED"

    # When the record is retried with SNS back
    publisher.fail = False
    assert notifier(ledger, publisher).deliver(NOTE, LEASE) is True

    # Then it is sent once
    assert publisher.published == [NOTE]
    assert ledger.states[NOTE.dedupe_key] == "SENT"


def test_a_publish_failure_is_raised_even_when_the_claim_cannot_be_released() -> None:
    ledger = FakeLedger(broken_marks=True)
    with pytest.raises(RuntimeError, match="SNS is down"):
        notifier(ledger, FakePublisher(fail=True)).deliver(NOTE, LEASE)


def test_a_claim_held_by_another_invocation_fails_the_record_instead_of_dropping_it() -> None:
    # Given an invocation that claimed the notification and has not finished
    ledger, publisher = FakeLedger({NOTE.dedupe_key: "SENDING"}), FakePublisher()

    # When another delivery of it comes, Then it is neither published nor taken as sent
    with pytest.raises(NotificationInFlight):
        notifier(ledger, publisher).deliver(NOTE, LEASE)
    assert publisher.published == []


def test_a_published_notification_stays_delivered_when_the_ledger_cannot_be_marked() -> None:
    # Given SNS takes the message but DynamoDB fails right after
    ledger, publisher = FakeLedger(broken_marks=True), FakePublisher()

    # When it is delivered, Then the record succeeds (failing it would publish it again)
    assert notifier(ledger, publisher).deliver(NOTE, LEASE) is True
    assert publisher.published == [NOTE]
