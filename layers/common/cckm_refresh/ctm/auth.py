"""Bearer JWTs for CTM (CONTRACT section 3), shared safely between threads.

``TokenSource`` exchanges the secret's refresh token or password at
``POST /api/v1/auth/tokens``, renews the JWT before it expires and once after CTM refuses it
(``invalidate``), and uses a static ``token`` until its ``exp``. One lock: while one thread
renews, the others wait and reuse its result, including its failure.

After an authentication failure the secret is read again, bypassing its cache, once. A
credential CTM refused is not sent again until the secret changes: retrying a wrong password
would only count towards locking the account.
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
from cckm_refresh.ctm.errors import CtmAuthError, CtmError, CtmPermanentError, CtmTokenExpiredError
from cckm_refresh.ctm.transport import Transport
from cckm_refresh.observability import logger

TOKEN_PATH = "/api/v1/auth/tokens"  # noqa: S105 - a path, not a secret
RENEW_MARGIN = 60.0  # renew when less than this remains (Terraform's provider does the same)
DEFAULT_LIFETIME = 300.0  # CTM JWTs live 5 minutes when neither exp nor duration says otherwise
# How long credentials CTM refused are not offered again (unless the secret changes). Long
# enough that a batch of keys makes one failed login, not one per key; short enough that a
# CTM hiccup answering 401 does not poison a warm Lambda container for its whole life.
REFUSAL_MEMORY = 60.0

TokenExchange = Callable[[Mapping[str, str]], Mapping[str, Any]]
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

    def __call__(self, grant: Mapping[str, str]) -> Mapping[str, Any]:
        return self._transport.call("POST", self._url, json_body=grant).body


@dataclass(frozen=True, repr=False)
class _HeldToken:
    jwt: str
    renew_at: float | None = None  # monotonic time, for tokens we obtained
    expires_at: float | None = None  # epoch seconds, for a static token with an exp claim
    static: bool = False


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
    ) -> None:
        self._credentials = credentials
        self._exchange = exchange
        self._clock = clock
        self._wall_clock = wall_clock
        self._renew_margin = renew_margin
        self._lock = threading.Lock()
        self._held: _HeldToken | None = None
        self._renewals = 0  # renewals finished; a waiter sees one finished while it waited
        self._failure: CtmError | None = None  # the last renewal's failure, for its waiters
        self._force_secret = False  # read the secret past its cache at the next renewal
        self._rejected_jwt: str | None = None  # a static token CTM answered 401 to
        self._refused: tuple[CtmCredentials, CtmAuthError, float] | None = None
        self.tokens_issued = 0

    def __repr__(self) -> str:
        return f"TokenSource(tokens_issued={self.tokens_issued})"

    def bearer(self) -> str:
        """A JWT valid for at least the renewal margin (a static token: until its ``exp``).

        Raises CtmAuthError (CTM refused the credentials), CtmTokenExpiredError
        (``TOKEN_EXPIRED``), CtmCredentialsError (unusable secret) or a transport CtmError.
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
            return held.expires_at is None or self._wall_clock() < held.expires_at
        return held.renew_at is not None and self._clock() < held.renew_at

    def _obtain(self) -> _HeldToken:
        force, self._force_secret = self._force_secret, False
        credentials = self._credentials.get(force=force)
        if self._refused is not None:
            refused, failure, when = self._refused
            if credentials == refused and self._clock() - when < REFUSAL_MEMORY:
                raise _copy(failure)
        try:
            return self._token_from(credentials)
        except CtmAuthError as error:
            failed, failure = credentials, error
            if not force:
                fresh = self._credentials.get(force=True)
                if fresh != credentials:
                    try:
                        return self._token_from(fresh)
                    except CtmAuthError as second:
                        failed, failure = fresh, second
            self._refused = (failed, failure, self._clock())
            raise failure from None

    def _token_from(self, credentials: CtmCredentials) -> _HeldToken:
        method = credentials.method
        if method is AuthMethod.STATIC_TOKEN:
            return self._static(credentials)
        grant: dict[str, str]
        if method is AuthMethod.REFRESH_TOKEN:
            assert credentials.refresh_token is not None
            grant = {"grant_type": "refresh_token", "refresh_token": credentials.refresh_token}
        else:
            assert credentials.username is not None
            assert credentials.password is not None
            grant = {
                "grant_type": "password",
                "username": credentials.username,
                "password": credentials.password,
            }
            if credentials.domain:
                grant["domain"] = credentials.domain
            if credentials.auth_domain:
                grant["auth_domain"] = credentials.auth_domain
        started = self._clock()
        try:
            answer = self._exchange(grant)
        except CtmAuthError as error:
            raise CtmAuthError(
                f"CTM refused the secret's {method.value}: {error.message}",
                error_code=error.error_code,
                http_status=error.http_status,
                attempts=error.attempts,
            ) from None
        held = self._issued(answer, started)
        self.tokens_issued += 1
        logger.info(
            "CTM token issued",
            extra={"auth_method": method.value, "renew_in_s": round(held.renew_at - started, 1)}
            if held.renew_at is not None
            else {"auth_method": method.value},
        )
        return held

    def _issued(self, answer: Mapping[str, Any], started: float) -> _HeldToken:
        jwt = answer.get("jwt")
        if not isinstance(jwt, str) or not JWT_SHAPE.fullmatch(jwt):
            raise CtmPermanentError(
                f"{TOKEN_PATH} answered without a usable jwt", error_code="UNAUTHORIZED"
            )
        claims = jwt_claims(jwt)
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
        lifetime = min(lifetimes) if lifetimes else DEFAULT_LIFETIME
        # A token living less than the margin would otherwise be renewed for every call.
        margin = min(self._renew_margin, lifetime / 4)
        return _HeldToken(jwt=jwt, renew_at=started + lifetime - margin)

    def _static(self, credentials: CtmCredentials) -> _HeldToken:
        token = credentials.token
        assert token is not None
        exp = _number(jwt_claims(token).get("exp"))
        if exp is not None and self._wall_clock() >= exp:
            raise CtmTokenExpiredError(
                "the JWT stored in the CTM secret has expired; store a refresh_token (or a "
                "username and password) in the secret instead of a token",
                error_code="TOKEN_EXPIRED",
            )
        if token == self._rejected_jwt:
            raise CtmAuthError(
                "CTM refused the JWT stored in the CTM secret; store a refresh_token instead",
                error_code="UNAUTHORIZED",
                http_status=401,
            )
        return _HeldToken(jwt=token, expires_at=exp, static=True)


def _copy(error: CtmError) -> CtmError:
    """A fresh instance to raise in another thread (an exception's traceback is per raise)."""
    return type(error)(
        error.message,
        error_code=error.error_code,
        http_status=error.http_status,
        attempts=error.attempts,
    )
