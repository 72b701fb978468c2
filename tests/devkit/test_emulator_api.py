"""The emulator's API driven in process (``CtmApi.handle``), on a hand-moved clock: no sockets,
no sleeps, as a simulation drives it."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from devkit.ctm_emulator import Faults, ListChurn, generate_keys
from devkit.ctm_emulator.api import ApiReply, ApiRequest, CtmApi
from devkit.ctm_emulator.inventory import KeyInventory
from devkit.ctm_emulator.request_log import RequestLog
from devkit.ctm_emulator.tokens import TokenAuthority
from tests.fixtures.ctm import ManualClock

USER, PASSWORD = "svc-key-refresh", "password"
KEYS = "/api/v1/cckm/oci/keys"
TOKENS = "/api/v1/auth/tokens"


class InProcessCtm:
    """A ``CtmApi`` over 30 keys (seed 1) whose time is a ``ManualClock``, latency included."""

    def __init__(self, seed: int = 0, start: float = 1_800_000_000.0) -> None:
        self.clock = ManualClock(start=start)
        self.faults = Faults(seed=seed)
        self.inventory = KeyInventory(self.clock, seed=seed)
        self.inventory.add(generate_keys(30, seed=1))
        self.tokens = TokenAuthority({USER: PASSWORD}, self.clock)
        self.log = RequestLog()
        self.api = CtmApi(
            inventory=self.inventory,
            tokens=self.tokens,
            faults=self.faults,
            log=self.log,
            clock=self.clock,
            sleep=self.clock.advance,
        )
        self.jwt = self.tokens.mint_jwt(USER, 300)

    @property
    def keys(self) -> list[dict[str, Any]]:
        return self.inventory.snapshot()

    def call(self, method: str, path: str, **query: object) -> ApiReply:
        return self.api.handle(
            ApiRequest(
                method,
                path,
                {name: str(value) for name, value in query.items()},
                authorization=f"Bearer {self.jwt}",
            )
        )

    def login(self, **grant: object) -> ApiReply:
        body = {"grant_type": "password", "username": USER, "password": PASSWORD, **grant}
        return self.api.handle(ApiRequest("POST", TOKENS, body=json.dumps(body).encode()))

    def listed(self, **query: object) -> list[str]:
        """The ids a 200 list answer holds, in its order."""
        reply = self.call("GET", KEYS, **query)
        assert reply.status == 200, reply.body
        assert reply.body is not None
        return [key["id"] for key in reply.body["resources"]]

    def refresh(self, key_id: str) -> ApiReply:
        return self.call("POST", f"{KEYS}/{key_id}/refresh")


@pytest.fixture
def ctm() -> InProcessCtm:
    return InProcessCtm()


def test_the_request_log_is_stamped_by_the_injected_clock(ctm: InProcessCtm) -> None:
    # Given a call that takes 0.25 s of injected latency, 10 s after the clock started
    ctm.faults.latency = 0.25
    ctm.clock.advance(10)
    # When two calls are made
    ctm.call("GET", KEYS)
    ctm.refresh(ctm.keys[0]["id"])
    # Then each arrival is stamped on the same clock, latency included
    assert [e.monotonic for e in ctm.log.entries()] == [1_800_000_010.0, 1_800_000_010.25]


# --- list order: sort ignored, an unstable order, sort fields refused ---------------------------


def test_an_ignored_sort_answers_in_ctms_own_order_the_same_every_time(ctm: InProcessCtm) -> None:
    # Given a CTM that accepts sort and ignores it, its own order being by id
    ctm.faults.ignore_sort = True
    ctm.faults.default_sort = "id"
    by_id = sorted(key["id"] for key in ctm.keys)
    # When the list is asked newest first, twice, and by a field CTM does not know
    asked = [ctm.listed(limit=-1, sort="-createdAt") for _ in range(2)]
    unknown = ctm.listed(limit=-1, sort="colour")
    # Then every answer is in CTM's order, not the one asked
    assert asked == [by_id, by_id]
    assert unknown == by_id


def test_an_unstable_order_answers_every_list_call_in_another_order(ctm: InProcessCtm) -> None:
    ctm.faults.unstable_order = True

    orders = [ctm.listed(limit=-1) for _ in range(3)]

    assert all(sorted(order) == sorted(k["id"] for k in ctm.keys) for order in orders)
    assert len({tuple(order) for order in orders}) == 3


def test_an_unstable_order_moves_only_the_ties_of_the_sort_asked(ctm: InProcessCtm) -> None:
    ctm.faults.unstable_order = True
    tenancy_of = {key["id"]: key["tenancy"] for key in ctm.keys}

    orders = [ctm.listed(limit=-1, sort="tenancy") for _ in range(3)]

    tenancies = [[tenancy_of[key_id] for key_id in order] for order in orders]
    assert all(t == sorted(t) for t in tenancies)
    assert len({tuple(order) for order in orders}) == 3


def test_list_churn_removes_the_first_keys_of_the_unstable_order_just_answered(
    ctm: InProcessCtm,
) -> None:
    ctm.faults.unstable_order = True
    ctm.faults.list_churn = ListChurn(remove=3)

    answered = ctm.listed(limit=5)

    left = {key["id"] for key in ctm.keys}
    assert (len(left), set(answered[:3]) & left, set(answered[3:]) <= left) == (27, set(), True)


def test_an_unstable_order_is_the_same_for_the_same_seed() -> None:
    runs = []
    for seed in (7, 7, 8):
        ctm = InProcessCtm(seed=seed)
        ctm.faults.unstable_order = True
        runs.append([ctm.listed(limit=5, skip=skip) for skip in (0, 5, 10)])

    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_a_sort_by_an_accepted_field_is_honoured(ctm: InProcessCtm) -> None:
    ctm.faults.accepted_sort_fields = {"createdAt"}

    newest_first = ctm.listed(limit=-1, sort="-createdAt")

    assert newest_first == [key["id"] for key in reversed(ctm.keys)]


@pytest.mark.parametrize(
    ("accepted", "sort", "refused"),
    [
        ({"createdAt", "updatedAt"}, "id", "id"),
        ({"createdAt", "updatedAt"}, "-createdAt,id", "id"),
        (set(), "createdAt", "createdAt"),
    ],
    ids=["field-refused", "second-field-refused", "any-sort-refused"],
)
def test_a_sort_by_a_field_not_accepted_is_a_400_naming_sort(
    ctm: InProcessCtm, accepted: set[str], sort: str, refused: str
) -> None:
    # Given a CTM that sorts only by the accepted fields
    ctm.faults.accepted_sort_fields = accepted
    # When a list asks for a sort naming another field
    reply = ctm.call("GET", KEYS, sort=sort)
    # Then it is refused with CTM's 400, naming the parameter and the field; no sort is fine
    assert reply.status == 400
    assert reply.body is not None
    assert (reply.body["code"], reply.body["codeDesc"]) == (3, "NCERRInvalidParamValue")
    assert reply.body["message"] == f"Invalid value for sort: cannot sort by {refused}."
    assert ctm.call("GET", KEYS).status == 200


# --- page cap ------------------------------------------------------------------------------------


def test_a_page_cap_holds_pages_to_n_keys_whatever_limit_asks(ctm: InProcessCtm) -> None:
    # Given a CTM that caps pages at 4 keys
    ctm.faults.max_page_size = 4
    every_key = [key["id"] for key in ctm.keys]
    # When a client asks for every key, then walks pages of 10 by skip
    reply = ctm.call("GET", KEYS, limit=-1, skip=3)
    walked: list[str] = []
    while len(walked) < len(every_key):
        page = ctm.listed(limit=10, skip=len(walked))
        assert page, walked
        walked += page
    # Then a page holds 4 keys from skip, the total is the true total, the limit is as asked
    assert reply.body is not None
    assert (reply.body["skip"], reply.body["limit"], reply.body["total"]) == (3, -1, 30)
    assert [key["id"] for key in reply.body["resources"]] == every_key[3:7]
    assert walked == every_key


# --- a tenancy whose OCI policy is broken -------------------------------------------------------

OCI_NOT_AUTHORIZED = (
    'OCI error: {"code":"NotAuthorizedOrNotFound","message":"Authorization failed or '
    'requested resource not found."}'
)


@pytest.mark.parametrize("status", [404, 400, 500])
def test_every_refresh_in_a_not_authorized_tenancy_answers_oci_not_authorized_or_not_found(
    ctm: InProcessCtm, status: int
) -> None:
    # Given a tenancy whose OCI policy no longer lets CCKM read its keys
    broken = ctm.keys[0]["tenancy"]
    ctm.faults.not_authorized_tenancies[broken] = status
    theirs = [key["id"] for key in ctm.keys if key["tenancy"] == broken]
    others = [key["id"] for key in ctm.keys if key["tenancy"] != broken]
    # When every key is refreshed, twice
    replies = {key_id: [ctm.refresh(key_id) for _ in range(2)] for key_id in theirs + others}
    # Then each of its keys answers OCI's words under that status, every time
    refused = [(r.status, (r.body or {}).get("message")) for k in theirs for r in replies[k]]
    assert refused == [(status, OCI_NOT_AUTHORIZED)] * 2 * len(theirs)
    # And the other tenancies' keys refresh; its keys are still listed and read from CCKM
    assert {reply.status for key_id in others for reply in replies[key_id]} == {200}
    assert ctm.listed(limit=-1, tenancy=broken) == theirs
    assert ctm.call("GET", f"{KEYS}/{theirs[0]}").status == 200


# --- short JWTs, stated in whole seconds; refresh token lifetimes -------------------------------


def claims_of(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@pytest.mark.parametrize(("lifetime", "duration"), [(1, 1), (2, 2), (2.5, 2)])
def test_a_short_jwt_is_stated_in_whole_seconds_and_can_end_before_its_duration_counted(
    lifetime: float, duration: int
) -> None:
    # Given a CTM issuing short JWTs, logged in to 0.75 s into a second
    ctm = InProcessCtm(start=1_800_000_000.75)
    ctm.faults.token_lifetime = lifetime
    answer = ctm.login().body
    assert answer is not None
    ctm.jwt = answer["jwt"]
    # Then iat is that second, exp is duration seconds later, and duration says so
    claims = claims_of(ctm.jwt)
    assert (answer["duration"], claims["iat"]) == (duration, 1_800_000_000)
    assert claims["exp"] == claims["iat"] + duration
    # And the JWT works up to exp, but not 0.25 s before the duration counted from the login
    ctm.clock.advance(duration - 0.75)
    assert ctm.call("GET", KEYS).status == 200
    ctm.clock.advance(0.5)
    refused = ctm.call("GET", KEYS)
    assert (refused.status, (refused.body or {}).get("message")) == (
        401,
        "Bearer token malformed: Token is expired by 1s",
    )


@pytest.mark.parametrize(
    ("limits", "expires_in"),
    [
        ({}, 1799),
        ({"refresh_token_lifetime": 60}, 3600),
        ({"refresh_token_lifetime": 1}, 60),
        ({"refresh_token_lifetime": 60, "refresh_token_revoke_unused_in": 30}, 1800),
    ],
    ids=["no-limit", "60-minutes", "1-minute", "nearer-limit"],
)
def test_a_login_states_its_refresh_tokens_expires_in_in_seconds_from_minutes_asked(
    ctm: InProcessCtm, limits: dict[str, int], expires_in: int
) -> None:
    answer = ctm.login(**limits).body

    assert answer is not None
    assert answer["refresh_token_expires_in"] == expires_in
