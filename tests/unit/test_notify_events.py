"""docs/reference.md 6: which records notify, with what severity, subject and body."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from cckm_refresh.notify.events import (
    MAX_SUBJECT,
    EventType,
    FailedKeys,
    FailureGroup,
    Severity,
    notifications_for,
    subject,
)

RUN_ID = "schedule-2026-11-28T06:00:00Z"


def run_item(**overrides: Any) -> dict[str, Any]:
    item = {
        "pk": f"RUN#{RUN_ID}",
        "sk": "RUN",
        "item_type": "RUN",
        "run_id": RUN_ID,
        "trigger": "schedule",
        "dry_run": False,
        "requested": Decimal(120),
        "status": "COMPLETED",
        "refreshed": Decimal(118),
        "not_found": Decimal(0),
        "failed": Decimal(2),
        "skipped": Decimal(0),
        "rotated": Decimal(3),
        "started_at": "2026-11-28T06:00:00.100Z",
        "finished_at": "2026-11-28T06:00:41.500Z",
    }
    return item | overrides


def key_item(**overrides: Any) -> dict[str, Any]:
    item = {
        "pk": "KEY#k1",
        "sk": "LATEST",
        "item_type": "KEY",
        "key_id": "k1",
        "display_name": "payments-db-master-key",
        "tenancy": "acme-prod",
        "lifecycle_state": "ENABLED",
        "current_key_version": "ocid1.keyversion.oc1.iad.v1",
        "updated_at": "2026-11-28T06:00:10.000Z",
    }
    return item | overrides


def no_failed(run_id: str) -> FailedKeys:
    raise AssertionError("failed keys are read only when a run has failures")


def two_failed(run_id: str) -> FailedKeys:
    keys = ({"key_id": "a", "display_name": "A", "error_code": "HTTP_403"},)
    return FailedKeys(keys, 2)


def test_a_run_turning_completed_notifies_once_with_its_digest() -> None:
    [n] = notifications_for("MODIFY", run_item(status="RUNNING"), run_item(), two_failed)
    assert n.event_type is EventType.RUN_COMPLETED
    assert n.severity is Severity.ERROR
    assert n.summary == f"Run {RUN_ID}: 118 of 120 OCI keys refreshed, 2 failed, 3 rotated"
    body = n.body()
    assert body["event_type"] == "RUN_COMPLETED"
    assert body["severity"] == "ERROR"
    assert body["failed_keys"] == [{"key_id": "a", "display_name": "A", "error_code": "HTTP_403"}]
    assert body["failed_count"] == 2
    assert body["requested"] == 120
    assert n.dedupe_key == f"RUN_COMPLETED#{RUN_ID}"


def test_a_clean_run_is_info_and_reads_no_failed_keys() -> None:
    new = run_item(failed=Decimal(0), refreshed=Decimal(120))
    [n] = notifications_for("MODIFY", run_item(status="RUNNING"), new, no_failed)
    assert n.severity is Severity.INFO
    assert n.body()["failed_count"] == 0


def test_a_run_with_keys_not_found_and_none_failed_is_a_warning() -> None:
    new = run_item(failed=Decimal(0), not_found=Decimal(4), refreshed=Decimal(116))
    [n] = notifications_for("MODIFY", run_item(status="RUNNING"), new, no_failed)
    assert n.severity is Severity.WARNING
    assert "4 of 120 keys not found" in n.subject


def test_failed_keys_are_grouped_by_cause_and_tenancy_with_what_to_check() -> None:
    # Given a run where OCI refused every key of one tenancy, and two others ran out of time
    groups = (
        FailureGroup("NotAuthorizedOrNotFound", "acme-prod", 120),
        FailureGroup("DEADLINE", "acme-dev", 2),
    )

    def failed(run_id: str) -> FailedKeys:
        return FailedKeys(({"key_id": "a", "error_code": "NotAuthorizedOrNotFound"},), 122, groups)

    new = run_item(failed=Decimal(122), refreshed=Decimal(0), requested=Decimal(122))
    [n] = notifications_for("MODIFY", run_item(status="RUNNING"), new, failed)

    # Then the notification is an ERROR whose summary says what to check, and whose body counts
    # every cause
    assert n.severity is Severity.ERROR
    assert n.summary.endswith(
        "OCI refused 120 keys of tenancy acme-prod: check the OCI connection's policy in CCKM"
    )
    assert [(g["error_code"], g["tenancy"], g["count"]) for g in n.body()["failed_by_cause"]] == [
        ("NotAuthorizedOrNotFound", "acme-prod", 120),
        ("DEADLINE", "acme-dev", 2),
    ]


def test_a_run_whose_listing_was_incomplete_is_an_error_even_with_no_key_failed() -> None:
    listing = {"error_code": "LISTING_INCOMPLETE", "error_message": "CTM's order changes"}
    new = run_item(failed=Decimal(0), listing_error=listing)
    [n] = notifications_for("MODIFY", run_item(status="RUNNING"), new, no_failed)
    assert n.severity is Severity.ERROR
    assert "the listing was incomplete: CTM's order changes" in n.summary
    assert n.body()["listing_error"] == listing


def test_a_run_already_completed_does_not_notify_again() -> None:
    assert notifications_for("MODIFY", run_item(), run_item(), no_failed) == []
    assert notifications_for("MODIFY", None, run_item(status="RUNNING"), no_failed) == []


def test_a_rotation_is_info_and_names_both_versions() -> None:
    new = key_item(current_key_version="ocid1.keyversion.oc1.iad.v2")
    [n] = notifications_for("MODIFY", key_item(), new, no_failed)
    assert n.event_type is EventType.KEY_ROTATED
    assert n.severity is Severity.INFO
    assert n.body()["previous_key_version"] == "ocid1.keyversion.oc1.iad.v1"
    assert n.body()["current_key_version"] == "ocid1.keyversion.oc1.iad.v2"
    assert n.dedupe_key == "KEY_ROTATED#k1#ocid1.keyversion.oc1.iad.v2"


def test_a_rotation_summary_names_the_key_where_it_lives_and_the_version_tails() -> None:
    old = key_item(
        vault_name="payments-vault", region="us-ashburn-1", current_key_version="v" * 40 + "abc"
    )
    new = old | {"current_key_version": "v" * 40 + "def"}
    [n] = notifications_for("MODIFY", old, new, no_failed)
    assert n.summary == (
        "OCI key payments-db-master-key (payments-vault, us-ashburn-1) rotated:"
        " version ...vvvvvvvvvabc -> ...vvvvvvvvvdef"
    )
    assert n.subject == "[INFO] OCI key payments-db-master-key rotated"


def test_a_key_body_carries_where_the_key_lives_and_the_run_that_saw_it() -> None:
    old = key_item(oci_key_id="ocid1.key.oc1.iad.x", region="us-ashburn-1", last_run_id="r1")
    new = old | {"lifecycle_state": "DISABLED", "last_run_id": "r2"}
    [n] = notifications_for("MODIFY", old, new, no_failed)
    body = n.body()
    assert body["key_id"] == "k1"
    assert body["oci_key_id"] == "ocid1.key.oc1.iad.x"
    assert (body["tenancy"], body["region"]) == ("acme-prod", "us-ashburn-1")
    assert (body["previous_state"], body["lifecycle_state"]) == ("ENABLED", "DISABLED")
    assert body["last_run_id"] == "r2"


@pytest.mark.parametrize(
    ("state", "severity"),
    [
        ("DISABLED", Severity.ERROR),
        ("PENDING_DELETION", Severity.ERROR),
        ("UPDATING", Severity.WARNING),
    ],
)
def test_a_state_change_is_a_warning_or_an_error(state: str, severity: Severity) -> None:
    [n] = notifications_for("MODIFY", key_item(), key_item(lifecycle_state=state), no_failed)
    assert n.event_type is EventType.KEY_STATE_CHANGED
    assert n.severity is severity
    assert n.summary.endswith(f"changed state ENABLED -> {state}")


def test_a_key_seen_for_the_first_time_is_neither_rotated_nor_changed() -> None:
    assert notifications_for("INSERT", None, key_item(), no_failed) == []
    first_version = key_item(current_key_version=None, lifecycle_state=None)
    assert notifications_for("MODIFY", first_version, key_item(), no_failed) == []


def test_rotation_and_state_change_in_one_record_give_two_notifications() -> None:
    new = key_item(current_key_version="v9", lifecycle_state="DISABLED")
    kinds = [n.event_type for n in notifications_for("MODIFY", key_item(), new, no_failed)]
    assert kinds == [EventType.KEY_ROTATED, EventType.KEY_STATE_CHANGED]


def test_a_rejected_request_insert_is_an_error() -> None:
    item = {"pk": "REJECTED#m-1", "sk": "REQUEST", "item_type": "REJECTED", "error": "keys[0]: bad"}
    [n] = notifications_for("INSERT", None, item, no_failed)
    assert n.event_type is EventType.REQUEST_REJECTED
    assert n.severity is Severity.ERROR
    assert n.summary == "Rejected request m-1: keys[0]: bad"
    assert n.dedupe_key == "REQUEST_REJECTED#m-1"


def test_a_rejection_body_carries_an_excerpt_of_what_was_sent() -> None:
    item = {
        "pk": "REJECTED#m-2",
        "item_type": "REJECTED",
        "error": "not JSON",
        "body": "x" * 4000,
        "received_at": "2026-11-28T06:00:00.000Z",
    }
    [n] = notifications_for("INSERT", None, item, no_failed)
    body = n.body()
    assert (body["source_id"], body["error"]) == ("m-2", "not JSON")
    assert body["received_at"] == "2026-11-28T06:00:00.000Z"
    assert body["body"] == "x" * 500


def test_a_multi_line_error_gives_a_one_line_summary() -> None:
    item = {
        "pk": "REJECTED#m-3",
        "item_type": "REJECTED",
        "error": "line one\n\tline two" + "!" * 900,
    }
    [n] = notifications_for("INSERT", None, item, no_failed)
    assert n.summary.startswith("Rejected request m-3: line one line two!!!")
    assert n.summary.isprintable()
    assert len(n.summary) <= 500


def test_a_dry_run_says_nothing_was_refreshed() -> None:
    new = run_item(dry_run=True, refreshed=Decimal(0), failed=Decimal(0), skipped=Decimal(120))
    [n] = notifications_for("MODIFY", run_item(status="RUNNING"), new, no_failed)
    assert n.summary == f"Run {RUN_ID} (dry run): 120 OCI keys resolved, none refreshed"
    assert n.body()["dry_run"] is True


def test_a_run_body_carries_the_run_fields_as_plain_json_numbers() -> None:
    old = run_item(status="RUNNING", request_id="pipeline-42", reason="OCI rotated these")
    new = old | {"status": "COMPLETED"}
    [n] = notifications_for("MODIFY", old, new, two_failed)
    body = n.body()
    assert (body["run_id"], body["trigger"]) == (RUN_ID, "schedule")
    assert (body["request_id"], body["reason"]) == ("pipeline-42", "OCI rotated these")
    assert body["started_at"] == "2026-11-28T06:00:00.100Z"
    assert body["finished_at"] == "2026-11-28T06:00:41.500Z"
    counts = {
        k: body[k] for k in ("requested", "refreshed", "not_found", "failed", "skipped", "rotated")
    }
    assert counts == {
        "requested": 120,
        "refreshed": 118,
        "not_found": 0,
        "failed": 2,
        "skipped": 0,
        "rotated": 3,
    }
    assert all(type(v) is int for v in counts.values())


@pytest.mark.parametrize(
    ("event_name", "old", "new"),
    [
        ("REMOVE", run_item(status="RUNNING"), None),
        ("INSERT", None, {"item_type": "RESULT", "status": "FAILED"}),
        ("INSERT", None, {"item_type": "NOTIFICATION", "state": "SENDING"}),
        ("MODIFY", key_item(), key_item(last_status="FAILED")),
        ("MODIFY", {"item_type": "REJECTED"}, {"item_type": "REJECTED", "error": "x"}),
    ],
)
def test_other_records_are_ignored(event_name: str, old: Any, new: Any) -> None:
    assert notifications_for(event_name, old, new, no_failed) == []


def test_subjects_are_one_printable_ascii_line_under_100_characters() -> None:
    line = subject(Severity.ERROR, "x" * 300 + "\n\u00e9")
    assert len(line) <= MAX_SUBJECT < 100
    assert line.isascii()
    assert line.isprintable()
    assert line.endswith("...")


def test_subjects_keep_names_readable_without_their_accents() -> None:
    assert subject(Severity.INFO, "cl\u00e9\tde paiement \u2603") == "[INFO] cle de paiement ?"


@pytest.mark.parametrize(
    "new",
    [
        run_item(run_id="r" * 128),
        key_item(display_name="n" * 300, lifecycle_state="DISABLED"),
        {"pk": "REJECTED#" + "m" * 128, "item_type": "REJECTED", "error": "e\n" * 200},
    ],
)
def test_every_subject_fits_sns(new: dict[str, Any]) -> None:
    old = run_item(status="RUNNING") if new.get("item_type") == "RUN" else key_item()
    event_name = "INSERT" if new["item_type"] == "REJECTED" else "MODIFY"
    found = notifications_for(event_name, old, new, two_failed)
    assert found
    for n in found:
        assert len(n.subject) < 100
        assert n.subject.isascii()
        assert n.subject.isprintable()


def test_a_rotation_summary_names_the_versions_by_their_distinct_segment() -> None:
    key_part = "abuwcljrdr2i4ld72pkcopnyes34u5ypffduargf67wir5dptn2yjt4jwwga"
    old = key_item(current_key_version=f"ocid1.keyversion.oc1.iad.vault.aaaaoldversion.{key_part}")
    new = key_item(current_key_version=f"ocid1.keyversion.oc1.iad.vault.bbbbnewversion.{key_part}")
    [n] = notifications_for("MODIFY", old, new, no_failed)
    assert n.summary.endswith("version ...aaoldversion -> ...bbnewversion")
