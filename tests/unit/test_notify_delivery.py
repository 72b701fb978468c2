"""Exactly-once delivery to SNS: ledger claims, SNS failures, a ledger that cannot be marked."""

from __future__ import annotations

import pytest

from cckm_refresh.notify.delivery import NotificationInFlight, Notifier
from cckm_refresh.runtime import Deadline
from tests.unit.manual_runtime import ManualRuntime
from tests.unit.notify_fakes import FakeLedger, FakeSns, note

NOTE = note()
END = Deadline.within(60.0, ManualRuntime())


def notifier(
    ledger: FakeLedger | None = None,
    sns: FakeSns | None = None,
    counted: list[str] | None = None,
) -> Notifier:
    return Notifier(
        ledger or FakeLedger(),
        sns or FakeSns(),
        "arn:aws:sns:eu-west-1:123456789012:cckm",
        count=(counted if counted is not None else []).append,
    )


def test_a_notification_is_published_once_even_when_delivered_twice() -> None:
    # Given a notifier, When the same notification is delivered twice (a retried batch)
    sns, counted = FakeSns(), list[str]()
    deliver = notifier(sns=sns, counted=counted).deliver
    first, second = deliver(NOTE, END), deliver(NOTE, END)

    # Then SNS got it once, and the second delivery counted as a skipped duplicate
    assert (first, second) == (True, False)
    assert sns.subjects == [NOTE.subject]
    assert counted == ["NotificationsPublished", "NotificationsDuplicateSkipped"]


def test_a_failed_publish_releases_the_claim_and_fails_so_the_retry_sends_it() -> None:
    # Given SNS refuses the first publish
    ledger, sns = FakeLedger(), FakeSns(fail=True)
    with pytest.raises(RuntimeError):
        notifier(ledger, sns).deliver(NOTE, END)
    assert ledger.states[NOTE.dedupe_key] == "FAILED"

    # When the record is retried with SNS back
    sns.fail = False
    assert notifier(ledger, sns).deliver(NOTE, END) is True

    # Then it is sent once
    assert sns.subjects == [NOTE.subject]
    assert ledger.states[NOTE.dedupe_key] == "SENT"


def test_a_publish_failure_is_raised_even_when_the_claim_cannot_be_released() -> None:
    ledger = FakeLedger(broken_marks=True)
    with pytest.raises(RuntimeError, match="SNS is down"):
        notifier(ledger, FakeSns(fail=True)).deliver(NOTE, END)


def test_a_claim_held_by_another_invocation_fails_the_record_instead_of_dropping_it() -> None:
    # Given an invocation that claimed the notification and has not finished
    ledger, sns = FakeLedger({NOTE.dedupe_key: "SENDING"}), FakeSns()

    # When another delivery of it comes, Then it is neither published nor taken as sent
    with pytest.raises(NotificationInFlight):
        notifier(ledger, sns).deliver(NOTE, END)
    assert sns.subjects == []


def test_a_published_notification_stays_delivered_when_the_ledger_cannot_be_marked() -> None:
    # Given SNS takes the message but DynamoDB fails right after
    ledger, sns = FakeLedger(broken_marks=True), FakeSns()

    # When it is delivered, Then the record succeeds (failing it would publish it again)
    assert notifier(ledger, sns).deliver(NOTE, END) is True
    assert sns.subjects == [NOTE.subject]
