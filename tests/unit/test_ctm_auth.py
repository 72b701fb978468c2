"""TokenSource: obtaining, renewing and invalidating CTM JWTs (CONTRACT section 3)."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from cckm_refresh.ctm.auth import TokenSource, jwt_claims
from cckm_refresh.ctm.credentials import CredentialsCache
from cckm_refresh.ctm.errors import CtmAuthError, CtmTokenExpiredError
from tests.unit.ctm_fakes import (
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


def test_password_grant_carries_domain_and_auth_domain() -> None:
    ctm = FakeCtm()
    secret = {"username": "u", "password": "p", "domain": "child", "auth_domain": "root"}
    fake_client(ctm, json.dumps(secret)).issue_token()

    (sent,) = ctm.to("POST", TOKEN_PATH)
    assert sent.body == {
        "grant_type": "password",
        "username": "u",
        "password": "p",
        "domain": "child",
        "auth_domain": "root",
    }


def test_password_grant_without_domains_sends_none() -> None:
    ctm = FakeCtm()
    fake_client(ctm, '{"username": "u", "password": "p"}').issue_token()
    assert set(ctm.to("POST", TOKEN_PATH)[0].body) == {"grant_type", "username", "password"}


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


def test_static_token_is_used_as_is_until_its_exp() -> None:
    ctm = FakeCtm()
    static = make_jwt(exp=EPOCH + 100)
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    client = fake_client(ctm, static)

    client.refresh_oci_key(KEY_ID)
    ctm.clock.advance(99)
    client.refresh_oci_key(KEY_ID)

    assert [bearer_of(s) for s in ctm.to("POST", REFRESH_PATH)] == [static, static]
    assert ctm.to("POST", TOKEN_PATH) == []


def test_expired_static_token_fails_with_token_expired_before_any_call() -> None:
    ctm = FakeCtm()
    client = fake_client(ctm, json.dumps({"token": make_jwt(exp=EPOCH - 1)}))

    with pytest.raises(CtmTokenExpiredError, match="refresh_token") as caught:
        client.refresh_oci_key(KEY_ID)

    assert caught.value.error_code == "TOKEN_EXPIRED"
    assert caught.value.attempts == 0
    assert ctm.to("POST", REFRESH_PATH) == []


def test_static_token_expiring_between_calls_fails_the_next_call() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    client = fake_client(ctm, make_jwt(exp=EPOCH + 10))
    client.refresh_oci_key(KEY_ID)

    ctm.clock.advance(10)

    with pytest.raises(CtmTokenExpiredError):
        client.refresh_oci_key(KEY_ID)


def test_static_token_refused_by_ctm_is_unauthorized_when_the_secret_has_no_other() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(401, ""))
    loader = SecretLoader(make_jwt(exp=EPOCH + 1000))

    with pytest.raises(CtmAuthError, match="store a refresh_token") as caught:
        fake_client(ctm, loader).refresh_oci_key(KEY_ID)

    assert caught.value.error_code == "UNAUTHORIZED"
    assert loader.forced == 1
    assert len(ctm.to("POST", REFRESH_PATH)) == 1


def test_static_token_refused_by_ctm_is_replaced_by_a_new_one_from_the_secret() -> None:
    ctm = FakeCtm()
    replacement = make_jwt(exp=EPOCH + 1000, jti="new")
    loader = SecretLoader(make_jwt(exp=EPOCH + 1000, jti="old"), after_force=replacement)
    ctm.script("POST", REFRESH_PATH, Reply(401, ""), Reply(200, key_object()))

    fake_client(ctm, loader).refresh_oci_key(KEY_ID)

    assert bearer_of(ctm.to("POST", REFRESH_PATH)[1]) == replacement


class CountingExchange:
    """A token endpoint that counts grants and can hold the first one until released."""

    def __init__(self) -> None:
        self.grants = 0
        self.lock = threading.Lock()

    def __call__(self, grant: Mapping[str, str]) -> Mapping[str, Any]:
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
