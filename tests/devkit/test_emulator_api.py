"""The emulator's API driven in process (``CtmApi.handle``), on a hand-moved clock: no sockets,
no sleeps, as a simulation drives it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from devkit.ctm_emulator import Faults, generate_keys
from devkit.ctm_emulator.api import ApiReply, ApiRequest, CtmApi
from devkit.ctm_emulator.inventory import KeyInventory
from devkit.ctm_emulator.request_log import RequestLog
from devkit.ctm_emulator.tokens import TokenAuthority
from tests.fixtures.ctm import ManualClock

USER, PASSWORD = "svc-key-refresh", "password"
KEYS = "/api/v1/cckm/oci/keys"
TOKENS = "/api/v1/auth/tokens"


class InProcessCtm:
    """A ``CtmApi`` over 30 keys (seed 1) whose time is a ``ManualClock``, latency included."""

    def __init__(self, seed: int = 0, start: float = 1_800_000_000.0) -> None:
        self.clock = ManualClock(start=start)
        self.faults = Faults(seed=seed)
        self.inventory = KeyInventory(self.clock, seed=seed)
        self.inventory.add(generate_keys(30, seed=1))
        self.tokens = TokenAuthority({USER: PASSWORD}, self.clock)
        self.log = RequestLog()
        self.api = CtmApi(
            inventory=self.inventory,
            tokens=self.tokens,
            faults=self.faults,
            log=self.log,
            clock=self.clock,
            sleep=self.clock.advance,
        )
        self.jwt = self.tokens.mint_jwt(USER, 300)

    @property
    def keys(self) -> list[dict[str, Any]]:
        return self.inventory.snapshot()

    def call(self, method: str, path: str, **query: object) -> ApiReply:
        return self.api.handle(
            ApiRequest(
                method,
                path,
                {name: str(value) for name, value in query.items()},
                authorization=f"Bearer {self.jwt}",
            )
        )

    def login(self, **grant: object) -> ApiReply:
        body = {"grant_type": "password", "username": USER, "password": PASSWORD, **grant}
        return self.api.handle(ApiRequest("POST", TOKENS, body=json.dumps(body).encode()))

    def listed(self, **query: object) -> list[str]:
        """The ids a 200 list answer holds, in its order."""
        reply = self.call("GET", KEYS, **query)
        assert reply.status == 200, reply.body
        assert reply.body is not None
        return [key["id"] for key in reply.body["resources"]]

    def refresh(self, key_id: str) -> ApiReply:
        return self.call("POST", f"{KEYS}/{key_id}/refresh")


@pytest.fixture
def ctm() -> InProcessCtm:
    return InProcessCtm()


def test_the_request_log_is_stamped_by_the_injected_clock(ctm: InProcessCtm) -> None:
    # Given a call that takes 0.25 s of injected latency, 10 s after the clock started
    ctm.faults.latency = 0.25
    ctm.clock.advance(10)
    # When two calls are made
    ctm.call("GET", KEYS)
    ctm.refresh(ctm.keys[0]["id"])
    # Then each arrival is stamped on the same clock, latency included
    assert [e.monotonic for e in ctm.log.entries()] == [1_800_000_010.0, 1_800_000_010.25]
