"""A local HTTPS chat-webhook receiver (Slack/Teams stand-in) for tests and the demo.

It answers each POST with the next scripted status (200 when the script is empty), records
the JSON bodies, and serves TLS with its own throw-away CA (``ca_file``). With ``hang`` set it
is a chat service that has stopped answering: it accepts each POST, reads it, counts it in
``hung`` and never replies (until the sink stops).
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devkit.ctm_emulator.certificates import ServerPki, create_server_pki


class WebhookSink:
    """``with WebhookSink() as sink: sink.url, sink.ca_file, sink.received, sink.script``;
    ``sink.hang = True`` and ``sink.hung`` for a webhook that never answers."""

    def __init__(self, path: str = "/services/T000/B000/XXXXSECRETXXXX") -> None:
        self.path = path
        self.script: list[int] = []
        self.received: list[dict[str, Any]] = []
        self.hang = False
        self.hung = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pki: ServerPki | None = None
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}{self.path}"

    @property
    def ca_file(self) -> str:
        assert self._pki is not None
        return str(self._pki.ca_file)

    def start(self) -> WebhookSink:
        sink = self
        self._pki = create_server_pki("127.0.0.1")

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if sink.hang:
                    with sink._lock:
                        sink.hung += 1
                    sink._stopping.wait()  # the client's own timeout is what ends its wait
                    return
                with sink._lock:
                    status = sink.script.pop(0) if sink.script else 200
                    if status < 300 and self.path == sink.path:
                        sink.received.append(json.loads(body or b"{}"))
                self.send_response(status if self.path == sink.path else 404)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._pki.cert_file, self._pki.key_file)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="webhook-sink").start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._pki is not None:
            self._pki.discard()

    def __enter__(self) -> WebhookSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
