"""The guard of tests/unit/conftest.py: unit tests cannot reach the network."""

from __future__ import annotations

import socket

import pytest

from tests.unit.conftest import NetworkBlockedError


def test_the_network_is_out_of_reach_of_unit_tests() -> None:
    with socket.socket() as sock, pytest.raises(NetworkBlockedError):
        sock.connect(("192.0.2.1", 443))  # TEST-NET-1: never routed
