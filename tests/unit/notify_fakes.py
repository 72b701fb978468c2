"""Fakes for the notify unit tests: the ledger's rules in memory, an SNS client that records, and a
chat service on a manual clock (a POST takes as long as it is scripted to, or times out).

The clock only moves when a fake POST takes time or the webhook sleeps, so every test of a
deadline is exact and instant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from cckm_refresh.notify.delivery import Claim
from cckm_refresh.notify.events import EventType, Notification, Severity
from cckm_refresh.notify.webhook import Webhook
from cckm_refresh.runtime import Deadline
from tests.unit.manual_runtime import ManualRuntime

URL = "https://hooks.example.com/services/T000/B000/SECRETPART"
HANGS = math.inf  # a POST that never gets an answer


def note(n: int = 1) -> Notification:
    """A distinct KEY_ROTATED notification for key ``k<n>``."""
    return Notification(
        event_type=EventType.KEY_ROTATED,
        severity=Severity.INFO,
        subject=f"[INFO] OCI key k{n} rotated",
        summary=f"OCI key k{n} rotated: version v1 -> v2",
        dedupe_key=f"KEY_ROTATED#k{n}#v2",
    )


@dataclass
class FakeLedger:
    """The ledger's rules in memory: a claim is free when absent or FAILED."""

    states: dict[str, str] = field(default_factory=dict)
    broken_marks: bool = False

    def claim(self, dedupe_key: str, end: Deadline) -> Claim:
        state = self.states.get(dedupe_key)
        if state == "SENT":
            return Claim.SENT
        if state == "SENDING":
            return Claim.IN_FLIGHT
        self.states[dedupe_key] = "SENDING"
        return Claim.CLAIMED

    def mark_sent(self, dedupe_key: str, message_id: str) -> None:
        if self.broken_marks:
            raise ConnectionError("DynamoDB unreachable")
        self.states[dedupe_key] = "SENT"

    def release(self, dedupe_key: str) -> None:
        if self.broken_marks:
            raise ConnectionError("DynamoDB unreachable")
        self.states[dedupe_key] = "FAILED"


@dataclass
class FakeSns:
    """SNS's client: records the subjects it took, in ``journal`` too when given one; refuses
    every message when ``fail``, and those of a ``refused`` event type."""

    fail: bool = False
    refused: frozenset[str] = frozenset()
    subjects: list[str] = field(default_factory=list)
    journal: list[str] | None = None

    def publish(self, **message: Any) -> dict[str, str]:
        event_type = message["MessageAttributes"]["event_type"]["StringValue"]
        if self.fail or event_type in self.refused:
            raise RuntimeError("SNS is down")
        self.subjects.append(message["Subject"])
        if self.journal is not None:
            self.journal.append(f"sns {message['Subject']}")
        return {"MessageId": f"m{len(self.subjects)}"}


@dataclass
class FakeResponse:
    status_code: int


@dataclass
class ClockedSession:
    """A chat service behind requests: each POST takes ``delay`` seconds of the runtime's
    clock, then answers ``status`` (the default when the script is empty); a POST whose delay
    reaches its timeout waits the timeout and raises ``requests.ReadTimeout``, as requests
    does. An exception in the script is raised at once. ``taken``: the texts it answered 2xx."""

    runtime: ManualRuntime = field(default_factory=ManualRuntime)
    script: list[Any] = field(default_factory=list)
    delay: float = 0.0
    status: int = 200
    posts: list[dict[str, Any]] = field(default_factory=list)
    taken: list[str] = field(default_factory=list)
    journal: list[str] | None = None

    def post(self, url: str, **kwargs: Any) -> FakeResponse:
        self.posts.append({"url": url, "at": self.runtime.now} | kwargs)
        if self.journal is not None:
            self.journal.append(f"webhook {kwargs['json']['text']}")
        answer = self.script.pop(0) if self.script else self.status
        if isinstance(answer, Exception):
            raise answer
        if self.delay >= kwargs["timeout"]:
            self.runtime.now += kwargs["timeout"]
            raise requests.ReadTimeout(f"HTTPSConnectionPool: read timed out ({url})")
        self.runtime.now += self.delay
        if answer < 300:
            self.taken.append(kwargs["json"]["text"])
        return FakeResponse(answer)

    @property
    def timeouts(self) -> list[float]:
        return [post["timeout"] for post in self.posts]


def clocked_webhook(
    session: ClockedSession, url: str = URL, rng: Callable[[], float] = lambda: 1.0
) -> Webhook:
    """The real webhook over ``session``, on the session's runtime."""
    return Webhook(lambda: url, session, session.runtime, rng=rng)


def within(session: ClockedSession, seconds: float = 60.0) -> Deadline:
    """The deadline ``seconds`` from now on the session's clock."""
    return Deadline.within(seconds, session.runtime)


@dataclass
class Counted:
    """The metrics a component added, by name."""

    values: dict[str, int] = field(default_factory=dict)

    def __call__(self, name: str, value: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + value
