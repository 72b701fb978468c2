"""CTM authentication against the CTM emulator: refresh tokens that pile up, bare JWTs, skew.

Both sides' clocks are injected (the emulator's ``ctm_clock``; the client's own), so an hour of
renewals takes no real time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from cckm_refresh.ctm.auth import TOKEN_PATH, Grant, TokenSource
from cckm_refresh.ctm.client import CtmClient
from cckm_refresh.ctm.credentials import CredentialsCache
from cckm_refresh.ctm.errors import CtmError, CtmTokenExpiredError
from cckm_refresh.ctm.transport import UNPACED
from cckm_refresh.runtime import Deadline
from devkit.ctm_emulator import CtmEmulator
from tests.fixtures.ctm import ManualClock
from tests.unit.manual_runtime import ManualRuntime

pytestmark = pytest.mark.integration

HOUR = 3600
TOKEN_URL_PATH = "/api/v1/auth/tokens"


def password_secret(emulator: CtmEmulator) -> str:
    return json.dumps(
        {"username": emulator.username, "password": emulator.password, "ca_bundle": emulator.ca_pem}
    )


def make_client(emulator: CtmEmulator, secret: str, clock: ManualRuntime) -> CtmClient:
    """A client whose clock (both its monotonic and its wall clock) is ``clock``."""
    return CtmClient.create(
        base_url=emulator.base_url,
        secret_loader=lambda force: secret,
        timeout=5.0,
        runtime=clock,
        rng=lambda: 0.5,
    )


def refresh(client: CtmClient, key_id: str) -> Any:
    deadline = Deadline.within(600.0, client.transport.runtime)
    return client.refresh_oci_key(key_id, pacer=UNPACED, deadline=deadline)


def with_password_at_every_renewal(
    client: CtmClient, secret: str, clock: ManualRuntime
) -> CtmClient:
    """The same client as before this change: every renewal sent the password again, and
    asked for no limit on the refresh token CTM minted for it."""
    document = json.loads(secret)
    url = client.base_url + TOKEN_PATH

    def password_grant(grant: Grant, deadline: Deadline) -> Mapping[str, Any]:
        password = {"grant_type": "password", "username": document["username"]}
        password["password"] = document["password"]
        return client.transport.call("POST", url, json_body=password, deadline=deadline).body

    tokens = TokenSource(CredentialsCache(lambda force: secret), password_grant, runtime=clock)
    return CtmClient(client.base_url, tokens, client.transport)


def an_hour_of_refreshes(emulator: CtmEmulator, client: CtmClient, clock: ManualClock) -> list[int]:
    """One refresh a minute for an hour, both ends included; the user's live refresh tokens
    after each minute."""
    key_id = emulator.keys[0]["id"]
    live = []
    for _ in range(HOUR // 60 + 1):
        assert refresh(client, key_id).attempts == 1  # never met a 401 on the way
        live.append(emulator.live_refresh_tokens(emulator.username))
        clock.advance(60)
    return live


def test_an_hour_of_renewals_leaves_at_most_two_live_refresh_tokens(
    ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    # Given a password secret, and both clocks moving together
    secret = password_secret(ctm_emulator)
    with make_client(ctm_emulator, secret, ctm_clock) as client:
        # When the function works for an hour (a JWT lives 300 s: renewed every 4 minutes)
        live = an_hour_of_refreshes(ctm_emulator, client, ctm_clock)
    grants = [r.grant_type for r in ctm_emulator.request_log if r.operation == "token"]
    # Then renewals redeemed the login's refresh token: the password went twice (the first
    # refresh token reached its hour), and the user never had more than two refresh tokens
    assert len(grants) == 16
    assert grants.count("password") == 2
    assert max(live) <= 2
    assert live[-1] <= 2


def test_sending_the_password_at_every_renewal_would_have_left_one_token_per_renewal(
    ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    # Given the behaviour before this change: the password at every renewal, no limits asked
    secret = password_secret(ctm_emulator)
    with make_client(ctm_emulator, secret, ctm_clock) as client:
        old_client = with_password_at_every_renewal(client, secret, ctm_clock)
        # When the function works for an hour
        live = an_hour_of_refreshes(ctm_emulator, old_client, ctm_clock)
    # Then every renewal (every 4 minutes, at 0 and 60 minutes too) left a refresh token
    # that CTM keeps for ever
    grants = [r.grant_type for r in ctm_emulator.request_log if r.operation == "token"]
    assert set(grants) == {"password"}
    assert live[-1] == len(grants) == 16


def test_a_login_refresh_token_ctm_revoked_costs_one_password_login(
    ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    # Given a client that logged in with the password, and CTM then revoking refresh tokens
    secret = password_secret(ctm_emulator)
    key_id = ctm_emulator.keys[0]["id"]
    with make_client(ctm_emulator, secret, ctm_clock) as client:
        refresh(client, key_id)
        ctm_emulator.revoke_refresh_tokens()
        # When the JWT is renewed
        ctm_clock.advance(241)
        refresh(client, key_id)
    # Then the refused refresh token was followed by one password login, and one token lives
    tokens = [(r.grant_type, r.status) for r in ctm_emulator.request_log if r.operation == "token"]
    assert tokens == [("password", 200), ("refresh_token", 401), ("password", 200)]
    assert ctm_emulator.live_refresh_tokens(ctm_emulator.username) == 1


def test_an_idle_container_s_refresh_token_is_revoked_by_ctm_ten_minutes_later(
    ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    # Given a client that logged in and was then frozen (Lambda keeps the container idle)
    with make_client(ctm_emulator, password_secret(ctm_emulator), ctm_clock) as client:
        client.issue_token(Deadline.within(600.0, client.transport.runtime))
    assert ctm_emulator.live_refresh_tokens() == 1
    # When 10 minutes pass, Then CTM no longer keeps its refresh token
    ctm_clock.advance(600)
    assert ctm_emulator.live_refresh_tokens() == 0


# --- a bare JWT: CTM's clock decides ------------------------------------------------------------


def test_a_bare_jwt_is_used_while_ctm_accepts_it_whatever_our_clock_says(
    ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    # Given a JWT CTM accepts for 5 minutes, and the function's clock 10 minutes ahead
    secret = json.dumps({"token": ctm_emulator.mint_jwt(300), "ca_bundle": ctm_emulator.ca_pem})
    ahead = ManualClock(ctm_clock() + 600)
    key_ids = [key["id"] for key in ctm_emulator.keys]
    with make_client(ctm_emulator, secret, ahead) as client:
        # When keys are refreshed, Then CTM accepts the token
        assert [refresh(client, k).http_status for k in key_ids[:3]] == [200] * 3
        # And once CTM's clock passes its exp, a run of every key fails TOKEN_EXPIRED
        ctm_clock.advance(301)
        ctm_emulator.reset_log()
        errors = refresh_all(client, key_ids, workers=8)
    assert len(errors) == len(key_ids)
    assert all(isinstance(e, CtmTokenExpiredError) for e in errors)
    assert {e.error_code for e in errors} == {"TOKEN_EXPIRED"}
    # after CTM refused it only for the calls already under way when the first refusal came
    refusals = [r.status for r in ctm_emulator.request_log]
    assert set(refusals) == {401}
    assert 1 <= len(refusals) <= 8


def test_a_run_after_ctm_refused_the_bare_jwt_sends_it_no_more(
    ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    secret = json.dumps({"token": ctm_emulator.mint_jwt(300), "ca_bundle": ctm_emulator.ca_pem})
    key_ids = [key["id"] for key in ctm_emulator.keys]
    ctm_clock.advance(301)
    with make_client(ctm_emulator, secret, ctm_clock) as client:
        errors = refresh_all(client, key_ids, workers=1)
    assert {e.error_code for e in errors} == {"TOKEN_EXPIRED"}
    assert len(errors) == len(key_ids)
    assert [r.status for r in ctm_emulator.request_log] == [401]


def refresh_all(client: CtmClient, key_ids: list[str], *, workers: int) -> list[CtmError]:
    def one(key_id: str) -> CtmError | None:
        try:
            refresh(client, key_id)
        except CtmError as error:
            return error
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [e for e in pool.map(one, key_ids) if e is not None]


# --- the emulator's token endpoint --------------------------------------------------------------


def post_grant(emulator: CtmEmulator, grant: dict[str, Any]) -> requests.Response:
    return requests.post(
        emulator.base_url + TOKEN_URL_PATH, json=grant, verify=emulator.ca_file, timeout=10
    )


def test_a_password_grant_asking_for_limits_reports_when_its_refresh_token_ends(
    ctm_emulator: CtmEmulator, ctm_clock: ManualClock
) -> None:
    grant = {
        "grant_type": "password",
        "username": ctm_emulator.username,
        "password": ctm_emulator.password,
        "refresh_token_lifetime": 60,
        "refresh_token_revoke_unused_in": 10,
    }
    answer = post_grant(ctm_emulator, grant)
    assert answer.status_code == 200
    assert answer.json()["refresh_token_expires_in"] == 600  # seconds: the nearer limit


@pytest.mark.parametrize("value", [-1, "10", 1.5, True])
def test_a_refresh_token_limit_that_is_not_whole_minutes_is_a_400(
    ctm_emulator: CtmEmulator, value: object
) -> None:
    grant = {
        "grant_type": "password",
        "username": ctm_emulator.username,
        "password": ctm_emulator.password,
        "refresh_token_revoke_unused_in": value,
    }
    answer = post_grant(ctm_emulator, grant)
    assert answer.status_code == 400
    assert ctm_emulator.live_refresh_tokens() == 0
