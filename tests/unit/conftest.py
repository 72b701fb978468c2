"""Unit tests run without a network: a connection to anything but this machine fails at once.

Fakes stand in for CTM and AWS here; the few tests that need a socket (a slow loopback server
for deadlines) use 127.0.0.1. Real HTTP to the emulators is for tests/integration.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest


class NetworkBlockedError(RuntimeError):
    """A unit test tried to reach the network."""


def _loopback(address: Any) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address):
            raise NetworkBlockedError(f"unit tests do not reach the network ({address!r})")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
