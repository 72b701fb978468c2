"""The CTM emulator, specified from the outside: real HTTPS on loopback, verified with its CA.

Time is the emulator's injected clock (``ctm_clock``), so expiry and throttle windows are
exercised without sleeping.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from devkit.ctm_emulator import CtmEmulator, KeyFailure, ListChurn, generate_keys
from tests.fixtures.ctm import ManualClock

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_ca_env")]

REPO = Path(__file__).resolve().parents[2]
ISO_MICRO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
KEYS = "/api/v1/cckm/oci/keys"
TOKENS = "/api/v1/auth/tokens"


class Ctm:
    """A thin HTTPS caller for one emulator: verified against its CA, bearer JWT attached."""

    def __init__(self, emulator: CtmEmulator) -> None:
        self.emulator = emulator
        self.session = requests.Session()
        self.jwt: str | None = None

    def login(self) -> Ctm:
        answer = self.post(
            TOKENS,
            json={
                "grant_type": "password",
                "username": self.emulator.username,
                "password": self.emulator.password,
            },
        )
        assert answer.status_code == 200
        self.jwt = answer.json()["jwt"]
        return self

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.jwt}"} if self.jwt else {}

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(
            self.emulator.base_url + path,
            params=params,
            headers=self.headers(),
            verify=self.emulator.ca_file,
            timeout=5,
        )

    def post(self, path: str, json: Any = None, data: bytes | None = None) -> requests.Response:
        return self.session.post(
            self.emulator.base_url + path,
            json=json,
            data=data,
            headers=self.headers(),
            verify=self.emulator.ca_file,
            timeout=5,
        )

    def refresh(self, key_id: str) -> requests.Response:
        return self.post(f"{KEYS}/{key_id}/refresh")


@pytest.fixture
def ctm(ctm_emulator: CtmEmulator) -> Ctm:
    return Ctm(ctm_emulator).login()


def claims_of(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def assert_ctm_error(answer: requests.Response, status: int, code_desc: str) -> dict[str, Any]:
    assert answer.status_code == status
    body = dict(answer.json())
    assert set(body) == {"code", "codeDesc", "message", "requestID"}
    assert isinstance(body["code"], int)
    assert body["codeDesc"] == code_desc
    uuid.UUID(body["requestID"])
    return body


def keys_of(ctm_emulator: CtmEmulator, **where: str) -> list[dict[str, Any]]:
    return [k for k in ctm_emulator.keys if all(k[f] == v for f, v in where.items())]


# --- authentication -------------------------------------------------------------------------


def test_a_password_grant_returns_a_bearer_jwt_with_ctms_claims(ctm_emulator: CtmEmulator) -> None:
    answer = Ctm(ctm_emulator).post(
        TOKENS,
        json={"grant_type": "password", "username": "svc-key-refresh", "password": "password"},
    )

    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {
        "jwt",
        "duration",
        "token_type",
        "client_id",
        "refresh_token",
        "refresh_token_expires_in",
        "refresh_token_id",
    }
    assert (body["duration"], body["token_type"]) == (300, "Bearer")
    claims = claims_of(body["jwt"])
    assert claims["iss"] == "kylo"
    assert claims["aud"] == body["client_id"]
    assert claims["preferred_username"] == "svc-key-refresh"
    assert claims["sub"].startswith("local|")
    assert claims["exp"] - claims["iat"] == 300
    uuid.UUID(claims["jwtid"])


def test_name_domain_and_connection_are_accepted_in_a_password_grant(
    ctm_emulator: CtmEmulator,
) -> None:
    answer = Ctm(ctm_emulator).post(
        "/api/v1/auth/tokens/",
        json={
            "name": ctm_emulator.username,
            "password": ctm_emulator.password,
            "domain": "root",
            "auth_domain": "root",
            "connection": "local_account",
        },
    )
    assert answer.status_code == 200


def test_a_refresh_token_grant_returns_a_new_jwt_and_the_same_refresh_token(
    ctm_emulator: CtmEmulator,
) -> None:
    refresh_token = ctm_emulator.issue_refresh_token()

    answer = Ctm(ctm_emulator).post(
        TOKENS, json={"grant_type": "refresh_token", "refresh_token": refresh_token}
    )

    assert answer.status_code == 200
    assert answer.json()["refresh_token"] == refresh_token
    assert claims_of(answer.json()["jwt"])["preferred_username"] == ctm_emulator.username
    assert ctm_emulator.tokens_issued == 1


def test_a_revoked_refresh_token_is_refused(ctm_emulator: CtmEmulator) -> None:
    refresh_token = ctm_emulator.issue_refresh_token()
    ctm_emulator.revoke_refresh_tokens()

    answer = Ctm(ctm_emulator).post(
        TOKENS, json={"grant_type": "refresh_token", "refresh_token": refresh_token}
    )

    assert_ctm_error(answer, 401, "NCERRUnauthorizedAccess")


def test_a_wrong_password_is_401_with_ctms_body(ctm_emulator: CtmEmulator) -> None:
    answer = Ctm(ctm_emulator).post(
        TOKENS,
        json={"grant_type": "password", "username": ctm_emulator.username, "password": "nope"},
    )

    body = assert_ctm_error(answer, 401, "NCERRUnauthorizedAccess")
    assert (body["code"], body["message"]) == (5, "Wrong username or password.")
    assert ctm_emulator.tokens_issued == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        json.dumps({"grant_type": "password", "username": "svc-key-refresh"}).encode(),
        json.dumps({"grant_type": "client_credential", "client_id": "x"}).encode(),
        json.dumps({"username": ["svc-key-refresh"], "password": "password"}).encode(),
    ],
    ids=["not-json", "not-an-object", "no-password", "unknown-grant", "username-not-a-string"],
)
def test_a_malformed_token_request_is_400(ctm_emulator: CtmEmulator, body: bytes) -> None:
    answer = Ctm(ctm_emulator).post(TOKENS, data=body)
    assert_ctm_error(answer, 400, "NCERRInvalidParamValue")


def test_a_key_call_without_a_bearer_token_is_401(ctm_emulator: CtmEmulator) -> None:
    answer = Ctm(ctm_emulator).get(KEYS)
    assert_ctm_error(answer, 401, "NCERRUnauthorizedAccess")


def test_an_expired_jwt_is_401_saying_by_how_much(
    ctm: Ctm, ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    # Given a JWT issued now (300 s), used 350 s later
    ctm.login()
    ctm_clock.advance(350)

    answer = ctm.refresh(ctm_emulator.keys[0]["id"])

    body = assert_ctm_error(answer, 401, "NCERRUnauthorizedAccess")
    assert body["message"] == "Bearer token malformed: Token is expired by 50s"
    assert ctm_emulator.refresh_count() == 0


def test_a_jwt_is_accepted_up_to_its_exp(
    ctm: Ctm, ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    ctm.login()
    ctm_clock.advance(300)
    assert ctm.refresh(ctm_emulator.keys[0]["id"]).status_code == 200


def test_a_jwt_with_a_forged_signature_is_401(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    assert ctm.jwt is not None
    header, payload, _ = ctm.jwt.split(".")
    ctm.jwt = f"{header}.{payload}.{base64.urlsafe_b64encode(b'x' * 32).decode().rstrip('=')}"

    answer = ctm.get(KEYS)

    body = assert_ctm_error(answer, 401, "NCERRUnauthorizedAccess")
    assert "signature is invalid" in body["message"]


def test_the_token_lifetime_fault_shortens_newly_issued_jwts(
    ctm: Ctm, ctm_emulator: CtmEmulator
) -> None:
    ctm_emulator.faults.token_lifetime = 30
    ctm.login()
    assert ctm.jwt is not None
    claims = claims_of(ctm.jwt)
    assert claims["exp"] - claims["iat"] == 30


def test_a_minted_jwt_works_and_one_minted_expired_does_not(ctm_emulator: CtmEmulator) -> None:
    ctm = Ctm(ctm_emulator)
    ctm.jwt = ctm_emulator.mint_jwt(lifetime=300)
    assert ctm.get(KEYS).status_code == 200

    ctm.jwt = ctm_emulator.mint_jwt(lifetime=-10)
    body = assert_ctm_error(ctm.get(KEYS), 401, "NCERRUnauthorizedAccess")
    assert "Token is expired" in body["message"]


def test_a_jwt_can_be_made_to_expire_after_some_requests(
    ctm: Ctm, ctm_emulator: CtmEmulator
) -> None:
    ctm_emulator.faults.expire_tokens_after_requests = 2
    statuses = [ctm.get(KEYS).status_code for _ in range(3)]
    assert statuses == [200, 200, 401]
    assert ctm.login().get(KEYS).status_code == 200


# --- the key list ---------------------------------------------------------------------------


def test_the_list_answers_ten_keys_and_the_total_by_default(ctm: Ctm) -> None:
    body = ctm.get(KEYS).json()
    assert (body["skip"], body["limit"], body["total"]) == (0, 10, 30)
    assert len(body["resources"]) == 10


def test_pages_walk_every_key_once_in_a_stable_order(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    seen: list[str] = []
    skip = 0
    while True:
        body = ctm.get(KEYS, skip=skip, limit=7).json()
        seen += [key["id"] for key in body["resources"]]
        skip += len(body["resources"])
        if skip >= body["total"]:
            break
    assert seen == [key["id"] for key in ctm_emulator.keys]


def test_limit_minus_one_answers_every_key(ctm: Ctm) -> None:
    body = ctm.get(KEYS, limit=-1).json()
    assert (body["total"], len(body["resources"])) == (30, 30)


def test_a_page_can_be_shorter_than_the_limit_asked(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    ctm_emulator.faults.max_page_size = 4
    body = ctm.get(KEYS, skip=8, limit=10).json()
    assert (body["total"], len(body["resources"])) == (30, 4)
    assert [k["id"] for k in body["resources"]] == [k["id"] for k in ctm_emulator.keys[8:12]]


def value_of(key: dict[str, Any], name: str) -> Any:
    params = key["oci_params"]
    if name == "key_name":
        return params["display_name"]
    return key[name] if name in key else params[name]


@pytest.mark.parametrize(
    "name",
    [
        "id",
        "key_id",
        "vault_id",
        "cckm_vault_id",
        "vault_name",
        "tenancy",
        "region",
        "compartment_name",
        "lifecycle_state",
        "key_name",
        "algorithm",
        "protection_mode",
        "key_material_origin",
    ],
)
def test_each_filter_selects_exactly_the_matching_keys(
    ctm: Ctm, ctm_emulator: CtmEmulator, name: str
) -> None:
    # Given the value of the field on a key chosen so that the filter is not trivial
    keys = ctm_emulator.keys
    value = value_of(keys[11], name)
    expected = [k["id"] for k in keys if value_of(k, name) == value]
    assert 0 < len(expected) < len(keys)

    body = ctm.get(KEYS, limit=-1, **{name: value}).json()

    assert body["total"] == len(expected)
    assert [k["id"] for k in body["resources"]] == expected


def test_filters_combine(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    tenancy = ctm_emulator.keys[0]["tenancy"]
    expected = [
        k["id"]
        for k in keys_of(ctm_emulator, tenancy=tenancy)
        if k["oci_params"]["lifecycle_state"] == "ENABLED"
    ]
    body = ctm.get(KEYS, limit=-1, tenancy=tenancy, lifecycle_state="ENABLED").json()
    assert [k["id"] for k in body["resources"]] == expected


@pytest.mark.parametrize("params", [{"limit": "ten"}, {"skip": "-1"}, {"limit": "-2"}])
def test_a_bad_skip_or_limit_is_400(ctm: Ctm, params: dict[str, str]) -> None:
    assert_ctm_error(ctm.get(KEYS, **params), 400, "NCERRInvalidParamValue")


# --- get and refresh ------------------------------------------------------------------------


def test_get_answers_a_key_object_shaped_like_ctms(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    key_id = ctm_emulator.keys[0]["id"]

    key = ctm.get(f"{KEYS}/{key_id}").json()

    assert key == ctm_emulator.key(key_id)
    assert {
        "id",
        "uri",
        "account",
        "createdAt",
        "updatedAt",
        "cloud_name",
        "vault_id",
        "cckm_vault_id",
        "tenancy",
        "region",
        "compartment_name",
        "key_material_origin",
        "refreshed_at",
        "oci_params",
    } <= set(key)
    assert key["cloud_name"] == "oci"
    params = key["oci_params"]
    assert re.fullmatch(r"ocid1\.key\.oc1\.[a-z]{3}\.[a-z0-9._-]+", params["key_id"])
    assert params["current_key_version"].startswith("ocid1.keyversion.oc1.")
    assert params["algorithm"] in {"AES", "RSA", "ECDSA"}
    assert params["protection_mode"] in {"HSM", "SOFTWARE"}
    assert ISO_MICRO_Z.fullmatch(key["refreshed_at"])


# The same ids in every pytest-xdist worker: each collects the suite, and they must agree.
@pytest.mark.parametrize(
    "key_id", ["00000000-0000-4000-8000-000000000404", "not-a-uuid", "ocid1.key.oc1.iad.abc"]
)
def test_an_unknown_key_is_404_with_ctms_body(ctm: Ctm, key_id: str) -> None:
    for answer in (ctm.get(f"{KEYS}/{key_id}"), ctm.refresh(key_id)):
        body = assert_ctm_error(answer, 404, "NCERRResourceNotFound: Resource not found")
        assert body["code"] == 16


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/cckm/aws/keys"),
        ("POST", f"{KEYS}/90671f17-28ff-4f93-86dc-ff08983469e7/enable"),
        ("GET", f"{KEYS}/90671f17-28ff-4f93-86dc-ff08983469e7/refresh"),
        ("POST", f"{KEYS}/..%2F..%2Fauth%2Ftokens/refresh"),
        ("GET", "/"),
    ],
)
def test_anything_else_is_404_with_ctms_body(ctm: Ctm, method: str, path: str) -> None:
    answer = ctm.session.request(
        method, ctm.emulator.base_url + path, headers=ctm.headers(), verify=ctm.emulator.ca_file
    )
    assert_ctm_error(answer, 404, "NCERRResourceNotFound: Resource not found")


def test_refresh_bumps_refreshed_at_and_updated_at(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    before = ctm_emulator.keys[0]

    first = ctm.refresh(before["id"]).json()
    second = ctm.refresh(before["id"]).json()

    assert ISO_MICRO_Z.fullmatch(first["refreshed_at"])
    assert before["refreshed_at"] < first["refreshed_at"] < second["refreshed_at"]
    assert second["updatedAt"] == second["refreshed_at"]
    assert ctm_emulator.refresh_count(before["id"]) == 2


def test_a_rotation_in_oci_shows_only_after_a_refresh(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    key = ctm_emulator.keys[0]
    old = key["oci_params"]["current_key_version"]

    new = ctm_emulator.rotate(key["oci_params"]["key_id"])

    assert new != old
    assert re.fullmatch(r"ocid1\.keyversion\.oc1\.[a-z]{3}\.[a-z0-9._-]+", new)
    cached = ctm.get(f"{KEYS}/{key['id']}").json()
    listed = ctm.get(KEYS, id=key["id"]).json()["resources"][0]
    assert cached["oci_params"]["current_key_version"] == old
    assert listed["oci_params"]["current_key_version"] == old
    refreshed = ctm.refresh(key["id"]).json()
    assert refreshed["oci_params"]["current_key_version"] == new
    assert ctm.get(f"{KEYS}/{key['id']}").json()["oci_params"]["current_key_version"] == new


def test_a_state_change_in_oci_shows_only_after_a_refresh(
    ctm: Ctm, ctm_emulator: CtmEmulator
) -> None:
    key_id = ctm_emulator.keys[0]["id"]
    ctm_emulator.set_oci_state(key_id, "PENDING_DELETION")

    assert ctm.get(f"{KEYS}/{key_id}").json()["oci_params"]["lifecycle_state"] == "ENABLED"
    assert ctm.refresh(key_id).json()["oci_params"]["lifecycle_state"] == "PENDING_DELETION"


def test_a_key_deleted_in_oci_is_404_on_refresh_and_then_gone(
    ctm: Ctm, ctm_emulator: CtmEmulator
) -> None:
    key_id = ctm_emulator.keys[0]["id"]
    ctm_emulator.delete_in_oci(key_id)
    assert ctm.get(f"{KEYS}/{key_id}").status_code == 200  # CCKM's cached copy

    assert ctm.refresh(key_id).status_code == 404

    assert ctm.get(f"{KEYS}/{key_id}").status_code == 404
    assert ctm.get(KEYS).json()["total"] == 29


def test_a_key_removed_from_cckm_is_404_everywhere(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    key_id = ctm_emulator.keys[0]["id"]
    ctm_emulator.remove(key_id)

    assert ctm.refresh(key_id).status_code == 404
    assert ctm.get(f"{KEYS}/{key_id}").status_code == 404
    assert ctm.get(KEYS, id=key_id).json()["total"] == 0


# --- faults ---------------------------------------------------------------------------------

THROTTLE_MESSAGE = 'OCI error: {"code":"TooManyRequests","message":"User-rate limit exceeded."}'


def test_a_tenancy_past_ten_reads_a_second_is_throttled_with_too_many_requests(
    ctm: Ctm, ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    # Given OCI's 10 reads/s per tenancy, a refresh costing 2, and time standing still
    ctm_emulator.faults.tenancy_read_limit = 10
    tenancy = ctm_emulator.keys[0]["tenancy"]
    mine = [k["id"] for k in keys_of(ctm_emulator, tenancy=tenancy)][:6]
    other = next(k["id"] for k in ctm_emulator.keys if k["tenancy"] != tenancy)

    statuses = [ctm.refresh(key_id).status_code for key_id in mine[:5]]
    sixth = ctm.refresh(mine[5])

    # Then five refreshes fit in the second, the sixth is OCI's TooManyRequests
    assert statuses == [200] * 5
    body = assert_ctm_error(sixth, 429, "NCERRTooManyRequests")
    assert body["message"] == THROTTLE_MESSAGE
    assert ctm_emulator.throttled_count == 1
    # And another tenancy is not affected, and the next second has room again
    assert ctm.refresh(other).status_code == 200
    ctm_clock.advance(1.0)
    assert ctm.refresh(mine[5]).status_code == 200


def test_a_refresh_costs_two_reads_and_a_get_or_a_list_none(
    ctm: Ctm, ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    # Given 3 OCI reads a second: a refresh spends 2 of them
    ctm_emulator.faults.tenancy_read_limit = 3
    key_id = ctm_emulator.keys[0]["id"]
    first = ctm.refresh(key_id).status_code

    # When the key is read from CCKM's cache and listed, then refreshed again in the same second
    reads = [ctm.get(f"{KEYS}/{key_id}").status_code for _ in range(5)]
    listed = ctm.get(KEYS, limit=-1).status_code
    again = ctm.refresh(key_id).status_code

    # Then the cached reads and the list cost OCI nothing; the second refresh is over the limit
    assert (first, reads, listed, again) == (200, [200] * 5, 200, 429)


def test_a_throttle_can_come_wrapped_in_a_500(
    ctm: Ctm, ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    ctm_emulator.faults.tenancy_read_limit = 1
    ctm_emulator.faults.throttle_status = 500

    answer = ctm.refresh(ctm_emulator.keys[0]["id"])

    assert answer.status_code == 500
    assert "TooManyRequests" in answer.text
    assert ctm_emulator.throttled_count == 1


def test_fail_next_answers_a_burst_of_refreshes_then_recovers(
    ctm: Ctm, ctm_emulator: CtmEmulator
) -> None:
    ids = [k["id"] for k in ctm_emulator.keys[:4]]
    ctm_emulator.faults.fail_next(2, 503)
    ctm_emulator.faults.fail_next(1, 429)

    statuses = [ctm.refresh(key_id).status_code for key_id in ids]

    assert statuses == [503, 503, 429, 200]
    assert ctm_emulator.refresh_count() == 4
    assert ctm_emulator.throttled_count == 1


def test_fail_keys_fails_one_key_only_and_can_count_down(
    ctm: Ctm, ctm_emulator: CtmEmulator
) -> None:
    flaky, denied, healthy = (k["id"] for k in ctm_emulator.keys[:3])
    ctm_emulator.faults.fail_keys[flaky] = KeyFailure(503, times=2)
    ctm_emulator.faults.fail_keys[ctm_emulator.key(denied)["oci_params"]["key_id"]] = 403

    flaky_statuses = [ctm.refresh(flaky).status_code for _ in range(3)]
    denied_statuses = [ctm.refresh(denied).status_code for _ in range(2)]

    assert flaky_statuses == [503, 503, 200]
    assert denied_statuses == [403, 403]
    assert ctm.refresh(healthy).status_code == 200
    assert_ctm_error(ctm.refresh(denied), 403, "NCERRPermissionDenied")


def refresh_statuses(emulator: CtmEmulator, rounds: int) -> list[int]:
    ctm = Ctm(emulator).login()
    ids = [k["id"] for k in emulator.keys[:10]]
    return [ctm.refresh(key_id).status_code for _ in range(rounds) for key_id in ids]


def test_random_errors_follow_the_seed(make_ctm_emulator: Callable[..., CtmEmulator]) -> None:
    first, second, other = (make_ctm_emulator(seed=seed) for seed in (7, 7, 8))
    for emulator in (first, second, other):
        emulator.faults.error_rate = 0.3
        emulator.faults.error_status = 502

    runs = [refresh_statuses(emulator, rounds=3) for emulator in (first, second, other)]

    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert set(runs[0]) == {200, 502}


def test_a_dropped_connection_gets_no_answer(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    dropped = ctm_emulator.keys[0]["id"]
    ctm_emulator.faults.drop_keys.add(dropped)

    with pytest.raises(requests.ConnectionError):
        ctm.refresh(dropped)

    assert ctm.refresh(ctm_emulator.keys[1]["id"]).status_code == 200
    assert [e.status for e in ctm_emulator.request_log if e.dropped] == [0]


def test_drop_next_hangs_up_on_the_next_refreshes(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    key_id = ctm_emulator.keys[0]["id"]
    ctm_emulator.faults.drop_next(1)

    with pytest.raises(requests.ConnectionError):
        ctm.refresh(key_id)
    assert ctm.refresh(key_id).status_code == 200


def test_latency_is_added_to_key_calls_through_the_injected_sleep(
    make_ctm_emulator: Callable[..., CtmEmulator],
) -> None:
    slept: list[float] = []
    emulator = make_ctm_emulator(sleep=slept.append)
    emulator.faults.latency = 0.15
    ctm = Ctm(emulator).login()

    ctm.get(KEYS)
    ctm.refresh(emulator.keys[0]["id"])

    assert slept == [0.15, 0.15]  # not on the login


# --- the request log ------------------------------------------------------------------------


def test_the_request_log_records_routing_facts(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    key = ctm_emulator.keys[0]
    ctm_emulator.reset_log()

    ctm.get(KEYS, tenancy=key["tenancy"], limit=5)
    ctm.refresh(key["id"])

    listed, refreshed = ctm_emulator.request_log
    assert (listed.method, listed.path, listed.operation) == ("GET", KEYS, "list")
    assert listed.query == {"tenancy": key["tenancy"], "limit": "5"}
    assert (listed.status, listed.tenancy, listed.authorization_present) == (
        200,
        key["tenancy"],
        True,
    )
    assert (refreshed.operation, refreshed.key_id, refreshed.tenancy) == (
        "refresh",
        key["id"],
        key["tenancy"],
    )
    assert refreshed.monotonic >= listed.monotonic


def test_the_request_log_never_holds_a_credential(
    make_ctm_emulator: Callable[..., CtmEmulator],
) -> None:
    ctm_emulator = make_ctm_emulator(users={"svc-key-refresh": "Correct-Horse-Battery-9"})
    ctm = Ctm(ctm_emulator).login()
    refresh_token = ctm_emulator.issue_refresh_token()
    ctm.post(TOKENS, json={"grant_type": "refresh_token", "refresh_token": refresh_token})
    ctm.refresh(ctm_emulator.keys[0]["id"])

    logged = repr(ctm_emulator.request_log)

    assert ctm.jwt is not None
    for secret in (ctm.jwt, ctm.jwt.split(".")[2], ctm_emulator.password, refresh_token):
        assert secret not in logged
    assert [e.grant_type for e in ctm_emulator.request_log[:2]] == ["password", "refresh_token"]


def test_reset_log_forgets_requests_and_zeroes_the_counters(
    ctm: Ctm, ctm_emulator: CtmEmulator
) -> None:
    ctm.refresh(ctm_emulator.keys[0]["id"])

    ctm_emulator.reset_log()

    assert ctm_emulator.request_log == []
    assert (ctm_emulator.refresh_count(), ctm_emulator.tokens_issued) == (0, 0)


# --- TLS, curl and the command line ---------------------------------------------------------


def test_the_certificate_verifies_only_against_the_emulators_ca(
    ctm_emulator: CtmEmulator,
) -> None:
    localhost_url = ctm_emulator.base_url.replace("127.0.0.1", "localhost") + KEYS
    assert requests.get(localhost_url, verify=ctm_emulator.ca_file, timeout=5).status_code == 401
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(ctm_emulator.base_url + KEYS, verify=True, timeout=5)
    assert ctm_emulator.ca_pem == Path(ctm_emulator.ca_file).read_text()


def test_large_answers_are_gzipped_when_the_client_accepts_it(ctm: Ctm) -> None:
    answer = ctm.get(KEYS, limit=-1)
    assert answer.headers["Content-Encoding"] == "gzip"
    assert answer.json()["total"] == 30


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_seeds_curl_command_refreshes_a_key(ctm_emulator: CtmEmulator) -> None:
    key_id = ctm_emulator.keys[0]["id"]
    jwt = ctm_emulator.mint_jwt()
    command = [
        "curl",
        "--cacert",
        ctm_emulator.ca_file,
        f"{ctm_emulator.base_url}/api/v1/cckm/oci/keys/{key_id}/refresh",
        "-X",
        "POST",
        "-H",
        f"Authorization: Bearer {jwt}",
        "-H",
        "accept: application/json",
        "--compressed",
        "--silent",
        "--show-error",
        "--write-out",
        "\n%{http_code}",
    ]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}

    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=10, env=env)

    assert done.returncode == 0, done.stderr
    body, status = done.stdout.rsplit("\n", 1)
    assert status == "200"
    assert json.loads(body)["id"] == key_id
    assert ctm_emulator.refresh_count(key_id) == 1


def test_the_command_line_prints_how_to_connect_and_serves_until_stopped() -> None:
    command = [sys.executable, "-m", "devkit.ctm_emulator", "--port", "0", "--keys", "5", "--json"]
    env = os.environ | {"PYTHONPATH": f"{REPO / 'layers' / 'common'}{os.pathsep}{REPO}"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO) as server:
        try:
            assert server.stdout is not None
            printed = json.loads(server.stdout.readline())
            answer = requests.post(
                printed["base_url"] + TOKENS,
                json={"grant_type": "refresh_token", "refresh_token": printed["refresh_token"]},
                verify=printed["ca_file"],
                timeout=5,
            )
            assert answer.status_code == 200
            assert (printed["username"], printed["keys"]) == ("svc-key-refresh", 5)
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=10) == 0


def test_a_stopped_emulator_closes_its_port_and_deletes_its_files() -> None:
    with CtmEmulator(keys=generate_keys(3, seed=2)) as emulator:
        ca_file = Path(emulator.ca_file)
        port = emulator.port
        assert ca_file.exists()

    assert not ca_file.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# --- list modes: unknown filters, wildcards, sort, keys moving between pages -------------------


def test_an_unknown_list_parameter_is_refused_by_default(ctm: Ctm) -> None:
    body = assert_ctm_error(ctm.get(KEYS, colour="blue"), 400, "NCERRInvalidParamValue")
    assert "colour" in body["message"]


def test_an_unknown_filter_can_be_ignored_as_some_ctm_versions_do(
    ctm: Ctm, ctm_emulator: CtmEmulator
) -> None:
    # Given a CTM that does not know key_name and ignores what it does not know
    ctm_emulator.faults.ignore_unknown_filters = True
    ctm_emulator.faults.unknown_filters = {"key_name"}
    name = ctm_emulator.keys[3]["oci_params"]["display_name"]
    # When the list is filtered by key_name
    body = ctm.get(KEYS, limit=-1, key_name=name, colour="blue").json()
    # Then the filter is ignored: every key comes back
    assert body["total"] == 30


def test_a_wildcard_filter_matches_many_names(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    ctm_emulator.faults.wildcard_filters = True
    prefix = ctm_emulator.keys[0]["oci_params"]["display_name"].split("-")[0]
    expected = [
        k["id"] for k in ctm_emulator.keys if k["oci_params"]["display_name"].startswith(prefix)
    ]
    body = ctm.get(KEYS, limit=-1, key_name=f"{prefix}-*").json()
    assert [k["id"] for k in body["resources"]] == expected
    assert ctm.get(KEYS, limit=-1, key_name=f"{prefix}-?").json()["total"] == 0


def test_sort_orders_by_a_field_list_descending_with_a_minus(
    ctm: Ctm, ctm_emulator: CtmEmulator
) -> None:
    keys = ctm_emulator.keys
    by_tenancy_then_id = sorted(keys, key=lambda k: (k["tenancy"], k["id"]))
    body = ctm.get(KEYS, limit=-1, sort="tenancy,id").json()
    assert [k["id"] for k in body["resources"]] == [k["id"] for k in by_tenancy_then_id]
    newest_first = ctm.get(KEYS, limit=-1, sort="-createdAt").json()["resources"]
    assert [k["id"] for k in newest_first] == [k["id"] for k in reversed(keys)]


def test_sort_by_an_unknown_field_is_400(ctm: Ctm) -> None:
    assert_ctm_error(ctm.get(KEYS, sort="colour"), 400, "NCERRInvalidParamValue")


def test_by_default_order_a_refresh_moves_the_key_and_naive_skip_paging_misses_keys(
    ctm: Ctm, ctm_emulator: CtmEmulator
) -> None:
    # Given a CTM that lists by updatedAt when no sort is asked for
    ctm_emulator.faults.default_sort = "updatedAt"
    # When a client pages with skip alone, refreshing each page's keys before the next page
    seen: list[str] = []
    skip = 0
    while True:
        body = ctm.get(KEYS, skip=skip, limit=10).json()
        seen += [key["id"] for key in body["resources"]]
        for key in body["resources"]:
            assert ctm.refresh(key["id"]).status_code == 200
        skip += len(body["resources"])
        if not body["resources"] or skip >= body["total"]:
            break
    # Then keys were seen twice and others never: the order moved under it
    assert len(set(seen)) < 30


def test_list_churn_removes_the_first_keys_and_adds_new_ones_after_each_page(
    ctm: Ctm, ctm_emulator: CtmEmulator
) -> None:
    first_ids = [k["id"] for k in ctm_emulator.keys[:3]]
    ctm_emulator.faults.list_churn = ListChurn(remove=3, add=2)

    ctm.get(KEYS, limit=5)

    ids = [k["id"] for k in ctm_emulator.keys]
    assert len(ids) == 29
    assert not set(first_ids) & set(ids)
    newest = ctm.get(KEYS, limit=-1, sort="-createdAt").json()["resources"][:2]
    assert {k["id"] for k in newest} == set(ids[-2:])


# --- refresh modes: gone, NotAuthorizedOrNotFound, vault busy ----------------------------------


def test_a_gone_key_refreshes_with_200_and_gone_true(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    key_id = ctm_emulator.keys[0]["id"]
    ctm_emulator.faults.gone_keys = {key_id}
    answer = ctm.refresh(key_id)
    assert answer.status_code == 200
    assert answer.json()["gone"] is True


@pytest.mark.parametrize("status", [404, 500])
def test_not_authorized_or_not_found_is_passed_through_under_any_status(
    ctm: Ctm, ctm_emulator: CtmEmulator, status: int
) -> None:
    key_id = ctm_emulator.keys[0]["id"]
    ctm_emulator.faults.not_authorized_keys = {key_id: status}
    answer = ctm.refresh(key_id)
    assert answer.status_code == status
    assert "NotAuthorizedOrNotFound" in answer.json()["message"]


def test_a_busy_vault_refuses_the_first_refreshes(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    key_id = ctm_emulator.keys[0]["id"]
    ctm_emulator.faults.vault_busy(key_id, times=2)
    first, second, third = (ctm.refresh(key_id) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (409, 409, 200)
    assert "Vault must be in one of the following states" in first.json()["message"]


# --- answers that are slow, large or malformed ---------------------------------------------------


def test_a_trickling_answer_arrives_byte_by_byte(
    make_ctm_emulator: Callable[..., CtmEmulator],
) -> None:
    # Given an emulator whose waits are recorded instead of slept
    paused: list[float] = []
    emulator = make_ctm_emulator(sleep=paused.append)
    emulator.faults.trickle_interval = 0.5
    # When a refresh answer trickles
    answer = Ctm(emulator).login().refresh(emulator.keys[0]["id"])
    # Then it arrives whole, after a pause before each byte
    assert answer.status_code == 200
    assert answer.json()["id"] == emulator.keys[0]["id"]
    assert len(paused) == len(answer.content)
    assert set(paused) == {0.5}


def test_an_oversized_answer_is_padded(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    ctm_emulator.faults.oversize_bytes = 3 << 20
    answer = ctm.session.post(
        f"{ctm_emulator.base_url}{KEYS}/{ctm_emulator.keys[0]['id']}/refresh",
        headers={**ctm.headers(), "Accept-Encoding": "identity"},
        verify=ctm_emulator.ca_file,
        timeout=5,
    )
    assert len(answer.content) > 3 << 20
    assert answer.json()["id"] == ctm_emulator.keys[0]["id"]


def test_malformed_list_items_and_pages(ctm: Ctm, ctm_emulator: CtmEmulator) -> None:
    ctm_emulator.faults.malform("list_item_without_id", "list_item_bad_oci_params")
    items = ctm.get(KEYS, limit=5).json()["resources"]
    assert "id" not in items[0]
    assert items[-1]["oci_params"] == "ENABLED"
    ctm_emulator.faults.malform("list_not_a_list")
    assert "resources" not in ctm.get(KEYS).json()


@pytest.mark.parametrize(
    ("mode", "check"),
    [
        ("refresh_not_a_key", lambda a: "id" not in a.json()),
        ("refresh_bad_oci_params", lambda a: a.json()["oci_params"] == "ENABLED"),
        ("refresh_not_json", lambda a: a.text.startswith("<html>")),
    ],
)
def test_malformed_refresh_answers_are_200(
    ctm: Ctm, ctm_emulator: CtmEmulator, mode: str, check: Callable[[requests.Response], bool]
) -> None:
    ctm_emulator.faults.malform(mode)
    answer = ctm.refresh(ctm_emulator.keys[0]["id"])
    assert answer.status_code == 200
    assert check(answer)


def test_an_unknown_malformed_mode_is_refused(ctm_emulator: CtmEmulator) -> None:
    with pytest.raises(ValueError, match="unknown malformed modes"):
        ctm_emulator.faults.malform("everything")
