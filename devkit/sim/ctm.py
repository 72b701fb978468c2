"""CTM for the simulation: the CTM emulator's API answering the real client, in process.

``SimCtm`` is the emulator (``devkit.ctm_emulator``: inventory, JWT authority, faults,
per-tenancy OCI read window) on the simulation's clock, and ``adapter`` is the requests
adapter the client's session sends through instead of the network. A request reaches the
emulator when it is sent (that is when OCI's window counts it); its answer comes back after
the call's latency, or, when the latency passes the client's read timeout, a timeout does.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from devkit.ctm_emulator.api import ApiRequest, CtmApi
from devkit.ctm_emulator.faults import Faults
from devkit.ctm_emulator.inventory import KeyInventory
from devkit.ctm_emulator.request_log import RequestLog
from devkit.ctm_emulator.tokens import TokenAuthority
from devkit.sim.runtime import SimRuntime

USERS = {"svc-key-refresh": "sim-password"}
SECRET = json.dumps({"username": "svc-key-refresh", "password": "sim-password"})


class SimCtm:
    """The CTM the simulated containers call; ``latency`` (seconds) and ``jitter`` (its
    fraction drawn uniformly by the seed) shape every answer's time."""

    def __init__(
        self,
        runtime: SimRuntime,
        keys: Iterable[Mapping[str, Any]],
        *,
        seed: int = 0,
        latency: float = 0.2,
        jitter: float = 0.25,
        token_lifetime: float = 300.0,
    ) -> None:
        self.runtime = runtime
        self.latency = latency
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.faults = Faults(seed=seed, token_lifetime=token_lifetime)
        self.inventory = KeyInventory(runtime.time, seed=seed)
        self.inventory.add(keys)
        self.log = RequestLog()
        self.api = CtmApi(
            inventory=self.inventory,
            tokens=TokenAuthority(USERS, runtime.time),
            faults=self.faults,
            log=self.log,
            clock=runtime.time,
            sleep=runtime.sleep,
            arrival_clock=runtime.monotonic,
        )

    def adapter(self) -> SimCtmAdapter:
        return SimCtmAdapter(self)

    def refreshes(self) -> list[tuple[str | None, str | None, float]]:
        """(tenancy, key id, arrival) of every authenticated refresh call CTM received."""
        return [
            (entry.tenancy, entry.key_id, entry.monotonic)
            for entry in self.log.entries()
            if entry.operation == "refresh" and entry.authenticated
        ]


class SimCtmAdapter(BaseAdapter):
    """A requests adapter whose every request is answered by ``SimCtm``."""

    def __init__(self, ctm: SimCtm) -> None:
        super().__init__()
        self._ctm = ctm

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        ctm, runtime = self._ctm, self._ctm.runtime
        parts = urlsplit(str(request.url))
        body = request.body if isinstance(request.body, bytes) else str(request.body or "").encode()
        reply = ctm.api.handle(
            ApiRequest(
                method=str(request.method),
                path=parts.path,
                query=dict(parse_qsl(parts.query)),
                authorization=request.headers.get("Authorization"),
                body=body,
            )
        )
        latency = ctm.latency * (1 + ctm.jitter * (2 * ctm.rng.random() - 1))
        timeout = _read_timeout(kwargs.get("timeout"))
        runtime.sleep(min(latency, timeout))
        if latency > timeout:
            raise requests.exceptions.ReadTimeout("the simulated CTM answered too late")
        if reply.drop:
            raise requests.exceptions.ConnectionError("the simulated CTM dropped the connection")
        content = reply.text if reply.text is not None else json.dumps(reply.body or {}).encode()
        response = requests.Response()
        response.status_code = reply.status
        response.headers = CaseInsensitiveDict(
            {"Content-Type": "application/json", "Content-Length": str(len(content))}
        )
        response._content = content
        response.url = str(request.url)
        response.request = request
        return response

    def close(self) -> None:
        return None


def _read_timeout(timeout: Any) -> float:
    """The seconds a request may wait for its answer (urllib3's Timeout or a number)."""
    for name in ("total", "read_timeout"):
        value = getattr(timeout, name, None)
        if isinstance(value, int | float):
            return float(value)
    return float(timeout) if isinstance(timeout, int | float) else float("inf")
