"""Users, refresh tokens and JWTs, the way CTM's ``/api/v1/auth/tokens`` hands them out.

JWTs are real HS256 tokens (stdlib ``hmac``) with CTM's claims (``iss`` ``kylo``, ``sub``
``local|<user uuid>``, ``aud`` the client id, ``preferred_username``, ``cust``, ``jwtid``,
``iat``, ``exp``), so a client can decode ``exp`` exactly as it would with CTM. Refresh tokens
are opaque random strings; only their SHA-256 digests are kept.

Like CTM, every password grant mints a refresh token, and a refresh token lives for ever
unless the grant asked otherwise: ``refresh_token_lifetime`` (an absolute lifetime) and
``refresh_token_revoke_unused_in`` (revoked when not redeemed for that long), both in
minutes as CTM takes them. ``live_refresh_tokens`` counts what a user has accumulated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

ZERO_UUID = "00000000-0000-0000-0000-000000000000"
# CTM reports 1799 s for playground refresh tokens. A token with no limits never expires
# (only revocation ends it), but clients may read the field, so it is present and plausible.
REFRESH_TOKEN_EXPIRES_IN = 1799


class TokenRejectedError(Exception):
    """A bearer token CTM would refuse; ``str()`` is CTM's 401 message (never the token)."""


@dataclass(frozen=True)
class RefreshTokenLimits:
    """How long a refresh token lives, in seconds; None: no limit (CTM's default)."""

    lifetime: float | None = None
    revoke_unused_in: float | None = None


NO_LIMITS = RefreshTokenLimits()


@dataclass(frozen=True)
class _RefreshGrant:
    token_id: str
    username: str
    limits: RefreshTokenLimits
    issued_at: float
    last_used: float

    def live(self, now: float) -> bool:
        lifetime, unused = self.limits.lifetime, self.limits.revoke_unused_in
        if lifetime is not None and now >= self.issued_at + lifetime:
            return False
        return unused is None or now < self.last_used + unused

    def expires_in(self, now: float) -> int:
        """Seconds it stays usable if not redeemed again (CTM's ``refresh_token_expires_in``)."""
        ends = [
            end
            for end in (
                None if self.limits.lifetime is None else self.issued_at + self.limits.lifetime,
                None
                if self.limits.revoke_unused_in is None
                else self.last_used + self.limits.revoke_unused_in,
            )
            if end is not None
        ]
        if not ends:
            return REFRESH_TOKEN_EXPIRES_IN
        return max(0, math.floor(min(ends) - now))


def jwt_seconds(lifetime: float) -> int:
    """A JWT lifetime as CTM states it, in whole seconds: ``exp`` is ``iat`` plus this, and the
    token answer's ``duration`` says the same."""
    return math.floor(lifetime)


def go_duration(seconds: int) -> str:
    """Whole seconds written as Go writes a ``time.Duration`` (``50s``, ``1m40s``, ``1h0m5s``),
    as CTM's "Token is expired by ..." does."""
    hours, rest = divmod(seconds, 3600)
    minutes, rest = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{rest}s"
    if minutes:
        return f"{minutes}m{rest}s"
    return f"{rest}s"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenAuthority:
    """Checks passwords, issues and verifies JWTs, keeps and revokes refresh tokens."""

    def __init__(self, users: Mapping[str, str], clock: Callable[[], float]) -> None:
        if not users:
            raise ValueError("at least one user is needed")
        self._users = dict(users)
        self._clock = clock
        self._signing_key = secrets.token_bytes(32)
        self.client_id = str(uuid.uuid4())
        self._session_id = str(uuid.uuid4())
        self._lock = threading.Lock()
        self._refresh_grants: dict[str, _RefreshGrant] = {}
        self._uses: dict[str, int] = {}

    @property
    def default_username(self) -> str:
        """The first configured user."""
        return next(iter(self._users))

    def password_of(self, username: str) -> str:
        """The configured password of ``username`` (for the emulator's own printout)."""
        return self._users[username]

    def check_password(self, username: object, password: object) -> bool:
        """True when ``username`` exists and ``password`` is its password (constant time)."""
        if not isinstance(username, str) or not isinstance(password, str):
            return False
        expected = self._users.get(username)
        if expected is None:
            return False
        return hmac.compare_digest(expected.encode("utf-8"), password.encode("utf-8"))

    # --- JWTs ---------------------------------------------------------------------------------

    def mint_jwt(self, username: str, lifetime: float) -> str:
        """A signed JWT for ``username`` valid ``lifetime`` seconds (negative: already expired).

        ``iat`` and ``exp`` are whole seconds, as CTM's are: ``iat`` is the clock rounded down,
        so the token ends up to a second before ``lifetime`` counted from now.
        """
        issued_at = math.floor(self._clock())
        claims = {
            "aud": self.client_id,
            "sub": f"local|{uuid.uuid5(uuid.NAMESPACE_URL, 'ctm-user:' + username)}",
            "iss": "kylo",
            "acc": "kylo",
            "preferred_username": username,
            "cust": {
                "domain_id": ZERO_UUID,
                "groups": ["admin"],
                "sid": self._session_id,
                "zone_id": ZERO_UUID,
            },
            "jwtid": str(uuid.uuid4()),
            "iat": issued_at,
            "exp": issued_at + jwt_seconds(lifetime),
        }
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signature = hmac.new(self._signing_key, f"{header}.{payload}".encode(), hashlib.sha256)
        return f"{header}.{payload}.{_b64url(signature.digest())}"

    def verify_jwt(self, token: str, max_uses: int | None = None) -> dict[str, Any]:
        """Return the claims of a valid token, or raise TokenRejectedError with CTM's message.

        ``max_uses`` (a fault) makes a token count as expired once it has served that many
        requests, so a test can force a mid-run expiry without moving any clock.
        """
        claims = self._signed_claims(token)
        now = self._clock()
        # Like the Go JWT library CTM uses: valid while now <= exp; the lateness is whole
        # seconds, rounded up (never "by 0s").
        if now > claims["exp"]:
            late = go_duration(max(1, math.ceil(now - claims["exp"])))
            raise TokenRejectedError(f"Bearer token malformed: Token is expired by {late}")
        if max_uses is not None:
            self._count_use(claims, max_uses)
        return claims

    def _signed_claims(self, token: str) -> dict[str, Any]:
        """The claims of a token signed here (HS256) with an integer ``exp``, whether expired or
        not; else TokenRejectedError with CTM's message."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRejectedError(
                "Bearer token malformed: token contains an invalid number of segments"
            )
        header_b64, payload_b64, signature_b64 = parts
        expected = hmac.new(
            self._signing_key,
            f"{header_b64}.{payload_b64}".encode("ascii", "replace"),
            hashlib.sha256,
        ).digest()
        try:
            signature = _b64url_decode(signature_b64)
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(payload_b64))
        except (binascii.Error, ValueError):
            raise TokenRejectedError("Bearer token malformed: token is malformed") from None
        if not hmac.compare_digest(signature, expected):
            raise TokenRejectedError("Bearer token malformed: signature is invalid")
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise TokenRejectedError("Bearer token malformed: signing method is invalid")
        if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int):
            raise TokenRejectedError("Bearer token malformed: token has no expiry")
        return claims

    def _count_use(self, claims: Mapping[str, Any], max_uses: int) -> None:
        """Count one more request served by the token; past ``max_uses`` it is expired."""
        with self._lock:
            uses = self._uses.get(str(claims.get("jwtid")), 0) + 1
            self._uses[str(claims.get("jwtid"))] = uses
        if uses > max_uses:
            raise TokenRejectedError("Bearer token malformed: Token is expired by 1s")

    # --- refresh tokens -------------------------------------------------------------------------

    def issue_refresh_token(
        self, username: str, limits: RefreshTokenLimits = NO_LIMITS
    ) -> tuple[str, str]:
        """A new refresh token for ``username`` and its id."""
        if username not in self._users:
            raise KeyError(f"no such user: {username}")
        token = secrets.token_urlsafe(48)
        now = self._clock()
        grant = _RefreshGrant(str(uuid.uuid4()), username, limits, issued_at=now, last_used=now)
        with self._lock:
            self._refresh_grants[_digest(token)] = grant
        return token, grant.token_id

    def redeem_refresh_token(self, token: object, renew: bool) -> tuple[str, str, str] | None:
        """``(username, refresh token, its id)`` for a live token, else None.

        Like CTM, the same refresh token comes back unless ``renew`` asks for a new one, in
        which case the old one stops working (the new one has the same limits, from now).
        """
        if not isinstance(token, str) or not token:
            return None
        now = self._clock()
        with self._lock:
            grant = self._refresh_grants.get(_digest(token))
            if grant is None:
                return None
            if not grant.live(now):
                del self._refresh_grants[_digest(token)]
                return None
            if not renew:
                self._refresh_grants[_digest(token)] = replace(grant, last_used=now)
                return grant.username, token, grant.token_id
            del self._refresh_grants[_digest(token)]
        fresh, fresh_id = self.issue_refresh_token(grant.username, grant.limits)
        return grant.username, fresh, fresh_id

    def refresh_token_expires_in(self, token: str) -> int:
        """What CTM reports as ``refresh_token_expires_in`` for ``token`` (0 when dead)."""
        now = self._clock()
        with self._lock:
            grant = self._refresh_grants.get(_digest(token))
        return 0 if grant is None or not grant.live(now) else grant.expires_in(now)

    def live_refresh_tokens(self, username: str | None = None) -> int:
        """Refresh tokens still usable now, of ``username`` or of every user."""
        now = self._clock()
        with self._lock:
            return sum(
                1
                for grant in self._refresh_grants.values()
                if grant.live(now) and username in (None, grant.username)
            )

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token issued so far stops working."""
        with self._lock:
            self._refresh_grants.clear()
