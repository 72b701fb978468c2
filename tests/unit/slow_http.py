"""A loopback HTTP server that answers slowly on purpose: the network side of deadline tests.

Plain sockets, one thread per connection. Each answer is a ``SlowAnswer``: how long to wait
before the headers, the body, and how to send it (all at once, byte by byte at an interval,
or endlessly). ``stop()`` ends every connection at once, so no test waits on it.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class SlowAnswer:
    status: int = 200
    body: bytes = b"{}"
    header_delay: float = 0.0  # seconds before the status line
    byte_interval: float = 0.0  # seconds between body bytes (0: all at once)
    declare_length: bool = True  # Content-Length, or a body delimited by closing
    declared_length: int | None = None  # a Content-Length other than len(body)
    endless: bool = False  # after ``body``, send filler until the client hangs up


class SlowHttpServer:
    """Serves ``answer`` to every request on 127.0.0.1; ``url`` is where."""

    def __init__(self, answer: SlowAnswer) -> None:
        self.answer = answer
        self.requests = 0
        self.bytes_sent = 0
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._accepting = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> SlowHttpServer:
        self._accepting.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._accepting.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                self._answer(connection)
            except OSError:
                return  # the client hung up: what a deadline does

    def _answer(self, connection: socket.socket) -> None:
        if not _read_request(connection):
            return
        with self._lock:
            self.requests += 1
        answer = self.answer
        if self._stop.wait(answer.header_delay):
            return
        connection.sendall(_head(answer))
        if not self._send_body(connection, answer):
            return
        while answer.endless and not self._stop.is_set():
            self._send(connection, b" " * 65536)

    def _send_body(self, connection: socket.socket, answer: SlowAnswer) -> bool:
        """Sends the body all at once or byte by byte; False if stopped on the way."""
        if answer.byte_interval <= 0:
            self._send(connection, answer.body)
            return True
        for i in range(len(answer.body)):
            if self._stop.wait(answer.byte_interval):
                return False
            self._send(connection, answer.body[i : i + 1])
        return True

    def _send(self, connection: socket.socket, data: bytes) -> None:
        connection.sendall(data)
        with self._lock:
            self.bytes_sent += len(data)


def _read_request(connection: socket.socket) -> bool:
    """Reads up to the end of the request's headers; False if the client hung up first."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        if not chunk:
            return False
        received += chunk
    return True


def _head(answer: SlowAnswer) -> bytes:
    """The status line and headers, with the Content-Length the answer declares, if any."""
    headers = [f"HTTP/1.1 {answer.status} X", "Content-Type: application/json"]
    if answer.declare_length:
        length = answer.declared_length
        headers.append(f"Content-Length: {len(answer.body) if length is None else length}")
    headers.append("Connection: close")
    return ("\r\n".join(headers) + "\r\n\r\n").encode()
