"""Exactly-once delivery: ledger claims, SNS failures, and a webhook that never blocks SNS."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from cckm_refresh.notify.delivery import NotificationInFlight, Notifier
from cckm_refresh.notify.events import EventType, Notification, Severity
from cckm_refresh.notify.ledger import Claim
from cckm_refresh.notify.webhook import WebhookError

NOTE = Notification(
    event_type=EventType.KEY_ROTATED,
    severity=Severity.INFO,
    subject="[INFO] OCI key k1 rotated",
    summary="OCI key k1 rotated: version v1 -> v2",
    dedupe_key="KEY_ROTATED#k1#v2",
)
LEASE = datetime(2026, 11, 28, 6, 1, tzinfo=UTC)


@dataclass
class FakeLedger:
    """The ledger's rules in memory: a claim is free when absent or FAILED."""

    states: dict[str, str] = field(default_factory=dict)
    broken_marks: bool = False

    def claim(self, dedupe_key: str, lease_until: datetime) -> Claim:
        state = self.states.get(dedupe_key)
        if state == "SENT":
            return Claim.SENT
        if state == "SENDING":
            return Claim.IN_FLIGHT
        self.states[dedupe_key] = "SENDING"
        return Claim.CLAIMED

    def mark_sent(self, dedupe_key: str, message_id: str) -> None:
        if self.broken_marks:
            raise ConnectionError("DynamoDB unreachable")
        self.states[dedupe_key] = "SENT"

    def release(self, dedupe_key: str) -> None:
        if self.broken_marks:
            raise ConnectionError("DynamoDB unreachable")
        self.states[dedupe_key] = "FAILED"


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
class FakeMirror:
    error: Exception | None = None
    posted: list[Notification] = field(default_factory=list)

    def post(self, notification: Notification) -> None:
        if self.error is not None:
            raise self.error
        self.posted.append(notification)


def notifier(
    ledger: FakeLedger | None = None,
    publisher: FakePublisher | None = None,
    mirror: FakeMirror | None = None,
    counted: list[str] | None = None,
) -> Notifier:
    return Notifier(
        ledger or FakeLedger(),
        publisher or FakePublisher(),
        mirror,
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


def test_the_webhook_mirrors_after_sns() -> None:
    mirror = FakeMirror()
    notifier(mirror=mirror).deliver(NOTE, LEASE)
    assert mirror.posted == [NOTE]


def test_a_webhook_outage_neither_blocks_nor_repeats_sns() -> None:
    # Given a webhook that is down
    publisher, counted = FakePublisher(), []
    mirror = FakeMirror(error=WebhookError("the webhook did not take the notification: HTTP 503"))

    # When a notification is delivered, and the batch is retried
    assert notifier(FakeLedger(), publisher, mirror, counted).deliver(NOTE, LEASE) is True

    # Then SNS got it once and the outage is counted, not raised
    assert publisher.published == [NOTE]
    assert counted == ["NotificationsPublished", "WebhookFailures"]


def test_no_webhook_on_a_duplicate() -> None:
    ledger, mirror = FakeLedger({NOTE.dedupe_key: "SENT"}), FakeMirror()
    notifier(ledger, mirror=mirror).deliver(NOTE, LEASE)
    assert mirror.posted == []


def test_an_unexpected_webhook_error_is_logged_by_type_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an error whose text quotes the URL (as requests' errors do)
    secret_url = "https://hooks.example.com/services/T0/B0/SECRETPART"
    mirror = FakeMirror(error=ValueError(f"bad response from {secret_url}"))

    notifier(mirror=mirror).deliver(NOTE, LEASE)

    [warning] = [r for r in caplog.records if r.message == "webhook mirror failed"]
    assert warning.reason == "ValueError"  # type: ignore[attr-defined]
    assert "SECRETPART" not in repr([vars(r) for r in caplog.records])
