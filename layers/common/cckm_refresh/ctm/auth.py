"""Bearer JWTs for CTM (CONTRACT section 3), shared safely between threads.

``TokenSource`` exchanges the secret's refresh token or password at
``POST /api/v1/auth/tokens`` and renews the JWT before it expires and once after CTM refuses
it (``invalidate``). A password is sent once: the login asks CTM for a short-lived refresh
token, and renewals use that (``grant_type=refresh_token``) until CTM refuses it, when one
password login starts afresh. A bare ``token`` is sent as it is; CTM, not our clock, says
when it has expired. One lock: while one thread renews, the others wait and reuse its result,
including its failure.

CTM answering 400, 401 or 403 to the secret's password or refresh token means the same thing:
those credentials are refused. The secret is read again, bypassing its cache, once; a
credential CTM refused is not sent again until the secret changes or ``REFUSAL_MEMORY`` has
passed: retrying a wrong password would only count towards locking the account.

Every credential and JWT that passes through here is registered with
``errors.register_secret``, so CTM quoting one back in an error message never shows it.

Over 300 lines on purpose: every way to hold a JWT (refresh token, password and the refresh
token it mints, a bare JWT) and when each is renewed, refused or given up, which must agree.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cckm_refresh.ctm.credentials import JWT_SHAPE, AuthMethod, CredentialsCache, CtmCredentials
from cckm_refresh.ctm.errors import (
    CtmAuthError,
    CtmCredentialsError,
    CtmError,
    CtmPermanentError,
    CtmTokenExpiredError,
    register_secret,
)
from cckm_refresh.ctm.transport import Transport
from cckm_refresh.observability import logger
from cckm_refresh.runtime import Condition

TOKEN_PATH = "/api/v1/auth/tokens"  # noqa: S105 - a path, not a secret
RENEW_MARGIN = 60.0  # renew when less than this remains (Terraform's provider does the same)
DEFAULT_LIFETIME = 300.0  # CTM JWTs live 5 minutes when neither exp nor duration says otherwise
# How long credentials CTM refused are not offered again (unless the secret changes). Long
# enough that a batch of keys makes one failed login, not one per key; short enough that a
# CTM hiccup refusing a login does not poison a warm Lambda container for its whole life.
REFUSAL_MEMORY = 60.0
# What the token endpoint answers when it refuses the credentials it was sent: 401 for a
# wrong password, but also 400 (a refresh token it does not know, a malformed grant) and 403
# (a disabled or locked account). All alike: never retried, never sent again at once.
REFUSED_STATUSES = frozenset({400, 401, 403})

# The refresh token each password login asks CTM for. CTM takes both values in minutes (its
# web console asks for refresh_token_revoke_unused_in=30 for its documented 30-minute idle
# timeout; answers give refresh_token_expires_in in seconds). By default CTM's refresh tokens
# never expire, and every password login mints one: a Lambda that logged in at every renewal
# left one live token per renewal, for ever (on CTM 2.7 piled-up refresh tokens made servers
# unresponsive). So:
# - revoked when unused for 10 minutes: a busy container renews its JWT every 4 minutes
#   (300 s JWTs, 60 s margin), well inside 10 even if one renewal is late; a container that
#   Lambda freezes or discards leaves a token that CTM drops 10 minutes later;
# - at most 60 minutes old: even a token in constant use goes, and a container busy for
#   longer logs in with the password once an hour.
# Together: at most about two live refresh tokens per container that ran in the last 10 min.
SESSION_TOKEN_LIFETIME_MINUTES = 60
SESSION_TOKEN_UNUSED_MINUTES = 10
# Stop using the session's refresh token this long before CTM would drop it (our monotonic
# clock and CTM's differ by the network time of the login, and our renewals are not exact).
SESSION_TOKEN_MARGIN = 60.0

Grant = Mapping[str, str | int]
TokenExchange = Callable[[Grant], Mapping[str, Any]]
"""Posts a grant to the token endpoint and returns its JSON answer; raises CtmError."""


def jwt_claims(jwt: str) -> dict[str, Any]:
    """The JWT's payload claims, without checking the signature ({} when undecodable)."""
    parts = jwt.split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1]
    try:
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        claims = json.loads(decoded)
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class TokenEndpoint:
    """``POST /api/v1/auth/tokens`` through the transport (retried like any call, no bearer)."""

    def __init__(self, base_url: str, transport: Transport) -> None:
        self._url = base_url.rstrip("/") + TOKEN_PATH
        self._transport = transport

    def __call__(self, grant: Grant) -> Mapping[str, Any]:
        return self._transport.call("POST", self._url, json_body=grant).body


@dataclass(frozen=True, repr=False)
class _HeldToken:
    jwt: str
    renew_at: float | None = None  # monotonic time, for tokens we obtained
    static: bool = False  # the secret's own token: used until CTM refuses it


@dataclass(frozen=True, repr=False)
class _Session:
    """The refresh token a password login returned, and the credentials that logged in."""

    credentials: CtmCredentials
    refresh_token: str
    usable_until: float  # monotonic: before CTM's lifetime ends, less the margin
    unused_limit: float  # seconds CTM keeps it unused, less the margin
    last_used: float  # monotonic


class TokenSource:
    """A valid bearer JWT on demand; thread-safe."""

    def __init__(
        self,
        credentials: CredentialsCache,
        exchange: TokenExchange,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        renew_margin: float = RENEW_MARGIN,
        lock: Condition | None = None,
    ) -> None:
        self._credentials = credentials
        self._exchange = exchange
        self._clock = clock
        self._wall_clock = wall_clock
        self._renew_margin = renew_margin
        # Held while a token is fetched: a runtime's condition where threads are simulated.
        self._lock: Condition | threading.Lock = lock or threading.Lock()
        self._held: _HeldToken | None = None
        self._renewals = 0  # renewals finished; a waiter sees one finished while it waited
        self._failure: CtmError | None = None  # the last renewal's failure, for its waiters
        self._force_secret = False  # read the secret past its cache at the next renewal
        self._rejected_jwt: str | None = None  # a static token CTM answered 401 to
        self._refused: tuple[CtmCredentials, CtmAuthError, float] | None = None
        self._session: _Session | None = None
        self.tokens_issued = 0
        self.password_logins = 0

    def __repr__(self) -> str:
        return (
            f"TokenSource(tokens_issued={self.tokens_issued}, "
            f"password_logins={self.password_logins})"
        )

    def bearer(self) -> str:
        """A JWT valid for at least the renewal margin (the secret's own token: as it is).

        Raises CtmAuthError (CTM refused the credentials), CtmTokenExpiredError
        (``TOKEN_EXPIRED``: CTM refused the secret's own token), CtmCredentialsError
        (unusable secret) or a transport CtmError.
        """
        seen = self._renewals
        with self._lock:
            held = self._held
            if held is not None and self._usable(held):
                return held.jwt
            if self._renewals != seen and self._failure is not None:
                # We waited while another thread tried and failed: share its answer.
                raise _copy(self._failure)
            try:
                held = self._obtain()
            except CtmError as error:
                self._held, self._failure = None, error
                raise
            finally:
                self._renewals += 1
            self._held, self._failure = held, None
            return held.jwt

    def invalidate(self, jwt: str) -> None:
        """CTM answered 401 to ``jwt``: renew at the next ``bearer()`` unless already done."""
        with self._lock:
            if self._held is None or self._held.jwt != jwt:
                return  # another thread already renewed it
            if self._held.static:
                self._rejected_jwt = jwt
            self._held = None
            self._force_secret = True

    def _usable(self, held: _HeldToken) -> bool:
        if held.static:
            # Judged by CTM alone: a Lambda clock minutes off must not expire a valid token.
            return True
        return held.renew_at is not None and self._clock() < held.renew_at

    def _obtain(self) -> _HeldToken:
        force, self._force_secret = self._force_secret, False
        credentials = self._credentials.get(force=force)
        if self._refused is not None:
            refused, failure, when = self._refused
            if credentials == refused and self._clock() - when < REFUSAL_MEMORY:
                raise _copy(failure)
        renewed = self._renew_session(credentials)
        if renewed is not None:
            return renewed
        try:
            return self._login(credentials)
        except CtmTokenExpiredError:
            raise  # the secret was just read again: its token is the one CTM refused
        except CtmAuthError as error:
            failed, failure = credentials, error
            if not force:
                fresh = self._credentials.get(force=True)
                if fresh != credentials:
                    try:
                        return self._login(fresh)
                    except CtmAuthError as second:
                        failed, failure = fresh, second
            self._refused = (failed, failure, self._clock())
            raise failure from None

    def _renew_session(self, credentials: CtmCredentials) -> _HeldToken | None:
        """A JWT from the last password login's refresh token; None when there is none to use.

        CTM refusing that refresh token (expired, revoked) only ends the session: the caller
        then logs in with the password once. Other failures (CTM unreachable) are raised.
        """
        session = self._session
        if session is None:
            return None
        now = self._clock()
        if (
            session.credentials != credentials  # the secret changed: log in with the new one
            or now >= session.usable_until
            or now - session.last_used >= session.unused_limit
        ):
            self._session = None
            return None
        grant = {"grant_type": "refresh_token", "refresh_token": session.refresh_token}
        try:
            held, answer = self._grant(grant, "refresh token of the last password login")
        except CtmAuthError:
            self._session = None
            logger.info("CTM refused the login's refresh token; logging in with the password")
            return None
        fresh = answer.get("refresh_token")
        if isinstance(fresh, str) and fresh and fresh != session.refresh_token:
            # CTM handed out a new refresh token: the old one is gone, its clock starts again.
            self._start_session(credentials, fresh, now)
        else:
            self._session = _Session(
                credentials,
                session.refresh_token,
                session.usable_until,
                session.unused_limit,
                last_used=now,
            )
        self._issued_log(held, "password", "refresh_token", now)
        return held

    def _login(self, credentials: CtmCredentials) -> _HeldToken:
        """A JWT from the secret itself: its refresh token, its password, or its token."""
        method = credentials.method
        if method is AuthMethod.STATIC_TOKEN:
            return self._static(credentials)
        grant = self._login_grant(credentials)
        started = self._clock()
        held, answer = self._grant(grant, f"secret's {method.value}")
        if method is AuthMethod.PASSWORD:
            minted = answer.get("refresh_token")
            if isinstance(minted, str) and minted:
                self._start_session(credentials, minted, started)
        self._issued_log(held, method.value, str(grant["grant_type"]), started)
        return held

    def _login_grant(self, credentials: CtmCredentials) -> Grant:
        """The grant of the secret's refresh token or, counted, of its password."""
        if credentials.method is AuthMethod.REFRESH_TOKEN and credentials.refresh_token is not None:
            return {"grant_type": "refresh_token", "refresh_token": credentials.refresh_token}
        if credentials.username is not None and credentials.password is not None:
            grant = _password_grant(credentials.username, credentials.password, credentials)
            self.password_logins += 1
            return grant
        # CtmCredentials guarantees one method's fields: cannot happen
        raise CtmCredentialsError(
            "the CTM secret holds no usable credentials", error_code="UNAUTHORIZED"
        )

    def _grant(self, grant: Grant, what: str) -> tuple[_HeldToken, Mapping[str, Any]]:
        """Exchange ``grant``; CTM refusing it (400, 401, 403) raises CtmAuthError."""
        started = self._clock()
        try:
            answer = self._exchange(grant)
        except CtmPermanentError as error:
            if error.http_status not in REFUSED_STATUSES:
                raise
            raise CtmAuthError(
                f"CTM refused the {what}: {error.message}",
                error_code=error.error_code,
                http_status=error.http_status,
                attempts=error.attempts,
            ) from None
        held = self._issued(answer, started)
        self.tokens_issued += 1
        return held, answer

    def _start_session(self, credentials: CtmCredentials, refresh_token: str, now: float) -> None:
        register_secret(refresh_token)
        self._session = _Session(
            credentials,
            refresh_token,
            usable_until=now + SESSION_TOKEN_LIFETIME_MINUTES * 60 - SESSION_TOKEN_MARGIN,
            unused_limit=SESSION_TOKEN_UNUSED_MINUTES * 60 - SESSION_TOKEN_MARGIN,
            last_used=now,
        )

    def _issued_log(self, held: _HeldToken, method: str, grant_type: str, started: float) -> None:
        extra: dict[str, object] = {"auth_method": method, "grant_type": grant_type}
        if held.renew_at is not None:
            extra["renew_in_s"] = round(held.renew_at - started, 1)
        logger.info("CTM token issued", extra=extra)

    def _issued(self, answer: Mapping[str, Any], started: float) -> _HeldToken:
        jwt = answer.get("jwt")
        if not isinstance(jwt, str) or not JWT_SHAPE.fullmatch(jwt):
            raise CtmPermanentError(
                f"{TOKEN_PATH} answered without a usable jwt", error_code="UNAUTHORIZED"
            )
        register_secret(jwt)
        lifetime = self._lifetime(answer, jwt_claims(jwt))
        # A token living less than the margin would otherwise be renewed for every call.
        margin = min(self._renew_margin, lifetime / 4)
        return _HeldToken(jwt=jwt, renew_at=started + lifetime - margin)

    def _lifetime(self, answer: Mapping[str, Any], claims: Mapping[str, Any]) -> float:
        """The JWT's lifetime in seconds: the shortest the answer and the claims give."""
        exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
        lifetimes = []
        duration = _number(answer.get("duration"))
        if duration is not None and duration > 0:
            lifetimes.append(duration)
        # exp - iat is measured on CTM's clock alone, so a skewed Lambda clock cannot make
        # every token look expired; exp against our clock is the last resort.
        if exp is not None and iat is not None and exp > iat:
            lifetimes.append(exp - iat)
        elif exp is not None and not lifetimes:
            lifetimes.append(max(exp - self._wall_clock(), 0.0))
        return min(lifetimes) if lifetimes else DEFAULT_LIFETIME

    def _static(self, credentials: CtmCredentials) -> _HeldToken:
        token = credentials.token
        if token is None:  # CtmCredentials guarantees one method's fields: cannot happen
            raise CtmCredentialsError(
                "the CTM secret holds no usable credentials", error_code="UNAUTHORIZED"
            )
        if token == self._rejected_jwt:
            raise CtmTokenExpiredError(
                "CTM refused the JWT stored in the CTM secret (expired or revoked); store a "
                "refresh_token (or a username and password) in the secret instead of a token",
                error_code="TOKEN_EXPIRED",
                http_status=401,
            )
        return _HeldToken(jwt=token, static=True)


def _password_grant(username: str, password: str, credentials: CtmCredentials) -> Grant:
    """A password login that also asks CTM for the session's short-lived refresh token."""
    grant: dict[str, str | int] = {
        "grant_type": "password",
        "username": username,
        "password": password,
        "refresh_token_lifetime": SESSION_TOKEN_LIFETIME_MINUTES,
        "refresh_token_revoke_unused_in": SESSION_TOKEN_UNUSED_MINUTES,
    }
    if credentials.domain:
        grant["domain"] = credentials.domain
    if credentials.auth_domain:
        grant["auth_domain"] = credentials.auth_domain
    return grant


def _copy(error: CtmError) -> CtmError:
    """A fresh instance to raise in another thread (an exception's traceback is per raise)."""
    return type(error)(
        error.message,
        error_code=error.error_code,
        http_status=error.http_status,
        attempts=error.attempts,
    )
