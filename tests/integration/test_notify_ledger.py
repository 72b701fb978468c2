"""The notification ledger's conditional writes against a real DynamoDB API (moto server)."""

from __future__ import annotations

from typing import Any

import pytest

from cckm_refresh.notify.delivery import LEASE_MARGIN, Claim, NotificationLedger
from cckm_refresh.notify.stream import RunDigest
from cckm_refresh.runtime import Deadline
from cckm_refresh.table.reads import TableReader
from tests.unit.manual_runtime import ManualRuntime

pytestmark = pytest.mark.integration

KEY = "RUN_COMPLETED#nightly"
A_DAY = 86_400.0


@pytest.fixture
def runtime() -> ManualRuntime:
    return ManualRuntime()


@pytest.fixture
def ledger(aws_stack: Any, runtime: ManualRuntime) -> NotificationLedger:
    return NotificationLedger(aws_stack.client("dynamodb"), aws_stack.table_name, 90, runtime)


def invocation(runtime: ManualRuntime, seconds: float = 60.0) -> Deadline:
    """The deadline of an invocation with ``seconds`` left."""
    return Deadline.within(seconds, runtime)


def test_the_first_claim_wins_and_writes_a_ttl_ledger_item(
    ledger: NotificationLedger, runtime: ManualRuntime, aws_stack: Any
) -> None:
    assert ledger.claim(KEY, invocation(runtime)) is Claim.CLAIMED

    item = aws_stack.table.get_item(Key={"pk": f"NOTIFIED#{KEY}", "sk": "NOTIFICATION"})["Item"]
    assert item["item_type"] == "NOTIFICATION"
    assert item["state"] == "SENDING"
    assert int(item["expires_at"]) == int(runtime.time() + 90 * A_DAY)


def test_a_live_claim_is_in_flight_for_everyone_else(
    ledger: NotificationLedger, runtime: ManualRuntime
) -> None:
    ledger.claim(KEY, invocation(runtime))
    assert ledger.claim(KEY, invocation(runtime)) is Claim.IN_FLIGHT


def test_a_sent_notification_is_never_claimed_again(
    ledger: NotificationLedger, runtime: ManualRuntime
) -> None:
    ledger.claim(KEY, invocation(runtime))
    ledger.mark_sent(KEY, "sns-message-1")
    runtime.sleep(A_DAY)  # long after any lease
    assert ledger.claim(KEY, invocation(runtime)) is Claim.SENT


def test_a_released_claim_can_be_claimed_again(
    ledger: NotificationLedger, runtime: ManualRuntime
) -> None:
    ledger.claim(KEY, invocation(runtime))
    ledger.release(KEY)
    assert ledger.claim(KEY, invocation(runtime)) is Claim.CLAIMED


def test_a_claim_is_taken_over_once_its_invocations_deadline_and_the_margin_passed(
    ledger: NotificationLedger, runtime: ManualRuntime
) -> None:
    # Given an invocation with 60 s left that claimed it and died before marking it
    ledger.claim(KEY, invocation(runtime, 60.0))

    # When a retry comes just before its deadline plus the margin, and just after
    runtime.sleep(60.0 + LEASE_MARGIN - 1)
    before = ledger.claim(KEY, invocation(runtime))
    runtime.sleep(2.0)
    after = ledger.claim(KEY, invocation(runtime))

    # Then only the later one takes it over
    assert (before, after) == (Claim.IN_FLIGHT, Claim.CLAIMED)


def test_a_sent_notification_cannot_be_released(
    ledger: NotificationLedger, runtime: ManualRuntime, aws_stack: Any
) -> None:
    ledger.claim(KEY, invocation(runtime))
    ledger.mark_sent(KEY, "sns-message-1")
    client = aws_stack.client("dynamodb")
    with pytest.raises(client.exceptions.ConditionalCheckFailedException):
        ledger.release(KEY)
    assert ledger.claim(KEY, invocation(runtime)) is Claim.SENT


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
