"""Bearer JWTs for CTM (docs/reference.md 3): sign-in, renewal ahead of the expiry CTM states,
one renewal at a time shared by every thread, and credentials CTM refused."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cckm_refresh.ctm.credentials import JWT_SHAPE, AuthMethod, CredentialsCache, CtmCredentials
from cckm_refresh.ctm.errors import (
    CtmAuthError,
    CtmDeadlineError,
    CtmError,
    CtmPermanentError,
    CtmTokenExpiredError,
    register_secret,
)
from cckm_refresh.observability import logger
from cckm_refresh.runtime import SYSTEM, Deadline, Runtime

TOKEN_PATH = "/api/v1/auth/tokens"  # noqa: S105 - a path, not a secret
RENEW_MARGIN = 60.0  # renew this long before expiry (Terraform's provider does the same)
DEFAULT_LIFETIME = 300.0  # CTM's JWTs live 5 minutes when the answer does not say
# Long enough that a batch of keys makes one failed login, not one per key; short enough that
# a CTM hiccup refusing a login does not poison a warm container for its whole life.
REFUSAL_MEMORY = 60.0
REFUSED_STATUSES = frozenset({400, 401, 403})  # wrong password, unknown token, locked account
# The refresh token each password login asks for, in minutes (docs/reference.md 9): by default
# they never expire, and piled up they made CTM 2.7 servers unresponsive. A busy container renews
# every 4 minutes: about two live ones per container that ran in the last 10 minutes.
SESSION_TOKEN_LIFETIME_MINUTES = 60
SESSION_TOKEN_UNUSED_MINUTES = 10
SESSION_TOKEN_MARGIN = 60.0  # stop using it this long before CTM would drop it

Grant = Mapping[str, str | int]
TokenExchange = Callable[[Grant, Deadline], Mapping[str, Any]]
"""Posts a grant to the token endpoint before the deadline; its JSON answer."""


@dataclass(frozen=True)
class LoginInfo:
    """What CTM said at the last sign-in (``cckm-refresh doctor``): names and numbers only."""

    auth_method: str  # refresh_token, password or token (the secret's own JWT)
    grant_type: str | None  # None: the secret's own JWT, no login
    duration: float | None  # the JWT's lifetime in the answer, seconds
    exp_minus_iat: float | None  # the JWT's lifetime in its claims (whole seconds)
    refresh_token_expires_in: float | None  # seconds, when the login returned a refresh token


@dataclass(frozen=True, repr=False)
class _Held:
    bearer: Bearer
    renew_at: float  # monotonic: from here on one thread renews, the others still use it
    expires_at: float  # monotonic: never sent after this
    static: bool = False  # the secret's own JWT: used until CTM refuses it


@dataclass(frozen=True, repr=False)
class _Session:
    """The refresh token a password login returned, and the credentials that logged in."""

    credentials: CtmCredentials
    refresh_token: str
    usable_until: float  # monotonic: its lifetime, less the margin
    last_used: float  # monotonic


def jwt_claims(jwt: str) -> dict[str, Any]:
    """The JWT's payload claims ({} when undecodable), unverified: only ``exp``/``iat`` are read."""
    parts = jwt.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


@dataclass(frozen=True, repr=False)
class Bearer:
    """A JWT and its generation: tokens obtained later by the same source have larger ones."""

    jwt: str
    generation: int


class TokenSource:
    """The newest valid bearer JWT on demand, for every attempt of the transport; thread-safe."""

    def __init__(
        self, credentials: CredentialsCache, exchange: TokenExchange, *, runtime: Runtime = SYSTEM
    ) -> None:
        self._credentials = credentials
        self._exchange = exchange
        self._runtime = runtime
        self._changed = runtime.condition()  # guards what follows; signals a renewal's end
        self._held: _Held | None = None
        self.generation = 0  # of the newest JWT
        self._renewing = False
        self._renewals = 0  # renewals ended: a waiter sees one ended while it waited
        self._failure: CtmError | None = None  # the last renewal's, for its waiters
        self._force_secret = False  # read the secret past its cache at the next renewal
        self._rejected_jwt: str | None = None  # the secret's own JWT, after CTM's 401
        self._refused: tuple[CtmCredentials, CtmAuthError, float] | None = None
        self._session: _Session | None = None
        self.last_login: LoginInfo | None = None

    def bearer(self, deadline: Deadline) -> Bearer:
        """The newest JWT still valid, signing in before ``deadline`` when none is or it is due;
        a sign-in's CtmError is raised to every thread waiting for it."""
        with self._changed:
            seen = self._renewals
            while True:
                held, now = self._held, self._runtime.monotonic()
                # not due (a static JWT never is), or still valid while another renews it
                if held and (now < held.renew_at or (self._renewing and now < held.expires_at)):
                    return held.bearer
                if not self._renewing:
                    self._renewing = True
                    force, self._force_secret = self._force_secret, False
                    break
                self._await_renewal(seen, deadline)
        fresh: _Held | CtmError
        try:
            fresh = self._obtain(deadline, force=force)
        except CtmError as error:
            fresh = error
        return self._end_renewal(fresh, held, now)

    def _await_renewal(self, seen: int, deadline: Deadline) -> None:
        """Waits (the lock held) for another thread's renewal, or raises what it raised."""
        if self._renewals != seen and self._failure is not None:
            raise self._failure.copy()  # waited while another thread failed
        if deadline.passed():
            message = "waited for CTM's sign-in until the deadline"
            raise CtmDeadlineError(message, error_code="DEADLINE")
        self._changed.wait(deadline.remaining())

    def _end_renewal(self, fresh: _Held | CtmError, held: _Held | None, now: float) -> Bearer:
        """Ends the renewal: holds ``fresh``, or raises it unless ``held`` is valid at ``now``."""
        with self._changed:
            self._renewing = False
            self._renewals += 1
            self._changed.notify_all()
            if isinstance(fresh, _Held):
                self.generation += 1
                self._held = replace(fresh, bearer=Bearer(fresh.bearer.jwt, self.generation))
                self._failure = None
                return self._held.bearer
            self._failure = fresh
            if held is None or self._held is not held or now >= held.expires_at:
                raise fresh
            # Renewing ahead of time failed: the valid JWT serves on, and is renewed later.
            self._held = replace(held, renew_at=now + (held.expires_at - now) / 2)
            logger.warning("renewing the CTM token failed", extra={"error_code": fresh.error_code})
            return held.bearer

    def refused(self, bearer: Bearer) -> None:
        """CTM answered 401 to ``bearer``: unless a newer one exists, renew at the next ask,
        reading the secret past its cache."""
        with self._changed:
            held = self._held
            if held is None or held.bearer.generation != bearer.generation:
                return  # already renewed, or being renewed
            if held.static:
                self._rejected_jwt = held.bearer.jwt
            self._held, self._force_secret = None, True

    def _obtain(self, deadline: Deadline, *, force: bool) -> _Held:
        credentials = self._credentials.get(force=force)
        if self._refused is not None:
            refused, failure, when = self._refused
            if credentials == refused and self._runtime.monotonic() - when < REFUSAL_MEMORY:
                raise failure.copy()
        renewed = self._renew_session(credentials, deadline)
        if renewed is not None:
            return renewed
        try:
            return self._login(credentials, deadline)
        except CtmTokenExpiredError:
            raise  # the secret was just read again: its JWT is the one CTM refused
        except CtmAuthError as error:
            failed, failure = credentials, error
            if not force and (fresh := self._credentials.get(force=True)) != credentials:
                try:
                    return self._login(fresh, deadline)
                except CtmAuthError as second:
                    failed, failure = fresh, second
            self._refused = (failed, failure, self._runtime.monotonic())
            raise failure from None

    def _renew_session(self, credentials: CtmCredentials, deadline: Deadline) -> _Held | None:
        """A JWT from the password login's refresh token; None when there is none usable or CTM
        refused it (the password logs in then)."""
        session, now = self._session, self._runtime.monotonic()
        unused = SESSION_TOKEN_UNUSED_MINUTES * 60 - SESSION_TOKEN_MARGIN
        if session is None or session.credentials != credentials:  # a new secret logs in
            return None
        if now >= session.usable_until or now - session.last_used >= unused:
            self._session = None
            return None
        grant = {"grant_type": "refresh_token", "refresh_token": session.refresh_token}
        try:
            what = "refresh token of the password login"
            held, minted = self._grant(grant, AuthMethod.PASSWORD, what, deadline)
        except CtmAuthError:
            self._session = None
            logger.info("CTM refused the login's refresh token; logging in with the password")
            return None
        if minted is not None and minted != session.refresh_token:
            self._start_session(credentials, minted, now)  # a new one: its clock starts again
        else:
            self._session = replace(session, last_used=now)
        return held

    def _login(self, credentials: CtmCredentials, deadline: Deadline) -> _Held:
        if credentials.method is AuthMethod.STATIC_TOKEN:
            return self._static(credentials.token or "")
        started = self._runtime.monotonic()
        grant: dict[str, str | int]
        if credentials.refresh_token is not None:
            grant = {"grant_type": "refresh_token", "refresh_token": credentials.refresh_token}
        else:
            grant = {"grant_type": "password", "username": credentials.username or ""}
            grant["password"] = credentials.password or ""
            grant["refresh_token_lifetime"] = SESSION_TOKEN_LIFETIME_MINUTES
            grant["refresh_token_revoke_unused_in"] = SESSION_TOKEN_UNUSED_MINUTES
            domains = {"domain": credentials.domain, "auth_domain": credentials.auth_domain}
            grant |= {name: value for name, value in domains.items() if value}
        method = credentials.method
        held, minted = self._grant(grant, method, f"secret's {method.value}", deadline)
        if credentials.method is AuthMethod.PASSWORD and minted is not None:
            self._start_session(credentials, minted, started)
        return held

    def _grant(
        self, grant: Grant, method: AuthMethod, what: str, deadline: Deadline
    ) -> tuple[_Held, str | None]:
        """The JWT ``grant`` gets, held until a margin before its expiry as CTM states it
        (``duration``, ``exp - iat``; ``exp`` against our clock last), and the refresh token
        minted with it. A refusal (400, 401, 403): CtmAuthError."""
        started = self._runtime.monotonic()
        try:
            answer = self._exchange(grant, deadline)
        except CtmPermanentError as error:
            if error.http_status not in REFUSED_STATUSES:
                raise
            raise error.copy(CtmAuthError, f"CTM refused the {what}: {error.message}") from None
        jwt, minted = answer.get("jwt"), answer.get("refresh_token")
        if not isinstance(jwt, str) or not JWT_SHAPE.fullmatch(jwt):
            message = f"{TOKEN_PATH} answered without a usable jwt"
            raise CtmPermanentError(message, error_code="UNAUTHORIZED")
        register_secret(jwt)
        claims = jwt_claims(jwt)
        exp, iat = _seconds(claims.get("exp")), _seconds(claims.get("iat"))
        duration, kept = _seconds(answer.get("duration")), answer.get("refresh_token_expires_in")
        stated = exp - iat if exp is not None and iat is not None and exp > iat else None
        grant_type = str(grant["grant_type"])
        self.last_login = LoginInfo(method.value, grant_type, duration, stated, _seconds(kept))
        usable, renew_in = self._schedule(exp, duration, stated)
        extra = {"auth_method": method.value, "grant_type": grant_type, "renew_in_s": renew_in}
        logger.info("CTM token issued", extra=extra)
        held = _Held(Bearer(jwt, 0), renew_at=started + renew_in, expires_at=started + usable)
        return held, minted if isinstance(minted, str) and minted else None

    def _schedule(self, exp: float | None, *stated: float | None) -> tuple[float, float]:
        """How long a JWT is sent, and when it is renewed, from the lifetimes CTM states."""
        lifetimes = [s for s in stated if s is not None and s > 0]
        if not lifetimes and exp is not None:
            lifetimes.append(max(exp - self._runtime.time(), 0.0))
        lifetime = min(lifetimes, default=DEFAULT_LIFETIME)
        # exp and iat are whole seconds on CTM's clock: up to one second of it may be gone.
        usable = lifetime - 1 if lifetime > 2 else lifetime / 2
        return usable, usable - min(RENEW_MARGIN, usable / 4)  # a short JWT: not at every call

    def _start_session(self, credentials: CtmCredentials, refresh_token: str, now: float) -> None:
        register_secret(refresh_token)
        usable_until = now + SESSION_TOKEN_LIFETIME_MINUTES * 60 - SESSION_TOKEN_MARGIN
        self._session = _Session(credentials, refresh_token, usable_until, last_used=now)

    def _static(self, token: str) -> _Held:
        if token == self._rejected_jwt:
            raise CtmTokenExpiredError(
                "CTM refused the JWT stored in the CTM secret (expired or revoked); store a "
                "refresh_token (or a username and password) in the secret instead of a token",
                error_code="TOKEN_EXPIRED",
                http_status=401,
            )
        self.last_login = LoginInfo(AuthMethod.STATIC_TOKEN.value, None, None, None, None)
        # Judged by CTM alone: a Lambda clock minutes off must not expire a valid token.
        return _Held(Bearer(token, 0), renew_at=math.inf, expires_at=math.inf, static=True)


def _seconds(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
