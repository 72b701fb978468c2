"""Fakes for the CTM client's unit tests: a scripted CTM answering in process (``FakeCtm``, a
requests adapter the client mounts) on a ``ManualRuntime`` at ``EPOCH`` (``ctm_runtime``).

Everything above the adapter (our transport, requests' merging of ``verify`` with the
environment, header handling) is real; time moves only when something sleeps or a scripted
answer says it took time, so tests assert on the virtual clock, never on the wall clock.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
import urllib3
from requests.adapters import BaseAdapter

from cckm_refresh.ctm.client import CtmClient
from cckm_refresh.ctm.transport import UNPACED, CtmResponse, Pacer
from cckm_refresh.runtime import Deadline
from tests.unit.manual_runtime import ManualRuntime

BASE_URL = "https://ctm.test"
EPOCH = 1_700_000_000.0
TOKEN_PATH = "/api/v1/auth/tokens"
KEYS_PATH = "/api/v1/cckm/oci/keys"
KEY_ID = "90671f17-28ff-4f93-86dc-ff08983469e7"
OTHER_KEY_ID = "c100fd48-5083-4f67-9afa-49ee128ddd77"
OCID = "ocid1.key.oc1.iad.abcd1234"
HOUR = 3600.0


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


def ctm_runtime() -> ManualRuntime:
    """A virtual clock on epoch seconds, ``monotonic()`` and ``time()`` alike, at ``EPOCH``."""
    return ManualRuntime(EPOCH, epoch=0.0)


def far(runtime: ManualRuntime) -> Deadline:
    """A deadline no test reaches: an hour of virtual time away."""
    return Deadline.within(HOUR, runtime)


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
    takes: float = 0.0  # virtual seconds the answer takes to arrive
    per_byte: float = 0.0  # then virtual seconds between two bytes of its body
    endless: bool = False  # after the body, filler until the client hangs up
    declared_length: int | None = None  # a Content-Length other than the body's


class Stream:
    """A body as a socket gives it: all at once, or byte by byte on the virtual clock."""

    def __init__(self, reply: Reply, runtime: ManualRuntime) -> None:
        self._body = io.BytesIO(_content(reply.body))
        self._reply = reply
        self._runtime = runtime
        self.sent = 0
        self.closed = False

    def read1(self, size: int) -> bytes:
        if self._reply.per_byte:
            self._runtime.advance(self._reply.per_byte)
            size = 1
        chunk = self._body.read(size)
        if not chunk and self._reply.endless:
            chunk = b" " * size
        self.sent += len(chunk)
        return chunk

    def close(self) -> None:
        self.closed = True


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
    at: float = 0.0

    @property
    def bearer(self) -> str:
        return str(self.headers.get("Authorization", "")).removeprefix("Bearer ")


Handler = Callable[[Sent], Reply]


def _content(body: Any) -> bytes:
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

    runtime: ManualRuntime = field(default_factory=ctm_runtime)
    token_lifetime: float = 300.0
    sent: list[Sent] = field(default_factory=list)
    scripts: dict[tuple[str, str], deque[Reply | Handler]] = field(default_factory=dict)
    defaults: dict[tuple[str, str], Reply | Handler] = field(default_factory=dict)
    jwts_issued: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stream: Stream | None = None  # the last body sent byte by byte

    def __post_init__(self) -> None:
        super().__init__()

    def script(self, method: str, path: str, *replies: Reply | Handler) -> None:
        """Answer the next requests to ``method path`` with ``replies``, in order."""
        self.scripts.setdefault((method, path), deque()).extend(replies)

    def always(self, method: str, path: str, reply: Reply | Handler) -> None:
        """Answer every request to ``method path`` (after its script) with ``reply``."""
        self.defaults[(method, path)] = reply

    def issue(self, sent: Sent) -> Reply:
        """CTM's token answer: a JWT living ``token_lifetime`` from now (whole seconds)."""
        now = int(self.runtime())
        with self.lock:
            jti = len(self.jwts_issued)
            jwt = make_jwt(exp=now + int(self.token_lifetime), iat=now, jti=jti)
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
        parts = urlsplit(request.url or "")
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        sent = Sent(
            request.method or "",
            parts.path,
            dict(parse_qsl(parts.query)),
            dict(request.headers),
            json.loads(body) if body else None,
            verify,
            timeout,
            self.runtime(),
        )
        with self.lock:
            self.sent.append(sent)
            reply = self._reply_for(sent)
        if not isinstance(reply, Reply):
            reply = reply(sent)
        self.runtime.advance(reply.takes)
        if reply.raises is not None:
            raise reply.raises
        response = requests.Response()
        response.status_code = reply.status
        # The transport streams the body (stream=True) from ``raw``, as from a socket.
        if reply.per_byte or reply.endless:
            response.raw = self.stream = Stream(reply, self.runtime)
        else:
            response.raw = urllib3.HTTPResponse(
                body=io.BytesIO(_content(reply.body)), preload_content=False
            )
        response.headers["Content-Type"] = "application/json"
        if reply.declared_length is not None:
            response.headers["Content-Length"] = str(reply.declared_length)
        response.url = request.url or ""
        response.request = request
        return response

    def _reply_for(self, sent: Sent) -> Reply | Handler:
        key = (sent.method, sent.path)
        queue = self.scripts.get(key)
        if queue:
            return queue.popleft()
        if key in self.defaults:
            return self.defaults[key]
        if key == ("POST", TOKEN_PATH):
            return self.issue
        return Reply(404, error_body("NCERRResourceNotFound: Resource not found", "nope"))

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
) -> CtmClient:
    """A CtmClient answered by ``ctm``, on ``ctm.runtime``'s virtual clock."""
    loader = secret if isinstance(secret, SecretLoader) else SecretLoader(secret)
    return CtmClient.create(
        base_url=BASE_URL,
        secret_loader=loader,
        max_attempts=max_attempts,
        verify_tls=verify_tls,
        runtime=ctm.runtime,
        rng=rng,
        adapter=ctm,
    )


def refresh(
    client: CtmClient,
    key_id: str = KEY_ID,
    *,
    pacer: Pacer = UNPACED,
    within: float = HOUR,
) -> CtmResponse:
    """``refresh_oci_key`` ending within ``within`` seconds of the client's clock."""
    runtime = client.transport.runtime
    return client.refresh_oci_key(key_id, pacer=pacer, deadline=Deadline.within(within, runtime))
