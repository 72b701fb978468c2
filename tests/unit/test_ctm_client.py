"""CtmClient operations: id validation before any URL, list paging and filters, get, refresh."""

from __future__ import annotations

from typing import Any

import pytest

from cckm_refresh.ctm.client import SELECTOR_FILTERS, CtmClient
from cckm_refresh.ctm.errors import CtmBadResponseError, CtmNotFoundError
from cckm_refresh.keyids import InvalidKeyIdError
from tests.unit.ctm_fakes import (
    KEY_ID,
    OCID,
    OTHER_KEY_ID,
    FakeCtm,
    Reply,
    Sent,
    fake_client,
    key_object,
)

KEYS_PATH = "/api/v1/cckm/oci/keys"

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
    # Given a client whose network records everything
    ctm = FakeCtm()
    client = fake_client(ctm)
    # When a hostile id is refreshed or read
    with pytest.raises(InvalidKeyIdError) as refreshed:
        client.refresh_oci_key(hostile)
    with pytest.raises(InvalidKeyIdError):
        client.get_oci_key(hostile)
    # Then nothing was sent, not even a token request
    assert refreshed.value.error_code == "INVALID_KEY_ID"
    assert ctm.sent == []


@pytest.mark.parametrize("hostile", [*HOSTILE_IDS, KEY_ID])
def test_list_by_key_id_accepts_only_an_ocid(hostile: str) -> None:
    ctm = FakeCtm()
    with pytest.raises(InvalidKeyIdError):
        fake_client(ctm).list_oci_keys(key_id=hostile)
    assert ctm.sent == []


def test_an_upper_case_uuid_is_refreshed_under_its_canonical_form() -> None:
    ctm = FakeCtm()
    ctm.always("POST", f"{KEYS_PATH}/{KEY_ID}/refresh", Reply(200, key_object()))

    response = fake_client(ctm).refresh_oci_key(KEY_ID.upper())

    assert response.body["id"] == KEY_ID


def test_get_returns_the_key_object() -> None:
    ctm = FakeCtm()
    ctm.always("GET", f"{KEYS_PATH}/{KEY_ID}", Reply(200, key_object()))
    assert fake_client(ctm).get_oci_key(KEY_ID)["oci_params"]["key_id"] == OCID


def test_get_of_an_unknown_key_is_not_found() -> None:
    ctm = FakeCtm()  # answers 404 NCERRResourceNotFound to unknown paths
    with pytest.raises(CtmNotFoundError) as caught:
        fake_client(ctm).get_oci_key(OTHER_KEY_ID)
    assert caught.value.error_code == "NCERRResourceNotFound"
    assert caught.value.http_status == 404


def test_refresh_posts_no_body() -> None:
    ctm = FakeCtm()
    ctm.always("POST", f"{KEYS_PATH}/{KEY_ID}/refresh", Reply(200, key_object()))
    fake_client(ctm).refresh_oci_key(KEY_ID)
    assert ctm.to("POST", f"{KEYS_PATH}/{KEY_ID}/refresh")[0].body is None


def uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def listed_key(n: int) -> dict[str, Any]:
    """A list item as CTM sends it, created in the order of ``n``."""
    return {**key_object(uuid(n)), "createdAt": f"2026-01-01T00:00:00.{n:06d}Z"}


class Pages:
    """A list endpoint over ``count`` keys that returns at most ``cap`` per page."""

    def __init__(self, count: int, cap: int = 1000, total: int | None = None) -> None:
        self.keys = [listed_key(n) for n in range(count)]
        self.cap = cap
        self.total = count if total is None else total

    def __call__(self, sent: Sent) -> Reply:
        skip, limit = int(sent.query["skip"]), int(sent.query["limit"])
        page = self.keys[skip : skip + min(limit, self.cap)]
        return Reply(200, {"skip": skip, "limit": limit, "total": self.total, "resources": page})


def listed(client: CtmClient, **kwargs: Any) -> list[str]:
    return [k["id"] for k in client.list_oci_keys(**kwargs)]


def test_list_pages_with_skip_and_limit_until_total() -> None:
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Pages(25))

    ids = listed(fake_client(ctm), page_size=10)

    assert ids == [uuid(n) for n in range(25)]
    # each page after the first re-reads an overlap before where the last one ended
    assert [(s.query["skip"], s.query["limit"]) for s in ctm.to("GET", KEYS_PATH)] == [
        ("0", "10"),
        ("0", "20"),
        ("0", "30"),
    ]


def test_list_advances_skip_by_the_keys_actually_returned() -> None:
    # Given a server returning at most 4 keys whatever limit asks
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Pages(10, cap=4))
    client = fake_client(ctm)

    # When the pages are read one by one
    first = client.list_page(None, page_size=100)
    second = client.list_page(None, cursor=first.next, page_size=100)

    # Then each cursor's position advanced by the keys the page actually held
    assert first.next is not None
    assert first.next.skip == 4
    assert second.next is not None
    assert second.next.skip == 8
    assert [k["id"] for k in first.resources + second.resources] == [uuid(n) for n in range(8)]
    assert ids_of_rest(client, second) == [uuid(n) for n in range(8, 10)]


def ids_of_rest(client: CtmClient, page: Any) -> list[str]:
    ids: list[str] = []
    while page.next is not None:
        page = client.list_page(None, cursor=page.next, page_size=100)
        ids += [k["id"] for k in page.resources]
    return ids


def test_list_stops_on_an_empty_page_even_if_total_promises_more() -> None:
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Pages(3, total=50))

    assert len(listed(fake_client(ctm), page_size=2)) == 3


def test_list_stops_when_the_server_ignores_skip() -> None:
    ctm = FakeCtm()
    same_page = Reply(200, {"resources": [listed_key(1), listed_key(2)]})
    ctm.always("GET", KEYS_PATH, same_page)

    assert listed(fake_client(ctm), page_size=2) == [uuid(1), uuid(2)]
    assert len(ctm.to("GET", KEYS_PATH)) == 2


def test_list_sends_selector_filters_key_id_and_a_stable_sort_as_query_parameters() -> None:
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Pages(0))
    filters = {name: f"{name} & =?/#%" for name in SELECTOR_FILTERS}

    listed(fake_client(ctm), filters=filters, key_id=OCID)

    (sent,) = ctm.to("GET", KEYS_PATH)
    assert sent.query == {
        **filters,
        "key_id": OCID,
        "sort": "createdAt,id",
        "skip": "0",
        "limit": "100",
    }


@pytest.mark.parametrize(
    "filters",
    [{"limit": "-1"}, {"skip": "5"}, {"id": KEY_ID}, {"all": "true"}, {"sort": "name"}],
)
def test_list_refuses_filters_outside_the_selector_names(filters: dict[str, str]) -> None:
    ctm = FakeCtm()
    with pytest.raises(ValueError, match="unknown key list filter"):
        fake_client(ctm).list_oci_keys(filters)
    assert ctm.sent == []


def test_list_refuses_a_non_string_filter_value() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        fake_client(FakeCtm()).list_oci_keys({"region": 5})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "body", [{"resources": "nope"}, {"total": 3}, {"resources": {"id": KEY_ID}}, "[]", "<html>"]
)
def test_a_page_that_is_not_a_list_answer_is_a_bad_response(body: Any) -> None:
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Reply(200, body))
    with pytest.raises(CtmBadResponseError) as caught:
        listed(fake_client(ctm))
    assert caught.value.error_code == "BAD_RESPONSE"
    assert not caught.value.transient


def test_the_client_requires_an_https_base_url() -> None:
    with pytest.raises(ValueError, match="https"):
        CtmClient.create(base_url="http://ctm.test", secret_loader=lambda force: "rt")


# --- what a 2xx refresh/get answer must be -----------------------------------------------------

REFRESH = f"{KEYS_PATH}/{KEY_ID}/refresh"


def test_a_key_that_came_back_gone_is_not_found_as_gone() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH, Reply(200, {**key_object(), "gone": True}))

    with pytest.raises(CtmNotFoundError) as caught:
        fake_client(ctm).refresh_oci_key(KEY_ID)

    assert caught.value.error_code == "GONE"
    assert caught.value.http_status == 200
    assert caught.value.attempts == 1
    assert not caught.value.transient


def test_gone_false_is_an_ordinary_refresh() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH, Reply(200, {**key_object(), "gone": False}))
    assert fake_client(ctm).refresh_oci_key(KEY_ID).body["id"] == KEY_ID


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
        fake_client(ctm).refresh_oci_key(KEY_ID)

    assert caught.value.error_code == "BAD_RESPONSE"
    assert caught.value.http_status == 200
    assert caught.value.attempts == 1
    assert len(ctm.to("POST", REFRESH)) == 1  # not retried


def test_a_2xx_get_answer_that_is_not_a_key_is_a_bad_response() -> None:
    ctm = FakeCtm()
    ctm.always("GET", f"{KEYS_PATH}/{KEY_ID}", Reply(200, {**key_object(), "oci_params": 3}))
    with pytest.raises(CtmBadResponseError):
        fake_client(ctm).get_oci_key(KEY_ID)
