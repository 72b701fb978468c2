"""The notification ledger's conditional writes against a real DynamoDB API (moto server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cckm_refresh.notify.ledger import Claim, NotificationLedger
from cckm_refresh.notify.stream import RunDigest
from cckm_refresh.table.reads import TableReader

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
KEY = "RUN_COMPLETED#nightly"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(aws_stack: Any, clock: Clock) -> NotificationLedger:
    return NotificationLedger(aws_stack.client("dynamodb"), aws_stack.table_name, 90, now=clock)


def test_the_first_claim_wins_and_writes_a_ttl_ledger_item(
    ledger: NotificationLedger, aws_stack: Any
) -> None:
    assert ledger.claim(KEY, T0 + timedelta(minutes=1)) is Claim.CLAIMED

    item = aws_stack.table.get_item(Key={"pk": f"NOTIFIED#{KEY}", "sk": "NOTIFICATION"})["Item"]
    assert item["item_type"] == "NOTIFICATION"
    assert item["state"] == "SENDING"
    assert int(item["expires_at"]) == int((T0 + timedelta(days=90)).timestamp())


def test_a_live_claim_is_in_flight_for_everyone_else(ledger: NotificationLedger) -> None:
    ledger.claim(KEY, T0 + timedelta(minutes=1))
    assert ledger.claim(KEY, T0 + timedelta(minutes=1)) is Claim.IN_FLIGHT


def test_a_sent_notification_is_never_claimed_again(
    ledger: NotificationLedger, clock: Clock
) -> None:
    ledger.claim(KEY, T0 + timedelta(minutes=1))
    ledger.mark_sent(KEY, "sns-message-1")
    clock.now = T0 + timedelta(days=1)  # long after any lease
    assert ledger.claim(KEY, clock.now + timedelta(minutes=1)) is Claim.SENT


def test_a_released_claim_can_be_claimed_again(ledger: NotificationLedger) -> None:
    ledger.claim(KEY, T0 + timedelta(minutes=1))
    ledger.release(KEY)
    assert ledger.claim(KEY, T0 + timedelta(minutes=1)) is Claim.CLAIMED


def test_a_claim_whose_lease_ran_out_is_taken_over(
    ledger: NotificationLedger, clock: Clock
) -> None:
    # Given an invocation that claimed it and died before marking it
    ledger.claim(KEY, T0 + timedelta(seconds=65))

    # When a retry comes before and after that invocation's deadline
    clock.now = T0 + timedelta(seconds=30)
    before = ledger.claim(KEY, clock.now + timedelta(seconds=65))
    clock.now = T0 + timedelta(seconds=66)
    after = ledger.claim(KEY, clock.now + timedelta(seconds=65))

    # Then only the later one takes it over
    assert (before, after) == (Claim.IN_FLIGHT, Claim.CLAIMED)


def test_a_sent_notification_cannot_be_released(ledger: NotificationLedger, aws_stack: Any) -> None:
    ledger.claim(KEY, T0 + timedelta(minutes=1))
    ledger.mark_sent(KEY, "sns-message-1")
    client = aws_stack.client("dynamodb")
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        ledger.release(KEY)
    assert ledger.claim(KEY, T0 + timedelta(minutes=1)) is Claim.SENT


def test_the_run_digest_counts_every_failed_result_and_lists_at_most_50(aws_stack: Any) -> None:
    # Given a run with 60 failed, 40 refreshed and a few unrelated items
    with aws_stack.table.batch_writer() as batch:
        for n in range(100):
            batch.put_item(
                Item={
                    "pk": "RUN#big",
                    "sk": f"KEY#k{n:03}",
                    "item_type": "RESULT",
                    "key_id": f"k{n:03}",
                    "display_name": f"key {n}",
                    "status": "FAILED" if n % 5 < 3 else "REFRESHED",
                    "error_code": "HTTP_403" if n % 5 < 3 else "",
                }
            )
        batch.put_item(
            Item={"pk": "RUN#big", "sk": "RUN", "item_type": "RUN", "status": "COMPLETED"}
        )
        batch.put_item(Item={"pk": "RUN#other", "sk": "KEY#z", "status": "FAILED", "key_id": "z"})

    reader = TableReader(aws_stack.client("dynamodb"), aws_stack.table_name)
    digest = RunDigest(reader).failed_keys("big")

    assert digest.count == 60
    assert len(digest.keys) == 50
    assert digest.keys[0] == {"key_id": "k000", "display_name": "key 0", "error_code": "HTTP_403"}
    assert {k["key_id"] for k in digest.keys} <= {f"k{n:03}" for n in range(100) if n % 5 < 3}
