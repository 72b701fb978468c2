"""HTTPS around the CTM API, and ``CtmEmulator``, the object tests and tools hold.

Stdlib only (``ThreadingHTTPServer`` + ``ssl``): one daemon thread per connection, HTTP/1.1
keep-alive so pooled clients reuse connections, TLS handshakes done in the connection's thread
(a slow or failing handshake never stalls the accept loop).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devkit.ctm_emulator.api import ApiRequest, CtmApi, bad_request
from devkit.ctm_emulator.certificates import ServerPki, create_server_pki
from devkit.ctm_emulator.faults import Faults
from devkit.ctm_emulator.inventory import KeyInventory
from devkit.ctm_emulator.keyset import generate_keys
from devkit.ctm_emulator.request_log import LoggedRequest, RequestLog
from devkit.ctm_emulator.tokens import TokenAuthority

DEFAULT_USERS: Mapping[str, str] = {"svc-key-refresh": "password"}
MAX_BODY = 1 << 20
GZIP_MIN_SIZE = 1024  # below this, compressing costs more than it saves
_QUIET_ERRORS = (ssl.SSLError, ConnectionError, TimeoutError, OSError)


class _HttpsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # benchmarks open many connections at once

    def __init__(
        self,
        address: tuple[str, int],
        api: CtmApi,
        tls: ssl.SSLContext,
        verbose: bool,
    ) -> None:
        super().__init__(address, _Handler)
        self.api = api
        self.tls = tls
        self.verbose = verbose
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.connections_opened = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        raw, address = self.socket.accept()
        return self.tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up, refusing our certificate or timing out are normal here.
        if isinstance(sys.exc_info()[1], _QUIET_ERRORS):
            return
        super().handle_error(request, client_address)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)
            self.connections_opened += 1

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """End every kept-alive connection so no handler thread outlives the server."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _HttpsServer
    protocol_version = "HTTP/1.1"
    server_version = "CipherTrustManagerEmulator/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections end after this
    disable_nagle_algorithm = True  # small JSON answers must not wait for delayed ACKs

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)
        self.connection.do_handshake()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _serve(self) -> None:
        body = self._read_body()
        if body is None:
            return
        target = urlsplit(self.path)
        query = {name: values[0] for name, values in parse_qs(target.query, True).items()}
        reply = self.server.api.handle(
            ApiRequest(
                method=self.command,
                path=target.path,
                query=query,
                authorization=self.headers.get("Authorization"),
                body=body,
            )
        )
        if reply.drop:
            self._drop()
            return
        self._answer(reply.status, reply.body or {}, payload=reply.text, trickle=reply.trickle)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._answer(411, bad_request("Content-Length is required.").body or {})
            return None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self._answer(400, bad_request("Bad Content-Length.").body or {})
            return None
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        """Hang up without a word, as a crashed node or a cut network would."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client hung up first
            self.connection.shutdown(socket.SHUT_RDWR)

    def _answer(
        self,
        status: int,
        body: Mapping[str, Any],
        *,
        payload: bytes | None = None,
        trickle: float = 0.0,
    ) -> None:
        """Send ``body`` as JSON (or ``payload`` as is), one byte per ``trickle`` seconds."""
        is_json = payload is None
        if payload is None:
            payload = json.dumps(body).encode("utf-8")
        compressed = (
            not trickle
            and len(payload) >= GZIP_MIN_SIZE
            and _accepts_gzip(self.headers.get("Accept-Encoding", ""))
        )
        if compressed:
            payload = gzip.compress(payload, compresslevel=5)
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if is_json else "text/html")
        if compressed:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept-Encoding")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not trickle:
            self.wfile.write(payload)
            return
        self.wfile.flush()
        for i in range(len(payload)):
            self.server.api.pause(trickle)
            try:
                self.wfile.write(payload[i : i + 1])
            except OSError:  # the client gave up waiting: what the fault is for
                self.close_connection = True
                return


def _accepts_gzip(header: str) -> bool:
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


class CtmEmulator:
    """A CipherTrust Manager speaking the CCKM OCI key API over HTTPS, with its own CA.

    ``clock`` (epoch seconds) drives JWT ``iat``/``exp``, the throttle window and
    ``refreshed_at``; tests replace it (``emulator.clock = fake``) to move time without
    sleeping. ``sleep`` is what injected latency calls.
    """

    def __init__(
        self,
        keys: Iterable[Mapping[str, Any]] | None = None,
        *,
        users: Mapping[str, str] | None = None,
        token_lifetime: float = 300.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
        verbose: bool = False,
    ) -> None:
        self.clock: Callable[[], float] = clock or time.time
        self.faults = Faults(seed=seed, token_lifetime=token_lifetime)
        self._host = host
        self._port = port
        self._verbose = verbose
        self._inventory = KeyInventory(self._now, seed=seed)
        self._inventory.add(generate_keys(30, seed=seed) if keys is None else keys)
        self._tokens = TokenAuthority(users or DEFAULT_USERS, self._now)
        self._log = RequestLog()
        self._api = CtmApi(
            inventory=self._inventory,
            tokens=self._tokens,
            faults=self.faults,
            log=self._log,
            clock=self._now,
            sleep=sleep or time.sleep,
            # Benchmarks and resilience tests compare log instants with time.monotonic().
            arrival_clock=time.monotonic,
        )
        self._server: _HttpsServer | None = None
        self._thread: threading.Thread | None = None
        self._pki: ServerPki | None = None

    def _now(self) -> float:
        # Looked up on every call so that replacing ``clock`` takes effect at once.
        return self.clock()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> CtmEmulator:
        """Make the CA, bind, and serve in a daemon thread. Returns self."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        pki = create_server_pki(self._host)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.minimum_version = ssl.TLSVersion.TLSv1_2
        tls.load_cert_chain(pki.cert_file, pki.key_file)
        try:
            server = _HttpsServer((self._host, self._port), self._api, tls, self._verbose)
        except OSError:
            pki.discard()
            raise
        self._pki, self._server = pki, server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() returns within 50 ms
            name=f"ctm-emulator-{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and delete the PEM files. Idempotent."""
        server, thread, pki = self._server, self._thread, self._pki
        self._server = self._thread = self._pki = None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        if pki is not None:
            pki.discard()

    def __enter__(self) -> CtmEmulator:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    # --- where and how to connect ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._running().server_address[1])

    @property
    def base_url(self) -> str:
        """``https://127.0.0.1:PORT`` (no ``/api``), what ``CTM_BASE_URL`` takes."""
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        return f"https://{host}:{self.port}"

    @property
    def ca_pem(self) -> str:
        """PEM of the CA that signed the server certificate (a secret's ``ca_bundle``)."""
        return self._running_pki().ca_pem

    @property
    def ca_file(self) -> str:
        """Path of a file holding ``ca_pem`` (for ``verify=`` and ``curl --cacert``)."""
        return str(self._running_pki().ca_file)

    @property
    def username(self) -> str:
        """The default (first) user."""
        return self._tokens.default_username

    @property
    def password(self) -> str:
        """The default user's password."""
        return self._tokens.password_of(self.username)

    def issue_refresh_token(self, username: str | None = None) -> str:
        """A refresh token for ``username`` (default user), as ``ksctl`` would issue."""
        token, _ = self._tokens.issue_refresh_token(username or self.username)
        return token

    def mint_jwt(self, lifetime: float = 300.0, username: str | None = None) -> str:
        """A valid JWT for a static-token secret; a negative lifetime makes it already expired."""
        return self._tokens.mint_jwt(username or self.username, lifetime)

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token issued so far is refused from now on."""
        self._tokens.revoke_refresh_tokens()

    def live_refresh_tokens(self, username: str | None = None) -> int:
        """Refresh tokens still usable now (by ``clock``), of ``username`` or of every user.

        Every password grant mints one; like CTM's they live for ever unless the grant asked
        for ``refresh_token_lifetime`` / ``refresh_token_revoke_unused_in``.
        """
        return self._tokens.live_refresh_tokens(username)

    # --- the keys ------------------------------------------------------------------------------

    @property
    def keys(self) -> list[dict[str, Any]]:
        """Copies of CCKM's cached key objects, in list order."""
        return self._inventory.snapshot()

    def key(self, key_id: str) -> dict[str, Any]:
        """A copy of one cached key (CCKM id or OCID); KeyError when CCKM does not know it."""
        found = self._inventory.get(self._inventory.resolve(key_id))
        if found is None:
            raise KeyError(key_id)
        return found

    def add_keys(self, keys: Iterable[Mapping[str, Any]]) -> None:
        """Add key objects (for instance from ``generate_keys`` with another seed)."""
        self._inventory.add(keys)

    def rotate(self, key_id: str) -> str:
        """OCI rotates the key; the next refresh shows the returned new key version."""
        return self._inventory.rotate(key_id)

    def set_oci_state(self, key_id: str, state: str) -> None:
        """OCI changes the key's lifecycle state; the next refresh shows it."""
        self._inventory.set_oci_state(key_id, state)

    def delete_in_oci(self, key_id: str) -> None:
        """The key disappears from OCI; the next refresh answers 404 and CCKM forgets it."""
        self._inventory.delete_in_oci(key_id)

    def remove(self, key_id: str) -> None:
        """CCKM forgets the key: list, get and refresh answer as if it never existed."""
        self._inventory.remove(key_id)

    # --- what happened -------------------------------------------------------------------------

    @property
    def request_log(self) -> list[LoggedRequest]:
        """Every request so far, oldest first (no credentials in it)."""
        return self._log.entries()

    def refresh_count(self, key_id: str | None = None) -> int:
        """Authenticated refresh calls received, for one key (CCKM id or OCID) or in all."""
        if key_id is None:
            return self._log.refresh_count()
        with contextlib.suppress(KeyError):  # a removed key is counted by the id as given
            key_id = self._inventory.resolve(key_id)
        return self._log.refresh_count(key_id)

    @property
    def throttled_count(self) -> int:
        """Answers that carried OCI's ``TooManyRequests``."""
        return self._log.throttled

    @property
    def tokens_issued(self) -> int:
        """JWTs handed out by ``/api/v1/auth/tokens``."""
        return self._log.tokens_issued

    @property
    def peak_in_flight(self) -> int:
        """The most key calls served at the same moment since the last ``reset_log``."""
        return self._log.peak_in_flight

    @property
    def connections_opened(self) -> int:
        """TLS connections clients have opened since start (a pooled client opens few)."""
        return self._running().connections_opened

    def reset_log(self) -> None:
        """Forget the request log and zero the counters (keys and faults stay as they are)."""
        self._log.reset()

    def reset_throttle(self) -> None:
        """Start every tenancy's OCI read window afresh."""
        self._api.reset_throttle()

    # --- internals -----------------------------------------------------------------------------

    def _running(self) -> _HttpsServer:
        if self._server is None:
            raise RuntimeError("the emulator is not running: call start() first")
        return self._server

    def _running_pki(self) -> ServerPki:
        self._running()
        assert self._pki is not None
        return self._pki
