"""docs/reference.md 4.1: every request either parses or is rejected with an error naming the
field."""

from __future__ import annotations

import json

import pytest

from cckm_refresh.request import RequestError, parse_request, parse_request_body

UUID = "90671f17-28ff-4f93-86dc-ff08983469e7"
OCID = "ocid1.key.oc1.iad.abcd.xyz-123_a"


def rejected_field(document: object) -> str:
    with pytest.raises(RequestError) as caught:
        parse_request(document)
    return caught.value.field


def test_a_full_request_parses_into_ids_ocids_and_selector() -> None:
    request = parse_request(
        {
            "keys": [UUID.upper(), OCID],
            "selector": {"vault_id": "v1", "lifecycle_state": "ENABLED"},
            "request_id": "rotation-pipeline-2026-11-28-0042",
            "reason": "OCI rotated these keys",
            "dry_run": True,
        }
    )
    assert request.key_ids == (UUID,)
    assert request.ocids == (OCID,)
    assert request.selector is not None
    assert request.selector.as_query() == {"lifecycle_state": "ENABLED", "vault_id": "v1"}
    assert request.request_id == "rotation-pipeline-2026-11-28-0042"
    assert request.dry_run is True


def test_duplicate_keys_are_dropped_case_insensitively_for_uuids() -> None:
    request = parse_request({"keys": [UUID, UUID.upper(), OCID, OCID]})
    assert request.key_ids == (UUID,)
    assert request.ocids == (OCID,)


def test_select_all_is_exactly_all_true() -> None:
    request = parse_request({"selector": {"all": True}})
    assert request.selector is not None
    assert request.selector.all_keys


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ([], "request"),
        ("keys", "request"),
        ({}, "keys"),
        ({"keys": []}, "keys"),
        ({"keys": UUID}, "keys"),
        ({"keys": [UUID] * 1001}, "keys"),
        ({"keys": [UUID, "../../auth/tokens"]}, "keys[1]"),
        ({"keys": [UUID, 42]}, "keys[1]"),
        ({"keys": ["ocid1.key.oc1.IAD.UPPER"]}, "keys[0]"),
        ({"keys": ["ocid1.vault.oc1.iad.abc"]}, "keys[0]"),
        ({"keys": [UUID + "\n"]}, "keys[0]"),
        ({"selector": {}}, "selector"),
        ({"selector": []}, "selector"),
        ({"selector": {"all": False}}, "selector.all"),
        ({"selector": {"all": 1}}, "selector.all"),
        ({"selector": {"all": True, "region": "x"}}, "selector.all"),
        ({"selector": {"colour": "red"}}, "selector.colour"),
        ({"selector": {"region": 7}}, "selector.region"),
        ({"selector": {"region": ""}}, "selector.region"),
        ({"selector": {"region": "x" * 257}}, "selector.region"),
        ({"keys": [UUID], "request_id": ""}, "request_id"),
        ({"keys": [UUID], "request_id": "a b"}, "request_id"),
        ({"keys": [UUID], "request_id": "x" * 129}, "request_id"),
        ({"keys": [UUID], "run_id": "run/1"}, "run_id"),
        ({"keys": [UUID], "reason": "x" * 257}, "reason"),
        ({"keys": [UUID], "reason": None}, "reason"),
        ({"keys": [UUID], "dry_run": "yes"}, "dry_run"),
        ({"keys": [UUID], "dry_run": 1}, "dry_run"),
        ({"keys": [UUID], "priority": "high"}, "priority"),
    ],
)
def test_invalid_requests_are_rejected_naming_the_field(document: object, field: str) -> None:
    assert rejected_field(document) == field


def test_a_body_that_is_not_json_is_rejected_as_body() -> None:
    with pytest.raises(RequestError) as caught:
        parse_request_body("{not json")
    assert caught.value.field == "body"


def test_the_error_never_echoes_the_offending_value() -> None:
    hostile = "<script>secret-looking-value</script>"
    with pytest.raises(RequestError) as caught:
        parse_request_body(json.dumps({"keys": [hostile]}))
    assert hostile not in str(caught.value)


def test_an_unknown_field_name_is_quoted_printable_and_short() -> None:
    assert rejected_field({"keys": [UUID], "\u0000evil\n": 1}) == "?evil?"
    assert rejected_field({"selector": {"x" * 100: "v"}}) == "selector." + "x" * 64
