"""Fakes for the CTM client's unit tests: a scripted CTM mounted as a requests adapter.

``FakeCtm`` replaces the network below requests' Session, so everything above it (our
transport, requests' merging of ``verify`` with the environment, header handling) is real.
"""

from __future__ import annotations

import base64
import io
import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
import urllib3
from requests.adapters import BaseAdapter

from cckm_refresh.ctm.client import CtmClient

BASE_URL = "https://ctm.test"
EPOCH = 1_700_000_000.0
TOKEN_PATH = "/api/v1/auth/tokens"
KEY_ID = "90671f17-28ff-4f93-86dc-ff08983469e7"
OTHER_KEY_ID = "c100fd48-5083-4f67-9afa-49ee128ddd77"
OCID = "ocid1.key.oc1.iad.abcd1234"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(exp: float | None = None, iat: float | None = None, **claims: Any) -> str:
    """An (unsigned) JWT with the given claims, shaped like CTM's."""
    payload: dict[str, Any] = {"iss": "kylo", **claims}
    if exp is not None:
        payload["exp"] = exp
    if iat is not None:
        payload["iat"] = iat
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(payload).encode())}.c2lnbmF0dXJl"


class FakeClock:
    """Monotonic and wall clock in one, moved only by the test."""

    def __init__(self, start: float = EPOCH) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SecretLoader:
    """The secret loader callable; records each call's ``force`` flag."""

    def __init__(self, value: str, *, after_force: str | None = None) -> None:
        self.value = value
        self.after_force = after_force  # what a forced fetch finds (a rotated secret)
        self.calls: list[bool] = []

    def __call__(self, force: bool) -> str:
        self.calls.append(force)
        if force and self.after_force is not None:
            self.value = self.after_force
        return self.value

    @property
    def forced(self) -> int:
        return sum(self.calls)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str/bytes -> sent as is
    raises: Exception | None = None


def error_body(code_desc: str, message: str = "", code: int = 16) -> dict[str, Any]:
    return {"code": code, "codeDesc": code_desc, "message": message, "requestID": "req-1"}


@dataclass
class Sent:
    """One request as it reached the (fake) network."""

    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: Any
    verify: Any
    timeout: Any


Handler = Callable[[Sent], Reply]


def _sent(request: requests.PreparedRequest, verify: Any, timeout: Any) -> Sent:
    """The request as it reached the (fake) network, its JSON body parsed."""
    parts = urlsplit(request.url or "")
    body = request.body
    if isinstance(body, bytes):
        body = body.decode()
    return Sent(
        method=request.method or "",
        path=parts.path,
        query=dict(parse_qsl(parts.query)),
        headers=dict(request.headers),
        body=json.loads(body) if body else None,
        verify=verify,
        timeout=timeout,
    )


def _content(body: Any) -> bytes:
    """A reply's body as sent: nothing, bytes and str as they are, anything else as JSON."""
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


@dataclass
class FakeCtm(BaseAdapter):
    """A scripted CTM. Token requests are answered by ``issue`` unless scripted otherwise."""

    clock: FakeClock = field(default_factory=FakeClock)
    token_lifetime: float = 300.0
    sent: list[Sent] = field(default_factory=list)
    scripts: dict[tuple[str, str], deque[Reply | Handler]] = field(default_factory=dict)
    defaults: dict[tuple[str, str], Reply | Handler] = field(default_factory=dict)
    jwts_issued: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def script(self, method: str, path: str, *replies: Reply | Handler) -> None:
        """Answer the next requests to ``method path`` with ``replies``, in order."""
        self.scripts.setdefault((method, path), deque()).extend(replies)

    def always(self, method: str, path: str, reply: Reply | Handler) -> None:
        """Answer every request to ``method path`` (after its script) with ``reply``."""
        self.defaults[(method, path)] = reply

    def issue(self, sent: Sent) -> Reply:
        now = self.clock()
        jwt = make_jwt(exp=now + self.token_lifetime, iat=now, jti=len(self.jwts_issued))
        self.jwts_issued.append(jwt)
        return Reply(
            200, {"jwt": jwt, "duration": int(self.token_lifetime), "token_type": "Bearer"}
        )

    def to(self, method: str, path: str) -> list[Sent]:
        return [s for s in self.sent if s.method == method and s.path == path]

    def send(  # noqa: PLR0917 - requests' adapter signature
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        sent = _sent(request, verify, timeout)
        self.sent.append(sent)
        reply = self._reply_for(sent)
        if reply.raises is not None:
            raise reply.raises
        response = requests.Response()
        response.status_code = reply.status
        # The transport streams the body (stream=True) from ``raw``, as from a socket.
        response.raw = urllib3.HTTPResponse(
            body=io.BytesIO(_content(reply.body)), preload_content=False
        )
        response.headers["Content-Type"] = "application/json"
        response.url = request.url or ""
        response.request = request
        return response

    def _reply_for(self, sent: Sent) -> Reply:
        """The scripted reply, else the default one, else a token or a 404."""
        key = (sent.method, sent.path)
        queue = self.scripts.get(key)
        if queue:
            reply: Reply | Handler = queue.popleft()
        elif key in self.defaults:
            reply = self.defaults[key]
        elif key == ("POST", TOKEN_PATH):
            reply = self.issue
        else:
            reply = Reply(404, error_body("NCERRResourceNotFound: Resource not found", "nope"))
        return reply if isinstance(reply, Reply) else reply(sent)

    def close(self) -> None:
        return None


def key_object(key_id: str = KEY_ID, **params: Any) -> dict[str, Any]:
    return {
        "id": key_id,
        "tenancy": "tenancy-a",
        "region": "us-ashburn-1",
        "refreshed_at": "2026-01-01T00:00:00Z",
        "oci_params": {"key_id": OCID, "display_name": "k", "lifecycle_state": "ENABLED", **params},
    }


def fake_client(
    ctm: FakeCtm,
    secret: str | SecretLoader = '{"refresh_token": "rt-1"}',  # noqa: S107 - a test value
    *,
    max_attempts: int = 4,
    verify_tls: bool = True,
    rng: Callable[[], float] = lambda: 0.5,
    sleeps: list[float] | None = None,
) -> CtmClient:
    """A CtmClient whose network is ``ctm`` and whose clocks and sleep are ``ctm.clock``."""
    loader = secret if isinstance(secret, SecretLoader) else SecretLoader(secret)
    slept = sleeps if sleeps is not None else []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        ctm.clock.advance(seconds)

    client = CtmClient.create(
        base_url=BASE_URL,
        secret_loader=loader,
        max_attempts=max_attempts,
        verify_tls=verify_tls,
        sleep=sleep,
        clock=ctm.clock,
        wall_clock=ctm.clock,
        rng=rng,
    )
    client.transport.session.mount("https://", ctm)
    return client
