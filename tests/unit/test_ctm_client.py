"""CtmClient operations: ids validated before any URL, get, refresh, find by OCID, list
filters, and what a 2xx answer must be."""

from __future__ import annotations

from typing import Any

import pytest

from cckm_refresh.ctm.client import CtmClient
from cckm_refresh.ctm.errors import CtmBadResponseError, CtmNotFoundError
from cckm_refresh.keyids import InvalidKeyIdError
from cckm_refresh.selectors import SELECTOR_FILTERS
from tests.unit.ctm_fakes import (
    KEY_ID,
    KEYS_PATH,
    OCID,
    OTHER_KEY_ID,
    FakeCtm,
    Reply,
    Sent,
    fake_client,
    far,
    key_object,
    refresh,
)

REFRESH = f"{KEYS_PATH}/{KEY_ID}/refresh"
HOSTILE_IDS = [
    "../../auth/tokens",
    "..%2f..%2fauth%2ftokens",
    "%2e%2e",
    "%2e%2e/%2e%2e/auth/tokens",
    f"{KEY_ID}/../../auth/tokens",
    f"{KEY_ID}\n",
    f"{KEY_ID}\r\nX-Injected: 1",
    f"{KEY_ID}?limit=-1",
    f"{KEY_ID}#frag",
    f" {KEY_ID}",
    KEY_ID.replace("-", "\u2010"),  # unicode hyphen lookalike
    KEY_ID.replace("0", "\uff10"),  # fullwidth digit
    "90671f17-28ff-4f93-86dc-ff08983469e",  # one character short
    "",
    "ocid1.key.oc1..x/../../auth",
    "ocid1.vault.oc1.iad.abc",
    "x" * 300,
]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_hostile_key_ids_never_reach_the_network(hostile: str) -> None:
    ctm = FakeCtm()
    client = fake_client(ctm)
    with pytest.raises(InvalidKeyIdError) as refreshed:
        refresh(client, hostile)
    with pytest.raises(InvalidKeyIdError):
        client.get_oci_key(hostile, deadline=far(ctm.runtime))
    assert refreshed.value.error_code == "INVALID_KEY_ID"
    assert ctm.sent == []  # not even a token request


@pytest.mark.parametrize("hostile", [*HOSTILE_IDS, KEY_ID])
def test_find_by_ocid_accepts_only_an_ocid(hostile: str) -> None:
    ctm = FakeCtm()
    with pytest.raises(InvalidKeyIdError):
        fake_client(ctm).find_oci_key(hostile, deadline=far(ctm.runtime))
    assert ctm.sent == []


def test_an_upper_case_uuid_is_refreshed_under_its_canonical_form() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH, Reply(200, key_object()))
    assert refresh(fake_client(ctm), KEY_ID.upper()).body["id"] == KEY_ID


def test_get_returns_the_key_object() -> None:
    ctm = FakeCtm()
    ctm.always("GET", f"{KEYS_PATH}/{KEY_ID}", Reply(200, key_object()))
    key = fake_client(ctm).get_oci_key(KEY_ID, deadline=far(ctm.runtime))
    assert key["oci_params"]["key_id"] == OCID


def test_get_of_an_unknown_key_is_not_found() -> None:
    ctm = FakeCtm()  # answers 404 NCERRResourceNotFound to unknown paths
    with pytest.raises(CtmNotFoundError) as caught:
        fake_client(ctm).get_oci_key(OTHER_KEY_ID, deadline=far(ctm.runtime))
    assert (caught.value.error_code, caught.value.http_status) == ("NCERRResourceNotFound", 404)


def test_refresh_posts_no_body() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH, Reply(200, key_object()))
    refresh(fake_client(ctm))
    assert ctm.to("POST", REFRESH)[0].body is None


# --- finding a key by its OCID --------------------------------------------------------------------


def with_ocid(n: int, ocid: str) -> dict[str, Any]:
    uuid = f"00000000-0000-4000-8000-{n:012d}"
    key = key_object(uuid)
    return {**key, "createdAt": f"2026-01-01T00:00:00.{n:06d}Z", "oci_params": {"key_id": ocid}}


def test_an_ocid_is_found_with_the_key_id_filter() -> None:
    ctm = FakeCtm()
    wanted = with_ocid(1, OCID)
    ctm.always("GET", KEYS_PATH, Reply(200, {"total": 1, "resources": [wanted]}))

    found = fake_client(ctm).find_oci_key(OCID, deadline=far(ctm.runtime))

    assert found == wanted
    (sent,) = ctm.to("GET", KEYS_PATH)
    assert sent.query["key_id"] == OCID


def test_a_ctm_ignoring_the_ocid_filter_is_paged_through_for_the_key_with_that_ocid() -> None:
    # Given a CTM that answers every key whatever key_id says, 3 to a page
    keys = [with_ocid(n, f"ocid1.key.oc1.iad.other{n}") for n in range(7)]
    keys[5] = with_ocid(5, OCID)
    ctm = FakeCtm()

    def answer(sent: Sent) -> Reply:
        skip = int(sent.query["skip"])
        return Reply(200, {"total": 7, "resources": keys[skip : skip + 3]})

    ctm.always("GET", KEYS_PATH, answer)
    # When the OCID is looked up, Then the key with that OCID is found, no other
    assert fake_client(ctm).find_oci_key(OCID, deadline=far(ctm.runtime)) == keys[5]


def test_an_ocid_no_key_has_is_none() -> None:
    ctm = FakeCtm()
    others = [with_ocid(1, "ocid1.key.oc1.iad.other")]
    ctm.always("GET", KEYS_PATH, Reply(200, {"total": 1, "resources": others}))
    assert fake_client(ctm).find_oci_key(OCID, deadline=far(ctm.runtime)) is None


# --- list calls ---------------------------------------------------------------------------------


def test_list_sends_selector_filters_and_a_stable_sort_as_query_parameters() -> None:
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Reply(200, {"total": 0, "resources": []}))
    filters = {name: f"{name} & =?/#%" for name in SELECTOR_FILTERS}

    fake_client(ctm).list_page(filters, page_size=100, deadline=far(ctm.runtime))

    (sent,) = ctm.to("GET", KEYS_PATH)
    assert sent.query == {**filters, "sort": "createdAt,id", "skip": "0", "limit": "100"}


@pytest.mark.parametrize(
    "filters",
    [{"limit": "-1"}, {"skip": "5"}, {"id": KEY_ID}, {"all": "true"}, {"sort": "name"}],
)
def test_list_refuses_filters_outside_the_selector_names(filters: dict[str, str]) -> None:
    ctm = FakeCtm()
    with pytest.raises(ValueError, match="unknown key list filter"):
        fake_client(ctm).list_page(filters, deadline=far(ctm.runtime))
    assert ctm.sent == []


def test_list_refuses_a_non_string_filter_value_and_a_page_size_out_of_bounds() -> None:
    ctm = FakeCtm()
    client = fake_client(ctm)
    with pytest.raises(ValueError, match="must be a non-empty string"):
        client.list_page({"region": 5}, deadline=far(ctm.runtime))  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="page_size"):
        client.list_page(None, page_size=1001, deadline=far(ctm.runtime))
    assert ctm.sent == []


@pytest.mark.parametrize(
    "body", [{"resources": "nope"}, {"total": 3}, {"resources": {"id": KEY_ID}}, "[]", "<html>"]
)
def test_a_page_that_is_not_a_list_answer_is_a_bad_response(body: Any) -> None:
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Reply(200, body))
    with pytest.raises(CtmBadResponseError) as caught:
        fake_client(ctm).list_page(None, deadline=far(ctm.runtime))
    assert caught.value.error_code == "BAD_RESPONSE"
    assert not caught.value.transient


def test_the_client_requires_an_https_base_url() -> None:
    with pytest.raises(ValueError, match="https"):
        CtmClient.create(base_url="http://ctm.test", secret_loader=lambda force: "rt")


# --- what a 2xx refresh/get answer must be -----------------------------------------------------


def test_a_key_that_came_back_gone_is_not_found_as_gone() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH, Reply(200, {**key_object(), "gone": True}))

    with pytest.raises(CtmNotFoundError) as caught:
        refresh(fake_client(ctm))

    assert (caught.value.error_code, caught.value.http_status) == ("GONE", 200)
    assert caught.value.attempts == 1
    assert not caught.value.transient


def test_gone_false_is_an_ordinary_refresh() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH, Reply(200, {**key_object(), "gone": False}))
    assert refresh(fake_client(ctm)).body["id"] == KEY_ID


@pytest.mark.parametrize(
    "body",
    [
        "<html>maintenance</html>",
        "[]",
        '"ok"',
        "",
        {"name": "not a key"},
        {**key_object(), "id": 5},
        {**key_object(), "id": ""},
        {**key_object(), "oci_params": "ENABLED"},
        {**key_object(), "oci_params": ["x"]},
        {**key_object(), "tenancy": {"name": "t"}},
        {**key_object(), "refreshed_at": 1700000000},
        key_object(lifecycle_state=1),
        key_object(current_key_version=["v1"]),
        key_object(OTHER_KEY_ID),
    ],
)
def test_a_2xx_refresh_answer_that_is_not_the_key_is_a_bad_response(body: Any) -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH, Reply(200, body))

    with pytest.raises(CtmBadResponseError) as caught:
        refresh(fake_client(ctm))

    assert (caught.value.error_code, caught.value.http_status) == ("BAD_RESPONSE", 200)
    assert caught.value.attempts == 1
    assert len(ctm.to("POST", REFRESH)) == 1  # not retried


def test_a_2xx_get_answer_that_is_not_a_key_is_a_bad_response() -> None:
    ctm = FakeCtm()
    ctm.always("GET", f"{KEYS_PATH}/{KEY_ID}", Reply(200, {**key_object(), "oci_params": 3}))
    with pytest.raises(CtmBadResponseError):
        fake_client(ctm).get_oci_key(KEY_ID, deadline=far(ctm.runtime))
