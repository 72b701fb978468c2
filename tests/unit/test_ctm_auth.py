"""TokenSource: obtaining, renewing and invalidating CTM JWTs (CONTRACT section 3)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cckm_refresh.ctm.auth import TokenSource, jwt_claims
from cckm_refresh.ctm.client import CtmClient
from cckm_refresh.ctm.credentials import CredentialsCache
from cckm_refresh.ctm.errors import CtmAuthError, CtmError, CtmTokenExpiredError
from tests.unit.ctm_fakes import (
    BASE_URL,
    EPOCH,
    KEY_ID,
    TOKEN_PATH,
    FakeClock,
    FakeCtm,
    Reply,
    SecretLoader,
    error_body,
    fake_client,
    key_object,
    make_jwt,
)

REFRESH_PATH = f"/api/v1/cckm/oci/keys/{KEY_ID}/refresh"
UNAUTHORIZED = Reply(401, error_body("NCERRUnauthorizedAccess", "Wrong username or password.", 5))


def bearer_of(sent: Any) -> str:
    return str(sent.headers["Authorization"]).removeprefix("Bearer ")


def skewed_client(ctm: FakeCtm, secret: str, *, ahead: float) -> CtmClient:
    """A client whose wall clock runs ``ahead`` seconds in front of CTM's."""
    client = CtmClient.create(
        base_url=BASE_URL,
        secret_loader=SecretLoader(secret),
        sleep=ctm.clock.advance,
        clock=ctm.clock,
        wall_clock=lambda: ctm.clock() + ahead,
        rng=lambda: 0.5,
    )
    client.transport.session.mount("https://", ctm)
    return client


RUN_KEYS = [str(uuid.UUID(int=n + 1)) for n in range(40)]  # a run of many keys


def refresh_path(key_id: str) -> str:
    return f"/api/v1/cckm/oci/keys/{key_id}/refresh"


def refreshes(ctm: FakeCtm) -> list[Any]:
    return [s for s in ctm.sent if s.path.endswith("/refresh")]


def refresh_many(client: CtmClient, keys: list[str], workers: int = 8) -> list[CtmError]:
    """Refresh ``keys`` from ``workers`` threads, as a run does; return their errors."""

    def refresh(key_id: str) -> CtmError | None:
        try:
            client.refresh_oci_key(key_id)
        except CtmError as error:
            return error
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(refresh, keys))
    return [error for error in outcomes if error is not None]


def test_creating_a_client_does_no_io() -> None:
    # Given a loader and a fake CTM
    ctm, loader = FakeCtm(), SecretLoader('{"refresh_token": "rt"}')
    # When the client is created
    fake_client(ctm, loader)
    # Then neither the secret nor CTM was touched (cold start stays fast)
    assert loader.calls == []
    assert ctm.sent == []


def test_refresh_token_is_exchanged_for_a_jwt_at_first_use() -> None:
    ctm = FakeCtm()
    client = fake_client(ctm, '{"refresh_token": "rt-1"}')

    jwt = client.issue_token()

    (sent,) = ctm.to("POST", TOKEN_PATH)
    assert sent.body == {"grant_type": "refresh_token", "refresh_token": "rt-1"}
    assert "Authorization" not in sent.headers
    assert jwt == ctm.jwts_issued[0]


def test_password_grant_asks_for_a_short_lived_refresh_token_and_carries_the_domains() -> None:
    ctm = FakeCtm()
    secret = {"username": "u", "password": "p", "domain": "child", "auth_domain": "root"}
    fake_client(ctm, json.dumps(secret)).issue_token()

    (sent,) = ctm.to("POST", TOKEN_PATH)
    assert sent.body == {
        "grant_type": "password",
        "username": "u",
        "password": "p",
        "refresh_token_lifetime": 60,  # minutes, as CTM takes them
        "refresh_token_revoke_unused_in": 10,
        "domain": "child",
        "auth_domain": "root",
    }


def test_password_grant_without_domains_sends_none() -> None:
    ctm = FakeCtm()
    fake_client(ctm, '{"username": "u", "password": "p"}').issue_token()
    assert "domain" not in ctm.to("POST", TOKEN_PATH)[0].body
    assert "auth_domain" not in ctm.to("POST", TOKEN_PATH)[0].body


def test_jwt_is_reused_while_more_than_60_seconds_remain() -> None:
    # Given a JWT living 300 s
    ctm = FakeCtm()
    client = fake_client(ctm)
    first = client.issue_token()
    # When 239 s pass (61 s left)
    ctm.clock.advance(239)
    # Then the same JWT is used, with no new token request
    assert client.issue_token() == first
    assert len(ctm.to("POST", TOKEN_PATH)) == 1


def test_jwt_is_renewed_when_less_than_60_seconds_remain() -> None:
    ctm = FakeCtm()
    client = fake_client(ctm)
    first = client.issue_token()

    ctm.clock.advance(241)

    assert client.issue_token() != first
    assert len(ctm.to("POST", TOKEN_PATH)) == 2


def test_lifetime_falls_back_to_duration_when_the_jwt_has_no_exp() -> None:
    # Given a token endpoint answering a JWT without exp and a duration of 600 s
    ctm = FakeCtm()
    ctm.script("POST", TOKEN_PATH, Reply(200, {"jwt": make_jwt(), "duration": 600}))
    client = fake_client(ctm)
    first = client.issue_token()
    # Then it is kept until 60 s before the duration ends
    ctm.clock.advance(539)
    assert client.issue_token() == first
    ctm.clock.advance(2)
    assert client.issue_token() != first


def test_lifetime_is_measured_on_ctms_clock_so_skew_does_not_force_renewals() -> None:
    # Given CTM's clock an hour behind ours: the JWT's exp is already past by our clock
    ctm = FakeCtm()
    skewed = make_jwt(iat=EPOCH - 3600, exp=EPOCH - 3300)
    ctm.script("POST", TOKEN_PATH, Reply(200, {"jwt": skewed}))
    client = fake_client(ctm)
    # When it is used over the next 200 s
    client.issue_token()
    ctm.clock.advance(200)
    # Then it is still the one in use (300 s lifetime, from exp - iat)
    assert client.issue_token() == skewed


def test_a_short_lived_jwt_is_not_renewed_for_every_call() -> None:
    # Given JWTs living 8 s (shorter than the 60 s margin)
    ctm = FakeCtm(token_lifetime=8)
    client = fake_client(ctm)
    first = client.issue_token()
    # Then it is reused for most of its life, and renewed before it ends
    ctm.clock.advance(5)
    assert client.issue_token() == first
    ctm.clock.advance(1.5)
    assert client.issue_token() != first


def test_401_renews_the_jwt_once_and_retries_the_call() -> None:
    # Given CTM refusing the first JWT on a refresh
    ctm = FakeCtm()
    ctm.script("POST", REFRESH_PATH, UNAUTHORIZED, Reply(200, key_object()))
    client = fake_client(ctm)
    # When the key is refreshed
    response = client.refresh_oci_key(KEY_ID)
    # Then a second JWT was obtained and the retry carried it
    assert response.http_status == 200
    assert response.attempts == 2
    first, second = ctm.to("POST", REFRESH_PATH)
    assert bearer_of(first) == ctm.jwts_issued[0]
    assert bearer_of(second) == ctm.jwts_issued[1]


def test_401_surviving_renewal_is_an_auth_error() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, UNAUTHORIZED)
    client = fake_client(ctm)

    with pytest.raises(CtmAuthError) as caught:
        client.refresh_oci_key(KEY_ID)

    assert caught.value.http_status == 401
    assert caught.value.attempts == 2
    assert caught.value.error_code == "NCERRUnauthorizedAccess"
    assert len(ctm.to("POST", TOKEN_PATH)) == 2


def test_401_without_code_desc_is_unauthorized() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(401, ""))
    with pytest.raises(CtmAuthError) as caught:
        fake_client(ctm).refresh_oci_key(KEY_ID)
    assert caught.value.error_code == "UNAUTHORIZED"


def test_the_secret_is_fetched_again_after_a_401() -> None:
    ctm, loader = FakeCtm(), SecretLoader('{"refresh_token": "rt"}')
    ctm.script("POST", REFRESH_PATH, UNAUTHORIZED, Reply(200, key_object()))

    fake_client(ctm, loader).refresh_oci_key(KEY_ID)

    assert loader.forced == 1


def test_token_endpoint_401_refetches_the_secret_and_retries_with_the_new_one() -> None:
    # Given a stale refresh token in the cache; the secret now holds a new one
    ctm = FakeCtm()
    loader = SecretLoader('{"refresh_token": "old"}', after_force='{"refresh_token": "new"}')
    ctm.script("POST", TOKEN_PATH, UNAUTHORIZED)
    # When a token is needed
    jwt = fake_client(ctm, loader).issue_token()
    # Then the secret was re-read and the new refresh token worked
    grants = [s.body["refresh_token"] for s in ctm.to("POST", TOKEN_PATH)]
    assert grants == ["old", "new"]
    assert jwt == ctm.jwts_issued[0]


def test_token_endpoint_401_with_an_unchanged_secret_fails_without_a_second_login() -> None:
    ctm, loader = FakeCtm(), SecretLoader('{"username": "u", "password": "wrong"}')
    ctm.always("POST", TOKEN_PATH, UNAUTHORIZED)

    with pytest.raises(CtmAuthError, match="CTM refused the secret's password") as caught:
        fake_client(ctm, loader).issue_token()

    assert caught.value.error_code == "NCERRUnauthorizedAccess"
    assert loader.forced == 1
    assert len(ctm.to("POST", TOKEN_PATH)) == 1


def test_refused_credentials_are_not_offered_again_for_a_minute() -> None:
    # Given CTM refused the password once
    ctm = FakeCtm()
    ctm.script("POST", TOKEN_PATH, UNAUTHORIZED)
    client = fake_client(ctm, '{"username": "u", "password": "p"}')
    with pytest.raises(CtmAuthError):
        client.issue_token()
    # When more keys need a token within the minute, no new login is attempted
    with pytest.raises(CtmAuthError):
        client.issue_token()
    assert len(ctm.to("POST", TOKEN_PATH)) == 1
    # Then after a minute it is tried again (a CTM hiccup must not poison a warm container)
    ctm.clock.advance(61)
    assert client.issue_token() == ctm.jwts_issued[0]


def test_static_token_is_used_as_is_while_ctm_accepts_it() -> None:
    ctm = FakeCtm()
    static = make_jwt(exp=EPOCH + 100)
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    client = fake_client(ctm, static)

    client.refresh_oci_key(KEY_ID)
    ctm.clock.advance(99)
    client.refresh_oci_key(KEY_ID)

    assert [bearer_of(s) for s in ctm.to("POST", REFRESH_PATH)] == [static, static]
    assert ctm.to("POST", TOKEN_PATH) == []


def ctm_judging_exp_by_its_own_clock(ctm: FakeCtm) -> None:
    """Refreshes succeed while the bearer's exp has not passed by ``ctm.clock``, else 401."""

    def refresh(sent: Any) -> Reply:
        if ctm.clock() > jwt_claims(bearer_of(sent))["exp"]:
            return Reply(401, error_body("NCERRUnauthorizedAccess", "Token is expired by 5s", 5))
        return Reply(200, key_object())

    for key_id in [KEY_ID, *RUN_KEYS]:
        ctm.always("POST", refresh_path(key_id), refresh)


def test_a_static_token_is_sent_even_when_our_clock_says_it_has_expired() -> None:
    # Given our clock 10 minutes ahead of CTM's, and a token CTM accepts for 200 s more
    ctm = FakeCtm()
    ctm_judging_exp_by_its_own_clock(ctm)
    static = make_jwt(exp=EPOCH + 200, iat=EPOCH - 100)
    client = skewed_client(ctm, json.dumps({"token": static}), ahead=600)
    # When keys are refreshed, Then the token goes to CTM, which accepts it
    assert client.refresh_oci_key(KEY_ID).http_status == 200
    assert bearer_of(ctm.to("POST", REFRESH_PATH)[0]) == static


def test_a_static_token_ctm_refuses_fails_every_key_as_token_expired_after_one_call() -> None:
    # Given a static token that has expired by CTM's clock, and a loader with nothing newer
    ctm, loader = FakeCtm(), SecretLoader(make_jwt(exp=EPOCH - 1))
    ctm_judging_exp_by_its_own_clock(ctm)
    client = fake_client(ctm, loader)
    # When a run of many keys is refreshed (one at a time: calls already under way when CTM
    # refuses the token cannot be called back)
    errors = refresh_many(client, RUN_KEYS, workers=1)
    # Then CTM saw the token once; every key failed TOKEN_EXPIRED, saying what to store instead
    assert len(refreshes(ctm)) == 1
    assert len(errors) == len(RUN_KEYS)
    assert {type(e) for e in errors} == {CtmTokenExpiredError}
    assert {e.error_code for e in errors} == {"TOKEN_EXPIRED"}
    assert all("store a refresh_token" in e.message for e in errors)
    assert loader.forced == 1
    assert ctm.to("POST", TOKEN_PATH) == []


def test_static_token_refused_by_ctm_is_replaced_by_a_new_one_from_the_secret() -> None:
    ctm = FakeCtm()
    replacement = make_jwt(exp=EPOCH + 1000, jti="new")
    loader = SecretLoader(make_jwt(exp=EPOCH + 1000, jti="old"), after_force=replacement)
    ctm.script("POST", REFRESH_PATH, Reply(401, ""), Reply(200, key_object()))

    fake_client(ctm, loader).refresh_oci_key(KEY_ID)

    assert bearer_of(ctm.to("POST", REFRESH_PATH)[1]) == replacement


# --- refused credentials: one login, not one per key ------------------------------------------

REFUSALS = {
    400: Reply(400, error_body("NCERRInvalidParamValue", "Invalid or expired refresh token.", 3)),
    401: UNAUTHORIZED,
    403: Reply(403, error_body("NCERRPermissionDenied", "User account is locked.", 6)),
}
PASSWORD_SECRET = '{"username": "svc", "password": "S3cret-pass"}'


def ctm_with_keys() -> FakeCtm:
    ctm = FakeCtm()
    for key_id in RUN_KEYS:
        ctm.always("POST", refresh_path(key_id), Reply(200, key_object(key_id)))
    return ctm


@pytest.mark.parametrize("status", sorted(REFUSALS))
@pytest.mark.parametrize("secret", [PASSWORD_SECRET, '{"refresh_token": "rt-secret"}'])
def test_a_refused_login_makes_a_run_of_many_keys_fail_after_one_attempt(
    status: int, secret: str
) -> None:
    # Given CTM refusing the secret's credentials with a 400, 401 or 403
    ctm, loader = ctm_with_keys(), SecretLoader(secret)
    ctm.always("POST", TOKEN_PATH, REFUSALS[status])
    client = fake_client(ctm, loader)
    # When a run of many keys is refreshed concurrently
    errors = refresh_many(client, RUN_KEYS)
    # Then exactly one login was attempted (the account is not locked out by retries), the
    # secret was read again once, and every key failed with the run-fatal CtmAuthError
    assert len(ctm.to("POST", TOKEN_PATH)) == 1
    assert loader.forced == 1
    assert refreshes(ctm) == []
    assert len(errors) == len(RUN_KEYS)
    assert all(isinstance(e, CtmAuthError) for e in errors)
    assert {e.http_status for e in errors} == {status}


def test_a_refused_password_is_offered_again_once_the_secret_changes() -> None:
    # Given CTM refused the password, and the operator then stores a new one
    ctm = ctm_with_keys()
    ctm.script("POST", TOKEN_PATH, REFUSALS[403])
    loader = SecretLoader(PASSWORD_SECRET)
    client = fake_client(ctm, loader)
    with pytest.raises(CtmAuthError):
        client.issue_token()
    loader.value = '{"username": "svc", "password": "N3w-pass"}'
    # When the next key needs a token (the cache having expired), Then the new one is used
    client.refresh_oci_key(RUN_KEYS[0])
    assert [s.body["password"] for s in ctm.to("POST", TOKEN_PATH)] == ["S3cret-pass", "N3w-pass"]


def test_a_token_endpoint_404_is_not_taken_for_refused_credentials() -> None:
    ctm = FakeCtm()
    ctm.always("POST", TOKEN_PATH, Reply(404, error_body("NCERRResourceNotFound", "no route")))
    with pytest.raises(CtmError) as caught:
        fake_client(ctm, PASSWORD_SECRET).issue_token()
    assert not isinstance(caught.value, CtmAuthError)


# --- password logins: renewals use the refresh token CTM returned -----------------------------


class SessionIssuer:
    """CTM's token endpoint: every password grant mints a refresh token, a refresh grant
    answers with the same one; ``refuse`` lists refresh tokens CTM no longer accepts."""

    def __init__(self, ctm: FakeCtm) -> None:
        self.ctm = ctm
        self.minted: list[str] = []
        self.refuse: dict[str, Reply] = {}

    def __call__(self, sent: Any) -> Reply:
        grant = sent.body
        if grant["grant_type"] == "refresh_token":
            refused = self.refuse.get(grant["refresh_token"])
            if refused is not None:
                return refused
            refresh_token = grant["refresh_token"]
        else:
            refresh_token = f"minted-rt-{len(self.minted)}"
            self.minted.append(refresh_token)
        issued = self.ctm.issue(sent)
        return Reply(200, {**issued.body, "refresh_token": refresh_token})


def session_ctm() -> tuple[FakeCtm, SessionIssuer]:
    ctm = FakeCtm()
    issuer = SessionIssuer(ctm)
    ctm.always("POST", TOKEN_PATH, issuer)
    return ctm, issuer


def grants(ctm: FakeCtm) -> list[str]:
    """The grant of each token request: "password", or the refresh token redeemed."""
    return [
        s.body["refresh_token"] if s.body["grant_type"] == "refresh_token" else "password"
        for s in ctm.to("POST", TOKEN_PATH)
    ]


def test_renewals_after_a_password_login_use_the_refresh_token_it_returned() -> None:
    # Given a password secret
    ctm, _ = session_ctm()
    client = fake_client(ctm, PASSWORD_SECRET)
    # When the JWT is renewed three times (every 4 minutes)
    for _ in range(4):
        client.issue_token()
        ctm.clock.advance(241)
    # Then the password was sent once, and each renewal redeemed the refresh token it returned
    assert grants(ctm) == ["password", "minted-rt-0", "minted-rt-0", "minted-rt-0"]
    assert set(ctm.to("POST", TOKEN_PATH)[1].body) == {"grant_type", "refresh_token"}
    assert client.tokens.password_logins == 1


@pytest.mark.parametrize("status", sorted(REFUSALS))
def test_a_refused_login_refresh_token_falls_back_to_one_password_login(status: int) -> None:
    # Given a session whose refresh token CTM has revoked or let expire
    ctm, issuer = session_ctm()
    client = fake_client(ctm, PASSWORD_SECRET)
    client.issue_token()
    issuer.refuse["minted-rt-0"] = REFUSALS[status]
    ctm.clock.advance(241)
    # When the JWT is renewed, and renewed again later
    jwt = client.issue_token()
    ctm.clock.advance(241)
    client.issue_token()
    # Then one password login replaced it, and the next renewal used the new refresh token
    assert grants(ctm) == ["password", "minted-rt-0", "password", "minted-rt-1"]
    assert jwt == ctm.jwts_issued[1]


def test_a_401_on_a_call_is_answered_by_renewing_with_the_login_refresh_token() -> None:
    ctm, _ = session_ctm()
    ctm.script("POST", REFRESH_PATH, UNAUTHORIZED, Reply(200, key_object()))
    client = fake_client(ctm, PASSWORD_SECRET)

    assert client.refresh_oci_key(KEY_ID).attempts == 2

    assert grants(ctm) == ["password", "minted-rt-0"]


def test_a_transient_failure_of_a_renewal_keeps_the_login_refresh_token() -> None:
    # Given a session, and CTM failing the first renewal attempt with a 503
    ctm, _ = session_ctm()
    client = fake_client(ctm, PASSWORD_SECRET)
    client.issue_token()
    ctm.script("POST", TOKEN_PATH, Reply(503, error_body("NCERRServiceUnavailable")))
    ctm.clock.advance(241)
    # When the JWT is renewed, Then the retry redeemed the same refresh token: no password
    client.issue_token()
    assert grants(ctm) == ["password", "minted-rt-0", "minted-rt-0"]


def test_a_login_refresh_token_unused_for_ten_minutes_is_not_tried() -> None:
    # Given a session left unused for 10 minutes (a frozen Lambda container): CTM revoked it
    ctm, _ = session_ctm()
    client = fake_client(ctm, PASSWORD_SECRET)
    client.issue_token()
    ctm.clock.advance(600)
    # When a JWT is needed, Then the password is used straight away
    client.issue_token()
    assert grants(ctm) == ["password", "password"]


def test_a_login_refresh_token_is_replaced_before_its_hour_ends() -> None:
    # Given renewals every 4 minutes for an hour
    ctm, _ = session_ctm()
    client = fake_client(ctm, PASSWORD_SECRET)
    for _ in range(17):
        client.issue_token()
        ctm.clock.advance(241)
    # Then the first refresh token was dropped before CTM's 60-minute lifetime ended (at
    # 3615 s), for one new password login whose refresh token took over
    assert grants(ctm) == ["password", *["minted-rt-0"] * 14, "password", "minted-rt-1"]


def test_a_changed_secret_ends_the_session_with_a_login_of_the_new_credentials() -> None:
    ctm, _ = session_ctm()
    loader = SecretLoader(PASSWORD_SECRET)
    client = fake_client(ctm, loader)
    client.issue_token()
    loader.value = '{"username": "svc2", "password": "0ther-pass"}'
    ctm.clock.advance(241)

    client.issue_token()

    assert grants(ctm) == ["password", "password"]
    assert ctm.to("POST", TOKEN_PATH)[1].body["username"] == "svc2"


class CountingExchange:
    """A token endpoint that counts grants and can hold the first one until released."""

    def __init__(self) -> None:
        self.grants = 0
        self.lock = threading.Lock()

    def __call__(self, grant: Mapping[str, str | int]) -> Mapping[str, Any]:
        with self.lock:
            self.grants += 1
            return {"jwt": make_jwt(exp=EPOCH + 300, iat=EPOCH, n=self.grants)}


def token_source(exchange: CountingExchange, clock: FakeClock) -> TokenSource:
    cache = CredentialsCache(SecretLoader('{"refresh_token": "rt"}'))
    return TokenSource(cache, exchange, clock=clock, wall_clock=clock)


def run_together(count: int, action: Any) -> list[Any]:
    """Run ``action`` in ``count`` threads released at once; return their results."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def worker(index: int) -> None:
        barrier.wait()
        results[index] = action()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    return results


def test_concurrent_first_use_obtains_one_token() -> None:
    exchange, clock = CountingExchange(), FakeClock()
    tokens = token_source(exchange, clock)

    results = run_together(16, tokens.bearer)

    assert exchange.grants == 1
    assert len(set(results)) == 1


def test_concurrent_401s_on_the_same_jwt_renew_it_once() -> None:
    # Given 16 threads that all got a 401 for the same JWT
    exchange, clock = CountingExchange(), FakeClock()
    tokens = token_source(exchange, clock)
    refused = tokens.bearer()

    def after_401() -> str:
        tokens.invalidate(refused)
        return tokens.bearer()

    # When they all invalidate it and ask for a new one
    results = run_together(16, after_401)
    # Then exactly one renewal happened and all use its JWT
    assert exchange.grants == 2
    assert set(results) == {results[0]}
    assert results[0] != refused


def test_invalidating_an_already_replaced_jwt_does_nothing() -> None:
    exchange, clock = CountingExchange(), FakeClock()
    tokens = token_source(exchange, clock)
    old = tokens.bearer()
    tokens.invalidate(old)
    new = tokens.bearer()

    tokens.invalidate(old)

    assert tokens.bearer() == new
    assert exchange.grants == 2


def test_jwt_claims_are_decoded_without_checking_the_signature() -> None:
    assert jwt_claims(make_jwt(exp=5, iat=1))["exp"] == 5
    assert jwt_claims("not.a-jwt") == {}
    assert jwt_claims("a.!!!.c") == {}
