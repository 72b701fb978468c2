"""TokenSource: obtaining, renewing and invalidating CTM JWTs (docs/reference.md 3), and what
a 401 costs a call (4.4): the newest JWT, one renewal, never a key for a cause a JWT cures."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest

from cckm_refresh.ctm.auth import TokenSource, jwt_claims
from cckm_refresh.ctm.client import CtmClient
from cckm_refresh.ctm.credentials import CredentialsCache
from cckm_refresh.ctm.errors import (
    CtmAuthError,
    CtmError,
    CtmTokenExpiredError,
    CtmTransientError,
)
from cckm_refresh.ctm.transport import Pacer
from cckm_refresh.ratelimit import TenancyRateLimiter
from cckm_refresh.runtime import Deadline
from devkit.sim.runtime import SimRuntime
from tests.unit.ctm_fakes import (
    EPOCH,
    KEY_ID,
    TOKEN_PATH,
    FakeCtm,
    Reply,
    SecretLoader,
    Sent,
    ctm_runtime,
    error_body,
    fake_client,
    far,
    key_object,
    make_jwt,
    refresh,
)
from tests.unit.manual_runtime import ManualRuntime

REFRESH_PATH = f"/api/v1/cckm/oci/keys/{KEY_ID}/refresh"
UNAUTHORIZED = Reply(401, error_body("NCERRUnauthorizedAccess", "Wrong username or password.", 5))
RUN_KEYS = [str(uuid.UUID(int=n + 1)) for n in range(40)]  # a run of many keys
PASSWORD_SECRET = '{"username": "svc", "password": "S3cret-pass"}'


def refresh_path(key_id: str) -> str:
    return f"/api/v1/cckm/oci/keys/{key_id}/refresh"


def refreshes(ctm: FakeCtm) -> list[Sent]:
    return [s for s in ctm.sent if s.path.endswith("/refresh")]


def sign_in(client: CtmClient, ctm: FakeCtm) -> str:
    return client.issue_token(far(ctm.runtime))


def refresh_many(client: CtmClient, keys: list[str], workers: int = 8) -> list[CtmError]:
    """Refresh ``keys`` from ``workers`` threads, as a run does; return their errors."""

    def one(key_id: str) -> CtmError | None:
        try:
            refresh(client, key_id)
        except CtmError as error:
            return error
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(one, keys))
    return [error for error in outcomes if error is not None]


def ctm_judging_exp_by_its_own_clock(
    ctm: FakeCtm, latency: float = 0.0, ahead: float = 0.0
) -> None:
    """Refreshes succeed while the bearer's exp (whole seconds) has not passed on a clock
    ``ahead`` of the one that issued it (another node of the cluster), else 401 "Token is
    expired by Ns", as CTM answers; each takes ``latency``."""

    def answer(sent: Sent) -> Reply:
        late = ctm.runtime() + ahead - jwt_claims(sent.bearer)["exp"]
        if late > 0:
            message = f"Token is expired by {int(late) or 1}s"
            return Reply(401, error_body("NCERRUnauthorizedAccess", message, 5), takes=latency)
        return Reply(200, key_object(sent.path.split("/")[-2]), takes=latency)

    for key_id in [KEY_ID, *RUN_KEYS]:
        ctm.always("POST", refresh_path(key_id), answer)


# --- signing in ---------------------------------------------------------------------------------


def test_creating_a_client_does_no_io() -> None:
    ctm, loader = FakeCtm(), SecretLoader('{"refresh_token": "rt"}')
    fake_client(ctm, loader)
    assert (loader.calls, ctm.sent) == ([], [])


def test_refresh_token_is_exchanged_for_a_jwt_at_first_use() -> None:
    ctm = FakeCtm()
    client = fake_client(ctm, '{"refresh_token": "rt-1"}')

    jwt = sign_in(client, ctm)

    (sent,) = ctm.to("POST", TOKEN_PATH)
    assert sent.body == {"grant_type": "refresh_token", "refresh_token": "rt-1"}
    assert "Authorization" not in sent.headers
    assert jwt == ctm.jwts_issued[0]


def test_password_grant_asks_for_a_short_lived_refresh_token_and_carries_the_domains() -> None:
    ctm = FakeCtm()
    secret = {"username": "u", "password": "p", "domain": "child", "auth_domain": "root"}
    sign_in(fake_client(ctm, json.dumps(secret)), ctm)

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
    sign_in(fake_client(ctm, '{"username": "u", "password": "p"}'), ctm)
    assert not {"domain", "auth_domain"} & set(ctm.to("POST", TOKEN_PATH)[0].body)


def test_the_last_login_says_what_ctm_stated_and_no_secret() -> None:
    # Given a password login CTM answers with a 300 s JWT and a refresh token for 600 s
    ctm = FakeCtm()

    def issue(sent: Sent) -> Reply:
        answer = ctm.issue(sent).body
        return Reply(200, {**answer, "refresh_token": "rt-x", "refresh_token_expires_in": 600})

    ctm.always("POST", TOKEN_PATH, issue)
    client = fake_client(ctm, PASSWORD_SECRET)
    # When it signs in, Then the login's statement is there for the doctor to show
    sign_in(client, ctm)
    login = client.tokens.last_login
    assert login is not None
    assert (login.auth_method, login.grant_type) == ("password", "password")
    assert (login.duration, login.exp_minus_iat, login.refresh_token_expires_in) == (300, 300, 600)
    assert "S3cret" not in repr(login)
    assert "rt-x" not in repr(login)


# --- renewing ahead of expiry, as CTM states it ---------------------------------------------------


@pytest.mark.parametrize(
    ("lifetime", "answer", "kept", "renewed"),
    [
        pytest.param(300, None, 238, 240, id="300 s (299 sure in whole seconds), 60 s ahead"),
        pytest.param(300, {"jwt": make_jwt(), "duration": 600}, 538, 540, id="duration alone"),
        pytest.param(8, None, 5.0, 5.5, id="8 s, a quarter of it ahead"),
        pytest.param(2, None, 0.7, 0.8, id="2 s, of which 1 s is sure"),
    ],
)
def test_a_jwt_is_kept_until_a_margin_before_the_expiry_ctm_states(
    lifetime: float, answer: dict[str, Any] | None, kept: float, renewed: float
) -> None:
    # Given a JWT whose lifetime CTM states (exp - iat, or duration)
    ctm = FakeCtm(token_lifetime=lifetime)
    if answer is not None:
        ctm.script("POST", TOKEN_PATH, Reply(200, answer))
    client = fake_client(ctm)
    first = sign_in(client, ctm)
    # Then it is reused for most of its sure life, and renewed a margin before that ends
    ctm.runtime.advance(kept)
    assert sign_in(client, ctm) == first
    ctm.runtime.advance(renewed - kept)
    assert sign_in(client, ctm) != first
    assert len(ctm.to("POST", TOKEN_PATH)) == 2


def test_lifetime_is_ctms_statement_so_a_skewed_clock_does_not_force_renewals() -> None:
    # Given CTM's clock an hour behind ours: the JWT's exp is already past by our clock
    ctm = FakeCtm()
    skewed = make_jwt(iat=EPOCH - 3600, exp=EPOCH - 3300)
    ctm.script("POST", TOKEN_PATH, Reply(200, {"jwt": skewed}))
    client = fake_client(ctm)
    # When it is used over the next 200 s, Then it is still the one in use (exp - iat = 300)
    sign_in(client, ctm)
    ctm.runtime.advance(200)
    assert sign_in(client, ctm) == skewed


def test_while_one_thread_renews_ahead_of_expiry_the_others_use_the_valid_jwt() -> None:
    # Given a JWT due for renewal but still valid, and the renewal held up at CTM
    ctm = FakeCtm()
    client = fake_client(ctm)
    first = sign_in(client, ctm)
    ctm.runtime.advance(250)
    arrived, release = threading.Event(), threading.Event()

    def slow_issue(sent: Sent) -> Reply:
        arrived.set()
        release.wait(timeout=10)
        return ctm.issue(sent)

    ctm.script("POST", TOKEN_PATH, slow_issue)
    renewing = threading.Thread(target=sign_in, args=(client, ctm))
    renewing.start()
    assert arrived.wait(timeout=10)
    # When another call needs a JWT meanwhile, Then it gets the valid one without waiting
    assert sign_in(client, ctm) == first
    release.set()
    renewing.join(timeout=10)
    assert sign_in(client, ctm) == ctm.jwts_issued[1]


def test_an_attempt_takes_its_jwt_after_waiting_for_its_slot() -> None:
    # Given CTM refusing expired JWTs, and a pacer whose slot opens after the JWT has expired
    ctm = FakeCtm()
    ctm_judging_exp_by_its_own_clock(ctm)
    client = fake_client(ctm)

    class LateSlot:
        def wait(self, latest_start: Deadline) -> bool:
            ctm.runtime.advance(400)
            return True

        def throttled(self) -> None:
            return None

        def answered(self) -> None:
            return None

    # When a key is refreshed
    response = refresh(client, pacer=LateSlot())
    # Then it went with a JWT obtained after the wait: no 401, one attempt
    assert (response.http_status, response.attempts) == (200, 1)
    (sent,) = refreshes(ctm)
    assert sent.bearer == ctm.jwts_issued[-1] != ctm.jwts_issued[0]


# --- a 401 on a key call ------------------------------------------------------------------------


def test_a_401_to_the_newest_jwt_renews_it_once_and_retries_the_call() -> None:
    ctm = FakeCtm()
    ctm.script("POST", REFRESH_PATH, UNAUTHORIZED, Reply(200, key_object()))
    client = fake_client(ctm)

    response = refresh(client)

    assert (response.http_status, response.attempts) == (200, 2)
    first, second = ctm.to("POST", REFRESH_PATH)
    assert (first.bearer, second.bearer) == tuple(ctm.jwts_issued)


def test_a_401_to_a_jwt_older_than_the_newest_is_resent_with_the_newest_without_a_login() -> None:
    # Given a call whose JWT another call renewed while it was in flight
    ctm = FakeCtm()
    client = fake_client(ctm)

    def renewed_meanwhile(sent: Sent) -> Reply:
        client.tokens.refused(client.tokens.bearer(far(ctm.runtime)))  # another call's 401
        sign_in(client, ctm)
        return UNAUTHORIZED

    ctm.script("POST", REFRESH_PATH, renewed_meanwhile, Reply(200, key_object()))
    # When CTM answers it 401
    response = refresh(client)
    # Then it was sent again with the newest JWT, and nothing renewed it a third time
    assert response.attempts == 2
    assert len(ctm.jwts_issued) == 2
    assert [s.bearer for s in refreshes(ctm)] == ctm.jwts_issued


def test_a_401_to_a_jwt_just_issued_is_transient_never_run_fatal() -> None:
    # Given CTM refusing every JWT on a key call (a CTM node that does not know it yet)
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, UNAUTHORIZED)
    # When the key is refreshed
    with pytest.raises(CtmError) as caught:
        refresh(fake_client(ctm))
    # Then after one renewal and one retry the key stays pending: not CtmAuthError
    assert isinstance(caught.value, CtmTransientError)
    assert not isinstance(caught.value, CtmAuthError)
    assert (caught.value.http_status, caught.value.attempts) == (401, 2)
    assert caught.value.error_code == "NCERRUnauthorizedAccess"
    assert len(ctm.to("POST", TOKEN_PATH)) == 2


def test_a_401_without_code_desc_is_unauthorized() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(401, ""))
    with pytest.raises(CtmTransientError) as caught:
        refresh(fake_client(ctm))
    assert caught.value.error_code == "UNAUTHORIZED"


def test_the_secret_is_fetched_again_after_a_401() -> None:
    ctm, loader = FakeCtm(), SecretLoader('{"refresh_token": "rt"}')
    ctm.script("POST", REFRESH_PATH, UNAUTHORIZED, Reply(200, key_object()))
    refresh(fake_client(ctm, loader))
    assert loader.forced == 1


class SimClock(SimRuntime):
    """The simulation's deterministic threads and virtual time, as the fake CTM's clock: an
    answer that takes time (``advance``) sleeps only the thread waiting for it."""

    def __call__(self) -> float:
        return self.time()

    def advance(self, seconds: float) -> None:
        self.sleep(seconds)


def refresh_in_simulation(
    client: CtmClient, keys: list[str], workers: int, pacer_of: Callable[[str], Pacer]
) -> list[CtmError]:
    """``refresh_many`` on the client's ``SimClock``: the same ``workers`` threads, taking
    turns in a seeded order, so an interleaving that fails fails on every machine."""
    runtime = client.transport.runtime
    assert isinstance(runtime, SimClock)
    pending = iter(keys)
    errors: list[CtmError] = []

    def worker() -> None:
        for key_id in pending:
            try:
                refresh(client, key_id, pacer=pacer_of(key_id))
            except CtmError as error:
                errors.append(error)

    def main() -> None:
        tasks = [runtime.start(worker, f"worker-{n}") for n in range(workers)]
        for task in tasks:
            task.join()

    runtime.run(main)
    return errors


def two_second_jwts(seed: int, judged_ahead: float) -> tuple[FakeCtm, list[CtmError]]:
    """JWTs CTM states to live 2 s (exp in whole seconds, judged on a clock ``judged_ahead``
    of the one that issued them), password credentials, calls taking 0.1 s, and 40 keys over
    two tenancies paced at 5 calls/s, refreshed from 8 threads: JWTs expire mid-run, again
    and again. Returns the fake CTM and the calls' errors."""
    ctm = FakeCtm(runtime=cast(ManualRuntime, SimClock(seed, epoch=EPOCH)), token_lifetime=2)
    ctm_judging_exp_by_its_own_clock(ctm, latency=0.1, ahead=judged_ahead)
    client = fake_client(ctm, PASSWORD_SECRET)
    limiter = TenancyRateLimiter(5.0, runtime=ctm.runtime)

    def pacer_of(key_id: str) -> Pacer:
        return limiter.pacer("tenancy-a" if int(key_id[-1], 16) % 2 else "tenancy-b")

    return ctm, refresh_in_simulation(client, RUN_KEYS, workers=8, pacer_of=pacer_of)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("judged_ahead", [0.0, 0.5])
def test_jwts_lasting_two_seconds_are_renewed_before_they_die(
    judged_ahead: float, seed: int
) -> None:
    # Given 2 s JWTs judged on CTM's clock, or on a node's 0.5 s ahead
    # When 40 keys are refreshed from 8 threads
    ctm, errors = two_second_jwts(seed, judged_ahead)
    # Then every key was refreshed by one call, with JWTs renewed before any died
    assert errors == []
    assert len(refreshes(ctm)) == len(RUN_KEYS)
    assert len(ctm.jwts_issued) >= 3


@pytest.mark.parametrize("seed", range(3))
def test_jwts_dying_before_their_renewal_cost_a_re_send_never_a_failed_key(seed: int) -> None:
    # Given 2 s JWTs judged on a node 0.9 s ahead: many die before we would renew them
    # When 40 keys are refreshed from 8 threads
    ctm, errors = two_second_jwts(seed, 0.9)
    # Then CTM answered 401s, each cured by the newest JWT or a renewal; a call whose renewed
    # JWT died too while it waited for its slot is transient (its key stays pending for the
    # run's next pass), never FAILED
    assert len(refreshes(ctm)) > len(RUN_KEYS)
    assert all(type(error) is CtmTransientError for error in errors)
    assert len(errors) < len(RUN_KEYS) // 4


# --- credentials CTM refuses --------------------------------------------------------------------

REFUSALS = {
    400: Reply(400, error_body("NCERRInvalidParamValue", "Invalid or expired refresh token.", 3)),
    401: UNAUTHORIZED,
    403: Reply(403, error_body("NCERRPermissionDenied", "User account is locked.", 6)),
}


def ctm_with_keys() -> FakeCtm:
    ctm = FakeCtm()
    for key_id in RUN_KEYS:
        ctm.always("POST", refresh_path(key_id), Reply(200, key_object(key_id)))
    return ctm


def test_token_endpoint_401_refetches_the_secret_and_retries_with_the_new_one() -> None:
    ctm = FakeCtm()
    loader = SecretLoader('{"refresh_token": "old"}', after_force='{"refresh_token": "new"}')
    ctm.script("POST", TOKEN_PATH, UNAUTHORIZED)

    jwt = sign_in(fake_client(ctm, loader), ctm)

    assert [s.body["refresh_token"] for s in ctm.to("POST", TOKEN_PATH)] == ["old", "new"]
    assert jwt == ctm.jwts_issued[0]


def test_token_endpoint_401_with_an_unchanged_secret_fails_without_a_second_login() -> None:
    ctm, loader = FakeCtm(), SecretLoader('{"username": "u", "password": "wrong"}')
    ctm.always("POST", TOKEN_PATH, UNAUTHORIZED)

    with pytest.raises(CtmAuthError, match="CTM refused the secret's password") as caught:
        sign_in(fake_client(ctm, loader), ctm)

    assert caught.value.error_code == "NCERRUnauthorizedAccess"
    assert (loader.forced, len(ctm.to("POST", TOKEN_PATH))) == (1, 1)


def test_refused_credentials_are_not_offered_again_for_a_minute() -> None:
    ctm = FakeCtm()
    ctm.script("POST", TOKEN_PATH, UNAUTHORIZED)
    client = fake_client(ctm, PASSWORD_SECRET)
    with pytest.raises(CtmAuthError):
        sign_in(client, ctm)
    with pytest.raises(CtmAuthError):
        sign_in(client, ctm)
    assert len(ctm.to("POST", TOKEN_PATH)) == 1
    ctm.runtime.advance(61)  # a CTM hiccup must not poison a warm container
    assert sign_in(client, ctm) == ctm.jwts_issued[0]


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
    # Then one login was attempted (no account lock-out), the secret read again once, and
    # every key failed with the run-fatal CtmAuthError
    assert (len(ctm.to("POST", TOKEN_PATH)), loader.forced, refreshes(ctm)) == (1, 1, [])
    assert len(errors) == len(RUN_KEYS)
    assert all(isinstance(e, CtmAuthError) for e in errors)
    assert {e.http_status for e in errors} == {status}


def test_a_refused_password_is_offered_again_once_the_secret_changes() -> None:
    ctm = ctm_with_keys()
    ctm.script("POST", TOKEN_PATH, REFUSALS[403])
    loader = SecretLoader(PASSWORD_SECRET)
    client = fake_client(ctm, loader)
    with pytest.raises(CtmAuthError):
        sign_in(client, ctm)
    loader.value = '{"username": "svc", "password": "N3w-pass"}'
    refresh(client, RUN_KEYS[0])
    assert [s.body["password"] for s in ctm.to("POST", TOKEN_PATH)] == ["S3cret-pass", "N3w-pass"]


def test_a_token_endpoint_404_is_not_taken_for_refused_credentials() -> None:
    ctm = FakeCtm()
    ctm.always("POST", TOKEN_PATH, Reply(404, error_body("NCERRResourceNotFound", "no route")))
    with pytest.raises(CtmError) as caught:
        sign_in(fake_client(ctm, PASSWORD_SECRET), ctm)
    assert not isinstance(caught.value, CtmAuthError)


# --- the secret's own JWT: CTM's clock decides -------------------------------------------------


def test_static_token_is_used_as_is_while_ctm_accepts_it() -> None:
    ctm = FakeCtm()
    static = make_jwt(exp=EPOCH + 100)
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    client = fake_client(ctm, static)

    refresh(client)
    ctm.runtime.advance(99)
    refresh(client)

    assert [s.bearer for s in ctm.to("POST", REFRESH_PATH)] == [static, static]
    assert ctm.to("POST", TOKEN_PATH) == []


def test_a_static_token_is_sent_even_when_our_clock_says_it_has_expired() -> None:
    # Given a token whose exp has passed by our clock, and a CTM that accepts it
    ctm = FakeCtm()
    static = make_jwt(exp=EPOCH - 600, iat=EPOCH - 900)
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    client = fake_client(ctm, json.dumps({"token": static}))
    # When a key is refreshed, Then the token goes to CTM
    assert refresh(client).http_status == 200
    assert ctm.to("POST", REFRESH_PATH)[0].bearer == static


def test_a_static_token_ctm_refuses_fails_every_key_as_token_expired_after_one_call() -> None:
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
    assert (loader.forced, ctm.to("POST", TOKEN_PATH)) == (1, [])


def test_static_token_refused_by_ctm_is_replaced_by_a_new_one_from_the_secret() -> None:
    ctm = FakeCtm()
    replacement = make_jwt(exp=EPOCH + 1000, jti="new")
    loader = SecretLoader(make_jwt(exp=EPOCH + 1000, jti="old"), after_force=replacement)
    ctm.script("POST", REFRESH_PATH, Reply(401, ""), Reply(200, key_object()))

    refresh(fake_client(ctm, loader))

    assert ctm.to("POST", REFRESH_PATH)[1].bearer == replacement


# --- password logins: renewals use the refresh token CTM returned -----------------------------


class SessionIssuer:
    """CTM's token endpoint: every password grant mints a refresh token, a refresh grant
    answers with the same one; ``refuse`` lists refresh tokens CTM no longer accepts."""

    def __init__(self, ctm: FakeCtm) -> None:
        self.ctm = ctm
        self.minted: list[str] = []
        self.refuse: dict[str, Reply] = {}

    def __call__(self, sent: Sent) -> Reply:
        grant = sent.body
        if grant["grant_type"] == "refresh_token":
            refused = self.refuse.get(grant["refresh_token"])
            if refused is not None:
                return refused
            refresh_token = grant["refresh_token"]
        else:
            refresh_token = f"minted-rt-{len(self.minted)}"
            self.minted.append(refresh_token)
        return Reply(200, {**self.ctm.issue(sent).body, "refresh_token": refresh_token})


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
    ctm, _ = session_ctm()
    client = fake_client(ctm, PASSWORD_SECRET)
    for _ in range(4):
        sign_in(client, ctm)
        ctm.runtime.advance(241)
    assert grants(ctm) == ["password", "minted-rt-0", "minted-rt-0", "minted-rt-0"]
    assert set(ctm.to("POST", TOKEN_PATH)[1].body) == {"grant_type", "refresh_token"}


@pytest.mark.parametrize("status", sorted(REFUSALS))
def test_a_refused_login_refresh_token_falls_back_to_one_password_login(status: int) -> None:
    ctm, issuer = session_ctm()
    client = fake_client(ctm, PASSWORD_SECRET)
    sign_in(client, ctm)
    issuer.refuse["minted-rt-0"] = REFUSALS[status]
    ctm.runtime.advance(241)

    jwt = sign_in(client, ctm)
    ctm.runtime.advance(241)
    sign_in(client, ctm)

    assert grants(ctm) == ["password", "minted-rt-0", "password", "minted-rt-1"]
    assert jwt == ctm.jwts_issued[1]


def test_a_401_on_a_call_is_answered_by_renewing_with_the_login_refresh_token() -> None:
    ctm, _ = session_ctm()
    ctm.script("POST", REFRESH_PATH, UNAUTHORIZED, Reply(200, key_object()))
    assert refresh(fake_client(ctm, PASSWORD_SECRET)).attempts == 2
    assert grants(ctm) == ["password", "minted-rt-0"]


def test_a_transient_failure_of_a_renewal_keeps_the_login_refresh_token() -> None:
    ctm, _ = session_ctm()
    client = fake_client(ctm, PASSWORD_SECRET)
    sign_in(client, ctm)
    ctm.script("POST", TOKEN_PATH, Reply(503, error_body("NCERRServiceUnavailable")))
    ctm.runtime.advance(300)  # expired: the renewal must succeed for the call to go on
    sign_in(client, ctm)
    assert grants(ctm) == ["password", "minted-rt-0", "minted-rt-0"]


def test_a_login_refresh_token_unused_for_ten_minutes_is_not_tried() -> None:
    ctm, _ = session_ctm()
    client = fake_client(ctm, PASSWORD_SECRET)
    sign_in(client, ctm)
    ctm.runtime.advance(600)  # a frozen Lambda container: CTM revoked it
    sign_in(client, ctm)
    assert grants(ctm) == ["password", "password"]


def test_a_login_refresh_token_is_replaced_before_its_hour_ends() -> None:
    ctm, _ = session_ctm()
    client = fake_client(ctm, PASSWORD_SECRET)
    for _ in range(17):
        sign_in(client, ctm)
        ctm.runtime.advance(241)
    # dropped before CTM's 60-minute lifetime ended (at 3615 s), for one new password login
    assert grants(ctm) == ["password", *["minted-rt-0"] * 14, "password", "minted-rt-1"]


def test_a_changed_secret_ends_the_session_with_a_login_of_the_new_credentials() -> None:
    ctm, _ = session_ctm()
    loader = SecretLoader(PASSWORD_SECRET)
    client = fake_client(ctm, loader)
    sign_in(client, ctm)
    loader.value = '{"username": "svc2", "password": "0ther-pass"}'
    ctm.runtime.advance(241)

    sign_in(client, ctm)

    assert grants(ctm) == ["password", "password"]
    assert ctm.to("POST", TOKEN_PATH)[1].body["username"] == "svc2"


# --- one renewal at a time ---------------------------------------------------------------------


class CountingExchange:
    """A token endpoint that counts grants."""

    def __init__(self) -> None:
        self.grants = 0
        self.lock = threading.Lock()

    def __call__(self, grant: Any, deadline: Deadline) -> dict[str, Any]:
        with self.lock:
            self.grants += 1
            return {"jwt": make_jwt(exp=EPOCH + 300, iat=EPOCH, n=self.grants)}


def token_source(exchange: CountingExchange, runtime: ManualRuntime) -> TokenSource:
    cache = CredentialsCache(SecretLoader('{"refresh_token": "rt"}'))
    return TokenSource(cache, exchange, runtime=runtime)


def run_together(count: int, action: Callable[[], Any]) -> list[Any]:
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
    exchange, runtime = CountingExchange(), ctm_runtime()
    tokens = token_source(exchange, runtime)

    results = run_together(16, lambda: tokens.bearer(far(runtime)).jwt)

    assert exchange.grants == 1
    assert len(set(results)) == 1


def test_concurrent_401s_on_the_same_jwt_renew_it_once() -> None:
    exchange, runtime = CountingExchange(), ctm_runtime()
    tokens = token_source(exchange, runtime)
    refused = tokens.bearer(far(runtime))

    def after_401() -> str:
        tokens.refused(refused)
        return tokens.bearer(far(runtime)).jwt

    results = run_together(16, after_401)

    assert exchange.grants == 2
    assert set(results) == {results[0]}
    assert results[0] != refused.jwt


def test_a_401_to_an_already_replaced_jwt_changes_nothing() -> None:
    exchange, runtime = CountingExchange(), ctm_runtime()
    tokens = token_source(exchange, runtime)
    old = tokens.bearer(far(runtime))
    tokens.refused(old)
    new = tokens.bearer(far(runtime))

    tokens.refused(old)

    assert tokens.bearer(far(runtime)) == new
    assert (exchange.grants, new.generation) == (2, old.generation + 1)


def test_jwt_claims_are_decoded_without_checking_the_signature() -> None:
    assert jwt_claims(make_jwt(exp=5, iat=1))["exp"] == 5
    assert jwt_claims("not.a-jwt") == {}
    assert jwt_claims("a.!!!.c") == {}
