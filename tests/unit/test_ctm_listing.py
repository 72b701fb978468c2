"""Selector listing: stable, resumable pages (list_page / ListCursor) and resource_matches."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from cckm_refresh.ctm.client import LIST_OVERLAP, CtmClient, KeyPage, ListCursor
from cckm_refresh.selectors import SELECTOR_FILTERS, resource_matches
from tests.unit.ctm_fakes import FakeCtm, Reply, Sent, fake_client, key_object

KEYS_PATH = "/api/v1/cckm/oci/keys"


def uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def listed_key(n: int) -> dict[str, Any]:
    return {**key_object(uuid(n)), "createdAt": f"2026-01-01T00:00:00.{n:06d}Z"}


class ChurningCtm:
    """A key list honouring ``sort=createdAt,id``, ``skip`` and ``limit`` (capped), whose keys
    change between page reads as ``churn`` says."""

    def __init__(self, count: int, cap: int = 1000) -> None:
        self.keys = [listed_key(n) for n in range(count)]
        self.next_n = count
        self.cap = cap
        self.reads = 0
        self.largest_page = 0

    def __call__(self, sent: Sent) -> Reply:
        assert sent.query["sort"] == "createdAt,id"
        self.reads += 1
        skip, limit = int(sent.query["skip"]), int(sent.query["limit"])
        ordered = sorted(self.keys, key=lambda k: (k["createdAt"], k["id"]))
        page = ordered[skip : skip + min(limit, self.cap)]
        self.largest_page = max(self.largest_page, len(page))
        return Reply(200, {"skip": skip, "limit": limit, "total": len(ordered), "resources": page})

    def remove(self, count: int, rng: random.Random) -> None:
        for _ in range(min(count, len(self.keys))):
            self.keys.pop(rng.randrange(len(self.keys)))

    def add(self, count: int) -> None:
        for _ in range(count):
            self.keys.append(listed_key(self.next_n))
            self.next_n += 1


def read_all(client: CtmClient, ctm: ChurningCtm, page_size: int, between: Any) -> list[str]:
    ids: list[str] = []
    page = client.list_page(None, page_size=page_size)
    ids += [k["id"] for k in page.resources]
    while page.next is not None:
        between()
        # the cursor travels through a queue message between pages
        cursor = ListCursor.from_json(json.loads(json.dumps(page.next.to_json())))
        page = client.list_page(None, cursor=cursor, page_size=page_size)
        ids += [k["id"] for k in page.resources]
    return ids


def test_a_quiet_listing_returns_every_key_once_in_order() -> None:
    fake = ChurningCtm(57)
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, fake)

    ids = read_all(fake_client(ctm), fake, 10, lambda: None)

    assert ids == [uuid(n) for n in range(57)]


@pytest.mark.parametrize("seed", range(40))
def test_keys_moving_between_pages_are_never_returned_twice_nor_skipped(seed: int) -> None:
    # Given a list whose keys are removed and added between page reads (sometimes more
    # removals than the overlap re-read), and a CTM page cap that is sometimes small
    rng = random.Random(seed)
    fake = ChurningCtm(rng.randint(0, 300), cap=rng.choice([7, 50, 1000]))
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, fake)
    present_at_start = {k["id"] for k in fake.keys}
    removed: set[str] = set()

    def churn() -> None:
        before = {k["id"] for k in fake.keys}
        fake.remove(rng.choice([0, 1, 3, LIST_OVERLAP + 5, 60]), rng)
        removed.update(before - {k["id"] for k in fake.keys})
        fake.add(rng.choice([0, 2, 30]))

    # When the listing is read page by page, resuming from JSON cursors
    page_size = rng.choice([5, 25, 100])
    ids = read_all(fake_client(ctm), fake, page_size, churn)

    # Then no key came twice, and every key present throughout came
    assert len(ids) == len(set(ids))
    assert present_at_start - removed <= set(ids)
    # And no page held more than the page size plus the overlap
    assert fake.largest_page <= page_size + 2 * LIST_OVERLAP + 60


def test_refreshes_between_pages_do_not_move_keys_in_the_order_read() -> None:
    # Given keys whose updatedAt a refresh bumps: the list is read by createdAt,id instead
    fake = ChurningCtm(30)
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, fake)

    def refresh_the_first_keys() -> None:
        for key in fake.keys[:10]:
            key["updatedAt"] = "2030-01-01T00:00:00.000000Z"

    ids = read_all(fake_client(ctm), fake, 10, refresh_the_first_keys)

    assert ids == [uuid(n) for n in range(30)]


def test_malformed_items_are_skipped_and_counted_once() -> None:
    # Given a page with an item without id, one with oci_params of the wrong type, one with a
    # numeric tenancy, one not an object at all
    good = [listed_key(n) for n in range(4)]
    no_id = {k: v for k, v in listed_key(10).items() if k != "id"}
    bad_params = {**listed_key(11), "oci_params": "ENABLED"}
    bad_tenancy = {**listed_key(12), "tenancy": 7}
    items = [good[0], no_id, good[1], bad_params, good[2], bad_tenancy, "key", good[3]]
    ctm = FakeCtm()

    def answer(sent: Sent) -> Reply:
        skip, limit = int(sent.query["skip"]), int(sent.query["limit"])
        page = items[skip : skip + limit]
        return Reply(200, {"total": len(items), "resources": page})

    ctm.always("GET", KEYS_PATH, answer)
    client = fake_client(ctm)

    # When the list is read in pages of 4 (the second re-reads the first as overlap)
    first = client.list_page(None, page_size=4)
    assert first.next is not None
    second = client.list_page(None, cursor=first.next, page_size=4)

    # Then only well-formed keys came, and each malformed item was counted once
    assert [k["id"] for k in first.resources + second.resources] == [k["id"] for k in good]
    assert (first.malformed, second.malformed) == (2, 2)
    assert second.next is None


def test_a_page_of_nothing_but_overlap_reads_on_instead_of_standing_still() -> None:
    # Given a CTM capping pages at 4 keys, less than the overlap re-read
    fake = ChurningCtm(10, cap=4)
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, fake)

    ids = read_all(fake_client(ctm), fake, 100, lambda: None)

    assert ids == [uuid(n) for n in range(10)]


def test_the_cursor_round_trips_through_json() -> None:
    cursor = ListCursor(120, "2026-01-01T00:00:00.000001Z", uuid(3))
    assert ListCursor.from_json(json.loads(json.dumps(cursor.to_json()))) == cursor
    assert ListCursor.from_json(ListCursor(7).to_json()) == ListCursor(7)


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        "cursor",
        {"skip": 1},
        {"skip": -1, "after": None},
        {"skip": "1", "after": None},
        {"skip": True, "after": None},
        {"skip": 1, "after": ["only one"]},
        {"skip": 1, "after": [1, 2]},
        {"skip": 1, "after": ["a", "x" * 300]},
        {"skip": 1, "after": None, "extra": 1},
    ],
)
def test_a_bad_cursor_is_a_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="cursor"):
        ListCursor.from_json(value)


def test_a_finished_listing_has_no_next_cursor() -> None:
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, ChurningCtm(3))
    page = fake_client(ctm).list_page({"region": "us-ashburn-1"})
    assert isinstance(page, KeyPage)
    assert page.next is None
    assert len(page.resources) == 3


def test_list_oci_keys_yields_only_keys_that_really_match() -> None:
    # Given a CTM that ignores the region filter (and answers every key)
    keys = [listed_key(0), {**listed_key(1), "region": "eu-frankfurt-1"}]
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Reply(200, {"total": 2, "resources": keys}))

    ids = [k["id"] for k in fake_client(ctm).list_oci_keys({"region": "us-ashburn-1"})]

    assert ids == [uuid(0)]


def test_an_ocid_lookup_yields_only_the_key_with_that_ocid() -> None:
    keys = [
        {**listed_key(0), "oci_params": {"key_id": "ocid1.key.oc1.iad.other"}},
        {**listed_key(1), "oci_params": {"key_id": "ocid1.key.oc1.iad.wanted"}},
    ]
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Reply(200, {"total": 2, "resources": keys}))

    found = list(fake_client(ctm).list_oci_keys(key_id="ocid1.key.oc1.iad.wanted"))

    assert [k["id"] for k in found] == [uuid(1)]


# --- resource_matches ------------------------------------------------------------------------

KEY = {
    "id": uuid(1),
    "vault_id": "v-1",
    "cckm_vault_id": "cv-1",
    "tenancy": "acme-prod",
    "region": "us-ashburn-1",
    "compartment_name": "payments",
    "key_material_origin": "native",
    "oci_params": {
        "vault_name": "acme-prod-iad-vault-01",
        "lifecycle_state": "ENABLED",
        "display_name": "payments-db-master-key-001",
        "algorithm": "AES",
        "protection_mode": "HSM",
    },
}
MATCHING = {
    "vault_id": "v-1",
    "cckm_vault_id": "cv-1",
    "tenancy": "acme-prod",
    "region": "us-ashburn-1",
    "compartment_name": "payments",
    "key_material_origin": "native",
    "vault_name": "acme-prod-iad-vault-01",
    "lifecycle_state": "ENABLED",
    "key_name": "payments-db-master-key-001",
    "algorithm": "AES",
    "protection_mode": "HSM",
}


def test_every_selector_filter_is_mapped_to_a_key_field() -> None:
    assert set(MATCHING) == SELECTOR_FILTERS
    assert resource_matches(MATCHING, KEY)


@pytest.mark.parametrize("name", sorted(SELECTOR_FILTERS))
def test_each_filter_must_match_exactly(name: str) -> None:
    assert resource_matches({name: MATCHING[name]}, KEY)
    assert not resource_matches({name: MATCHING[name] + "x"}, KEY)
    assert not resource_matches({name: MATCHING[name][:3] + "*"}, KEY)  # no wildcards
    assert not resource_matches({name: MATCHING[name].upper() + "q"}, KEY)


def test_no_filters_match_every_key() -> None:
    assert resource_matches({}, KEY)


@pytest.mark.parametrize(
    "resource",
    [
        {},
        {**KEY, "oci_params": None},
        {**KEY, "oci_params": "AES"},
        {**KEY, "oci_params": {**KEY["oci_params"], "algorithm": 5}},  # type: ignore[dict-item]
    ],
)
def test_a_key_without_the_field_does_not_match(resource: dict[str, Any]) -> None:
    assert not resource_matches({"algorithm": "AES"}, resource)


def test_a_filter_outside_the_selector_names_never_matches() -> None:
    assert not resource_matches({"key_id": "x"}, KEY)
    assert not resource_matches({"all": "true"}, KEY)


def test_timestamps_go_trimmed_of_trailing_zeros_are_ordered_as_time() -> None:
    # Given keys created at .8767 s and .876714 s, as Go writes them (trailing zeros dropped),
    # and a third with an offset: in time order, which is not their text order
    stamps = [
        "2026-01-01T00:00:01.8767Z",
        "2026-01-01T00:00:01.876714Z",
        "2026-01-01T02:00:02+02:00",
    ]
    keys = [{**listed_key(n), "createdAt": stamp} for n, stamp in enumerate(stamps)]
    ctm = FakeCtm()

    def answer(sent: Sent) -> Reply:
        skip, limit = int(sent.query["skip"]), int(sent.query["limit"])
        return Reply(200, {"total": 3, "resources": keys[skip : skip + limit]})

    ctm.always("GET", KEYS_PATH, answer)
    client = fake_client(ctm)
    # When they are listed one per page
    ids: list[str] = []
    page = client.list_page(None, page_size=1)
    ids += [k["id"] for k in page.resources]
    while page.next is not None:
        page = client.list_page(None, cursor=page.next, page_size=1)
        ids += [k["id"] for k in page.resources]
    # Then none is mistaken for one already returned
    assert ids == [uuid(0), uuid(1), uuid(2)]


@pytest.mark.parametrize("created", [None, "", 1700000000, "yesterday", "2026-01-01"])
def test_a_list_item_without_a_creation_time_is_malformed(created: object) -> None:
    item = {**listed_key(1), "createdAt": created}
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Reply(200, {"total": 2, "resources": [listed_key(0), item]}))
    page = fake_client(ctm).list_page(None)
    assert (len(page.resources), page.malformed) == (1, 1)
