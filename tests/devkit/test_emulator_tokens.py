"""The emulator's token authority: CTM-like JWTs that really expire, revocable refresh tokens."""

from __future__ import annotations

import pytest

from devkit.ctm_emulator.tokens import RefreshTokenLimits, TokenAuthority, TokenRejectedError
from tests.fixtures.ctm import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_800_000_000.0)


@pytest.fixture
def authority(clock: ManualClock) -> TokenAuthority:
    return TokenAuthority({"svc-key-refresh": "password"}, clock)


def test_a_jwt_is_valid_until_its_exp_and_expired_one_second_later(
    authority: TokenAuthority, clock: ManualClock
) -> None:
    jwt = authority.mint_jwt("svc-key-refresh", 300)
    clock.advance(300)
    assert authority.verify_jwt(jwt)["preferred_username"] == "svc-key-refresh"

    clock.advance(1)
    with pytest.raises(
        TokenRejectedError, match=r"^Bearer token malformed: Token is expired by 1s$"
    ):
        authority.verify_jwt(jwt)


@pytest.mark.parametrize(
    ("late", "said"),
    [(0.25, "1s"), (1, "1s"), (50, "50s"), (100, "1m40s"), (3600, "1h0m0s"), (3605, "1h0m5s")],
)
def test_an_expired_jwt_says_by_how_much_in_whole_seconds_as_go_writes_a_duration(
    authority: TokenAuthority, clock: ManualClock, late: float, said: str
) -> None:
    jwt = authority.mint_jwt("svc-key-refresh", 300)
    clock.advance(300 + late)
    with pytest.raises(TokenRejectedError) as rejected:
        authority.verify_jwt(jwt)
    assert str(rejected.value) == f"Bearer token malformed: Token is expired by {said}"


def test_a_jwt_from_another_emulator_is_refused(clock: ManualClock) -> None:
    jwt = TokenAuthority({"u": "p"}, clock).mint_jwt("u", 300)
    with pytest.raises(TokenRejectedError, match="signature is invalid"):
        TokenAuthority({"u": "p"}, clock).verify_jwt(jwt)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.??.**"])
def test_a_malformed_jwt_is_refused_without_echoing_it(
    authority: TokenAuthority, token: str
) -> None:
    with pytest.raises(TokenRejectedError) as caught:
        authority.verify_jwt(token)
    assert str(caught.value).startswith("Bearer token malformed")
    assert token not in str(caught.value) or token == ""


def test_a_refresh_token_keeps_working_until_revoked(authority: TokenAuthority) -> None:
    token, token_id = authority.issue_refresh_token("svc-key-refresh")
    assert authority.redeem_refresh_token(token, renew=False) == (
        "svc-key-refresh",
        token,
        token_id,
    )

    authority.revoke_refresh_tokens()

    assert authority.redeem_refresh_token(token, renew=False) is None


def test_renewing_a_refresh_token_replaces_it(authority: TokenAuthority) -> None:
    old, _ = authority.issue_refresh_token("svc-key-refresh")

    redeemed = authority.redeem_refresh_token(old, renew=True)

    assert redeemed is not None
    assert redeemed[1] != old
    assert authority.redeem_refresh_token(old, renew=False) is None
    assert authority.redeem_refresh_token(redeemed[1], renew=False) is not None


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("svc-key-refresh", "wrong"),
        ("nobody", "password"),
        (None, "password"),
        ("svc-key-refresh", 1),
    ],
)
def test_only_the_right_password_of_a_known_user_is_accepted(
    authority: TokenAuthority, username: object, password: object
) -> None:
    assert not authority.check_password(username, password)
    assert authority.check_password("svc-key-refresh", "password")


# --- refresh token limits, as a password grant may ask for them --------------------------------

USER = "svc-key-refresh"


def test_a_refresh_token_without_limits_lives_for_ever_like_ctms(
    authority: TokenAuthority, clock: ManualClock
) -> None:
    token, _ = authority.issue_refresh_token(USER)
    clock.advance(365 * 86400)
    assert authority.redeem_refresh_token(token, renew=False) is not None
    assert authority.live_refresh_tokens(USER) == 1


def test_a_refresh_token_ends_with_its_lifetime_even_in_use(
    authority: TokenAuthority, clock: ManualClock
) -> None:
    token, _ = authority.issue_refresh_token(USER, RefreshTokenLimits(lifetime=3600))
    for _ in range(11):
        clock.advance(300)
        assert authority.redeem_refresh_token(token, renew=False) is not None
    clock.advance(300)  # 3600 s after it was issued
    assert authority.redeem_refresh_token(token, renew=False) is None
    assert authority.live_refresh_tokens(USER) == 0


def test_a_refresh_token_unused_for_its_idle_limit_is_revoked(
    authority: TokenAuthority, clock: ManualClock
) -> None:
    # Given a token revoked after 600 s unused, redeemed at 599 s
    token, _ = authority.issue_refresh_token(USER, RefreshTokenLimits(revoke_unused_in=600))
    clock.advance(599)
    assert authority.redeem_refresh_token(token, renew=False) is not None
    # Then the idle clock restarted there: it lives until 600 s after that use, not longer
    clock.advance(599)
    assert authority.live_refresh_tokens(USER) == 1
    clock.advance(1)
    assert authority.live_refresh_tokens(USER) == 0
    assert authority.redeem_refresh_token(token, renew=False) is None


def test_expires_in_reports_the_nearer_limit_in_seconds(
    authority: TokenAuthority, clock: ManualClock
) -> None:
    limits = RefreshTokenLimits(lifetime=3600, revoke_unused_in=600)
    token, _ = authority.issue_refresh_token(USER, limits)
    assert authority.refresh_token_expires_in(token) == 600
    for _ in range(11):  # in use every 300 s, until 3300 s
        clock.advance(300)
        authority.redeem_refresh_token(token, renew=False)
    assert authority.refresh_token_expires_in(token) == 300


def test_live_refresh_tokens_are_counted_per_user(clock: ManualClock) -> None:
    authority = TokenAuthority({"a": "p", "b": "p"}, clock)
    for _ in range(3):
        authority.issue_refresh_token("a")
    authority.issue_refresh_token("b", RefreshTokenLimits(lifetime=60))
    clock.advance(60)
    assert (authority.live_refresh_tokens("a"), authority.live_refresh_tokens("b")) == (3, 0)
    assert authority.live_refresh_tokens() == 3


def test_a_renewed_refresh_token_keeps_its_limits(
    authority: TokenAuthority, clock: ManualClock
) -> None:
    old, _ = authority.issue_refresh_token(USER, RefreshTokenLimits(revoke_unused_in=600))
    redeemed = authority.redeem_refresh_token(old, renew=True)
    assert redeemed is not None
    clock.advance(600)
    assert authority.redeem_refresh_token(redeemed[1], renew=False) is None
