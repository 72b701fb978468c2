"""A selector's listing never leaves a key out silently (docs/reference.md 4.3): whatever order
CTM answers in, whether it honours, refuses or ignores ``sort``, whatever page size it caps
at, and while keys come and go between page reads. Keys may come twice; when the listing
cannot be read completely, ``CtmListingError`` says so."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from cckm_refresh.ctm.client import CtmClient
from cckm_refresh.ctm.errors import CtmListingError
from cckm_refresh.ctm.listing import OVERLAP, KeyPage, ListCursor
from cckm_refresh.selectors import SELECTOR_FILTERS, resource_matches
from tests.unit.ctm_fakes import (
    KEYS_PATH,
    FakeCtm,
    Reply,
    Sent,
    error_body,
    fake_client,
    far,
    key_object,
)

OWN_ORDERS = ("creation", "id", "updatedAt", "random")


def uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def listed_key(n: int, rng: random.Random | None = None) -> dict[str, Any]:
    """A list item created in the order of ``n``; with ``rng``, an id in no particular order."""
    key_id = uuid(n) if rng is None else f"{rng.getrandbits(32):08x}-0000-4000-8000-{n:012d}"
    created = f"2026-01-01T00:00:00.{n:06d}Z"
    return {**key_object(key_id), "createdAt": created, "updatedAt": created}


@dataclass
class ListingCtm:
    """A CTM key list over ``keys``: ``sort`` honoured (a comma-separated field list), refused
    (400) for the sorts in ``refuse``, or ignored; its own order ``own`` when it sorts nothing
    (creation, id, updatedAt, or a new random one per call); at most ``cap`` keys per call."""

    keys: list[dict[str, Any]]
    cap: int = 1000
    ignore_sort: bool = False
    refuse: set[str] = field(default_factory=set)
    own: str = "creation"
    seed: int = 0
    with_total: bool = True
    stated_total: int | None = None  # a total to state instead of the listing's own
    calls: int = 0
    largest: int = 0

    def __call__(self, sent: Sent) -> Reply:
        self.calls += 1
        sort = sent.query.get("sort")
        if sort is not None and sort in self.refuse:
            message = f"Invalid value for sort: cannot sort by {sort.split(',')[-1]}."
            return Reply(400, error_body("NCERRInvalidParamValue", message, 3))
        ordered = self.ordered(None if self.ignore_sort else sort)
        skip, limit = int(sent.query["skip"]), int(sent.query["limit"])
        page = ordered[skip : skip + min(limit, self.cap)]
        self.largest = max(self.largest, len(page))
        body: dict[str, Any] = {"skip": skip, "limit": limit, "resources": page}
        if self.with_total:
            body["total"] = len(ordered) if self.stated_total is None else self.stated_total
        return Reply(200, body)

    def ordered(self, sort: str | None) -> list[dict[str, Any]]:
        if sort is not None:
            fields = sort.split(",")
            return sorted(self.keys, key=lambda k: [k[f] for f in fields])
        if self.own == "random":
            return random.Random(f"{self.seed}-{self.calls}").sample(self.keys, len(self.keys))
        if self.own == "creation":
            return list(self.keys)
        return sorted(self.keys, key=lambda k: k[self.own])

    def refresh(self, key_id: str, at: str) -> None:
        """What a refresh does to the list: ``updatedAt`` moves on."""
        for key in self.keys:
            if key["id"] == key_id:
                key["updatedAt"] = at


def client_over(fake: ListingCtm) -> tuple[CtmClient, FakeCtm]:
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, fake)
    return fake_client(ctm), ctm


def read_all(
    fake: ListingCtm, page_size: int, between: Callable[[KeyPage], None] = lambda page: None
) -> tuple[list[str], KeyPage]:
    client, ctm = client_over(fake)
    return read_pages(client, ctm, page_size, between)


def read_pages(
    client: CtmClient,
    ctm: FakeCtm,
    page_size: int,
    between: Callable[[KeyPage], None] = lambda page: None,
) -> tuple[list[str], KeyPage]:
    """Every page, its cursor passed through JSON between pages (as in a queue message)."""
    ids: list[str] = []
    page = client.list_page(None, page_size=page_size, deadline=far(ctm.runtime))
    ids += [k["id"] for k in page.resources]
    while page.next is not None:
        between(page)
        text = json.dumps(page.next.to_json())
        assert len(text) <= 1500
        cursor = ListCursor.from_json(json.loads(text))
        page = client.list_page(None, cursor=cursor, page_size=page_size, deadline=far(ctm.runtime))
        ids += [k["id"] for k in page.resources]
    return ids, page


def ids_of(keys: list[dict[str, Any]]) -> list[str]:
    return [k["id"] for k in keys]


def test_a_quiet_listing_returns_every_key_once_in_order() -> None:
    fake = ListingCtm([listed_key(n) for n in range(57)])
    ids, last = read_all(fake, 10)
    assert ids == ids_of(fake.keys)
    assert (last.sort, last.fallbacks, last.page_cap) == ("createdAt,id", (), None)


def test_a_negative_total_ends_nothing_early() -> None:
    # A proxy or a CTM stating a total no listing can have: the pages say where the end is
    fake = ListingCtm([listed_key(n) for n in range(23)], stated_total=-1)
    ids, _ = read_all(fake, 5)
    assert ids == ids_of(fake.keys)


def test_each_page_re_reads_a_few_keys_before_its_position_and_returns_none_of_them() -> None:
    fake = ListingCtm([listed_key(n) for n in range(25)])
    client, ctm = client_over(fake)
    first = client.list_page(None, page_size=10, deadline=far(ctm.runtime))
    second = client.list_page(None, cursor=first.next, page_size=10, deadline=far(ctm.runtime))
    asked = [(s.query["skip"], s.query["limit"]) for s in ctm.to("GET", KEYS_PATH)]
    assert asked == [("0", "10"), ("0", "20")]  # the overlap: at most OVERLAP keys back
    assert ids_of([*first.resources, *second.resources]) == ids_of(fake.keys[:20])


# --- sort refused, sort ignored, orders that do not hold ---------------------------------------


@pytest.mark.parametrize(
    ("refuse", "expected_sort"),
    [({"createdAt,id"}, "createdAt"), ({"createdAt,id", "createdAt"}, None)],
)
def test_a_refused_sort_falls_back_to_one_ctm_accepts(
    refuse: set[str], expected_sort: str | None
) -> None:
    # Given a CTM answering 400 to sort=createdAt,id (and to sort=createdAt)
    fake = ListingCtm([listed_key(n) for n in range(130)], refuse=refuse)
    # When a selector's listing is read
    ids, last = read_all(fake, 25)
    # Then every key came once, in the order it fell back to, and the listing says so
    assert sorted(ids) == sorted(ids_of(fake.keys))
    assert len(ids) == len(set(ids))
    assert last.sort == expected_sort
    assert last.fallbacks == tuple(
        f"{sort} refused" for sort in ("createdAt,id", "createdAt")[: len(refuse)]
    )


@pytest.mark.parametrize("own", ["id", "updatedAt", "creation"])
def test_a_ctm_ignoring_sort_is_read_in_its_own_order_every_key_once(own: str) -> None:
    # Given 130 keys (ids in no particular order) and a CTM ignoring sort: today's defect
    # requested 6 of them and never saw 124
    rng = random.Random(3)
    fake = ListingCtm([listed_key(n, rng) for n in range(130)], ignore_sort=True, own=own)
    # When the listing is read 25 keys to a page
    ids, last = read_all(fake, 25)
    # Then every key came exactly once
    assert sorted(ids) == sorted(ids_of(fake.keys))
    assert len(ids) == len(set(ids))
    if own == "id":  # not the order asked: detected, and CTM's own order used
        assert last.sort is None
        assert last.fallbacks == ("createdAt,id ignored", "createdAt ignored")


def test_an_order_changing_at_every_call_fails_the_listing_rather_than_leave_keys_out() -> None:
    # Given a CTM ignoring sort and answering in a new order at every call
    fake = ListingCtm([listed_key(n) for n in range(300)], ignore_sort=True, own="random")
    # When its listing, larger than a page, is read
    with pytest.raises(CtmListingError) as caught:
        read_all(fake, 50)
    # Then it fails, permanently, saying why
    assert caught.value.error_code == "LISTING_INCOMPLETE"
    assert not caught.value.transient
    assert "order that changes between calls" in caught.value.message


def test_an_order_changing_at_every_call_is_fine_when_the_listing_fits_one_page() -> None:
    fake = ListingCtm([listed_key(n) for n in range(300)], ignore_sort=True, own="random")
    ids, last = read_all(fake, 500)
    assert sorted(ids) == sorted(ids_of(fake.keys))
    assert last.next is None


def test_keys_refreshed_between_pages_in_an_update_order_are_never_left_out() -> None:
    # Given a CTM refusing every sort, whose own order is updatedAt: a refreshed key moves to
    # the end, behind the keys not listed yet
    fake = ListingCtm([listed_key(n) for n in range(90)], refuse={"createdAt,id", "createdAt"})
    fake.own = "updatedAt"
    refreshed: list[str] = []

    def refresh_a_few_listed(page: KeyPage) -> None:
        for key in [k for k in page.resources if k["id"] not in refreshed][:3]:
            refreshed.append(key["id"])  # once: the run refreshes a key once
            fake.refresh(key["id"], f"2027-01-01T00:00:00.{len(refreshed):06d}Z")

    # When the first keys of each page are refreshed before the next page is read
    ids, _ = read_all(fake, 10, refresh_a_few_listed)
    # Then every key came at least once (a moved key may come twice)
    assert set(ids) == set(ids_of(fake.keys))


# --- page caps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [2, 4, 7, OVERLAP, 25])
def test_a_page_capped_below_what_was_asked_advances_by_what_it_held(cap: int) -> None:
    # Given a CTM answering at most ``cap`` keys whatever limit asks (below the overlap too)
    fake = ListingCtm([listed_key(n) for n in range(40)], cap=cap)
    # When the listing is read 100 keys to a page
    ids, last = read_all(fake, 100)
    # Then every key came once, and the cap was measured
    assert ids == ids_of(fake.keys)
    assert last.page_cap == cap


def test_a_ctm_answering_one_key_per_call_cannot_be_read_completely() -> None:
    fake = ListingCtm([listed_key(n) for n in range(5)], cap=1)
    with pytest.raises(CtmListingError, match="one key per list call"):
        read_all(fake, 10)


def test_a_listing_ends_where_its_keys_end_even_if_total_promises_more() -> None:
    fake = ListingCtm([listed_key(n) for n in range(3)])
    client, ctm = client_over(fake)

    def stale_total(sent: Sent) -> Reply:
        reply = fake(sent)
        return Reply(200, {**reply.body, "total": 50})

    ctm.always("GET", KEYS_PATH, stale_total)
    ids, last = read_pages(client, ctm, 2)
    assert (ids, last.next) == (ids_of(fake.keys), None)


def test_a_listing_ends_when_ctm_answers_the_same_page_whatever_skip_says() -> None:
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Reply(200, {"resources": [listed_key(1), listed_key(2)]}))
    ids, _ = read_pages(fake_client(ctm), ctm, 2)
    assert ids == [uuid(1), uuid(2)]
    assert len(ctm.to("GET", KEYS_PATH)) == 2


# --- keys coming and going between page reads -------------------------------------------------


@dataclass
class Churn:
    """Between page reads: keys removed anywhere, new ones created (last in creation order)."""

    fake: ListingCtm
    rng: random.Random
    removals: tuple[int, ...] = (0, 1, 3, OVERLAP + 5, 60)
    additions: tuple[int, ...] = (0, 2, 30)
    removed: set[str] = field(default_factory=set)
    next_n: int = 10_000

    def __call__(self, page: KeyPage) -> None:
        keys = self.fake.keys
        for _ in range(min(self.rng.choice(self.removals), len(keys))):
            self.removed.add(keys.pop(self.rng.randrange(len(keys)))["id"])
        for _ in range(self.rng.choice(self.additions)):
            keys.append(listed_key(self.next_n, self.rng))
            self.next_n += 1


@pytest.mark.parametrize("seed", range(40))
def test_keys_moving_between_pages_in_a_sorted_order_are_never_returned_twice_nor_skipped(
    seed: int,
) -> None:
    # Given keys removed (sometimes more than the overlap re-read) and added between page
    # reads, and a CTM that honours sort=createdAt,id, or only sort=createdAt, and may cap
    rng = random.Random(seed)
    refuse = rng.choice([set(), {"createdAt,id"}])
    fake = ListingCtm([listed_key(n, rng) for n in range(rng.randint(0, 300))], refuse=refuse)
    fake.cap = rng.choice([3, 7, 50, 1000])
    at_start = set(ids_of(fake.keys))
    churn = Churn(fake, rng)
    # When the listing is read page by page, resuming from JSON cursors
    ids, _ = read_all(fake, rng.choice([5, 25, 100]), churn)
    # Then no key came twice, and every key present throughout came
    assert len(ids) == len(set(ids))
    assert at_start - churn.removed <= set(ids)


@pytest.mark.parametrize("seed", range(60))
def test_a_listing_never_leaves_a_key_out_silently(seed: int) -> None:
    # Given any CTM behaviour: sort honoured, refused or ignored, its own order by creation,
    # id, update or a new one per call, a cap, and keys coming and going between page reads
    rng = random.Random(seed)
    fake = ListingCtm(
        [listed_key(n, rng) for n in range(rng.randint(0, 200))],
        cap=rng.choice([2, 5, 30, 1000]),
        ignore_sort=rng.random() < 0.5,
        refuse=rng.choice([set(), {"createdAt,id"}, {"createdAt,id", "createdAt"}]),
        own=rng.choice(OWN_ORDERS),
        seed=seed,
    )
    at_start = set(ids_of(fake.keys))
    churn = Churn(fake, rng, removals=(0, 0, 1, 2, 30), additions=(0, 1, 5))
    # When the listing is read page by page
    try:
        ids, _ = read_all(fake, rng.choice([5, 25, 100]), churn)
    except CtmListingError:
        return  # said so: the run records it
    # Then every key present throughout came at least once
    assert at_start - churn.removed <= set(ids)


@pytest.mark.parametrize("own", ["creation", "id"])
def test_a_stable_own_order_is_read_completely_while_a_few_keys_come_and_go(own: str) -> None:
    rng = random.Random(11)
    fake = ListingCtm(
        [listed_key(n, rng) for n in range(200)], refuse={"createdAt,id", "createdAt"}
    )
    fake.own, fake.cap = own, 30
    at_start = set(ids_of(fake.keys))
    churn = Churn(fake, rng, removals=(0, 1, 2, 4), additions=(0, 1, 3))

    ids, last = read_all(fake, 25, churn)

    assert at_start - churn.removed <= set(ids)
    assert len(ids) == len(set(ids))
    assert last.sort is None


def test_keys_removed_before_the_position_beyond_the_overlap_do_not_make_a_page_skip() -> None:
    # Given 100 keys read 10 at a time, and 40 keys already read removed before the next page
    fake = ListingCtm([listed_key(n) for n in range(100)])
    client, ctm = client_over(fake)
    first = client.list_page(None, page_size=50, deadline=far(ctm.runtime))
    del fake.keys[5:45]
    # When the next page is read, Then it starts right after the last key returned
    second = client.list_page(None, cursor=first.next, page_size=10, deadline=far(ctm.runtime))
    assert ids_of(list(second.resources)) == [uuid(n) for n in range(50, 60)]


# --- malformed items, CTM's timestamps, the cursor ---------------------------------------------


def test_malformed_items_are_skipped_and_counted_once() -> None:
    good = [listed_key(n) for n in range(4)]
    no_id = {k: v for k, v in listed_key(10).items() if k != "id"}
    bad_params = {**listed_key(11), "oci_params": "ENABLED"}
    bad_tenancy = {**listed_key(12), "tenancy": 7}
    items = [good[0], no_id, good[1], bad_params, good[2], bad_tenancy, "key", good[3]]
    ctm = FakeCtm()

    def answer(sent: Sent) -> Reply:
        skip, limit = int(sent.query["skip"]), int(sent.query["limit"])
        return Reply(200, {"total": len(items), "resources": items[skip : skip + limit]})

    ctm.always("GET", KEYS_PATH, answer)
    client = fake_client(ctm)
    first = client.list_page(None, page_size=4, deadline=far(ctm.runtime))
    assert first.next is not None
    second = client.list_page(None, cursor=first.next, page_size=4, deadline=far(ctm.runtime))

    assert ids_of([*first.resources, *second.resources]) == ids_of(good)
    assert (first.malformed, second.malformed) == (2, 2)
    assert second.next is None


@pytest.mark.parametrize("created", [None, "", 1700000000, "yesterday", "2026-01-01"])
def test_a_list_item_without_a_creation_time_is_malformed(created: object) -> None:
    item = {**listed_key(1), "createdAt": created}
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Reply(200, {"total": 2, "resources": [listed_key(0), item]}))
    page = fake_client(ctm).list_page(None, deadline=far(ctm.runtime))
    assert (len(page.resources), page.malformed) == (1, 1)


def test_timestamps_go_trimmed_of_trailing_zeros_are_ordered_as_time() -> None:
    # Given keys created at .8767 s and .876714 s, as Go writes them (trailing zeros dropped),
    # and a third with an offset: in time order, which is not their text order
    stamps = [
        "2026-01-01T00:00:01.8767Z",
        "2026-01-01T00:00:01.876714Z",
        "2026-01-01T02:00:02+02:00",
    ]
    fake = ListingCtm([{**listed_key(n), "createdAt": s} for n, s in enumerate(stamps)])
    fake.ignore_sort = True  # CTM answers in time order; the text order would look wrong
    ids, last = read_all(fake, 1)
    assert (ids, last.fallbacks) == ([uuid(0), uuid(1), uuid(2)], ())


def test_the_cursor_round_trips_through_json_and_reads_an_earlier_version() -> None:
    cursor = ListCursor(120, "createdAt", (uuid(3),), ("2026-01-01T00:00:00.000000001Z", uuid(3)))
    assert ListCursor.from_json(json.loads(json.dumps(cursor.to_json()))) == cursor
    earlier = ListCursor.from_json(
        {"skip": 7, "after": ["2026-01-01T00:00:00.000000000Z", uuid(1)]}
    )
    assert (earlier.skip, earlier.sort, earlier.anchors) == (7, "createdAt,id", (uuid(1),))


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        "cursor",
        {"skip": -1},
        {"skip": "1"},
        {"skip": True},
        {"skip": 1, "after": ["only one"]},
        {"skip": 1, "after": [1, 2]},
        {"skip": 1, "anchors": ["x" * 300]},
        {"skip": 1, "sort": "name"},
        {"skip": 1, "extra": 1},
        {"skip": 1, "anchors": ["x"] * (OVERLAP + 1)},
        {"skip": 1, "fallbacks": ["createdAt ignored"] * 4},
        {"skip": 1, "first": 5},
        {"skip": 1, "page_cap": 0},
        {"skip": 1, "page_cap": "5"},
        {"skip": 1, "rewound": "yes"},
    ],
)
def test_a_bad_cursor_is_a_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="cursor"):
        ListCursor.from_json(value)


@pytest.mark.parametrize("page_cap", ["5", [5], 0, True])
def test_a_cap_not_a_positive_count_is_a_value_error_in_a_cursor_built_directly(
    page_cap: Any,
) -> None:
    with pytest.raises(ValueError, match="cursor"):  # not a TypeError from comparing it to 0
        ListCursor(page_cap=page_cap)


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
