"""What the emulator was asked, for tests and benchmarks to assert on.

Only routing facts are kept: never the Authorization header's value, never a request body
(passwords and refresh tokens travel there).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class LoggedRequest:
    """One request. ``status`` 0 means the connection was dropped without an answer.

    ``monotonic`` is when it arrived, by the API's arrival clock: ``time.monotonic()`` behind
    ``CtmEmulator``'s HTTPS, the injected clock when ``CtmApi`` is driven in process.
    """

    method: str
    path: str
    query: Mapping[str, str]
    status: int
    key_id: str | None = None
    tenancy: str | None = None
    monotonic: float = 0.0
    authorization_present: bool = False
    authenticated: bool = False
    operation: str = ""  # "token", "list", "get", "refresh", or "" for unknown routes
    grant_type: str | None = None
    throttled: bool = False
    dropped: bool = False
    error_code: str | None = None


class RequestLog:
    """Thread-safe append-only log plus the counters tests ask for most."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[LoggedRequest] = []
        self._refreshes: Counter[str] = Counter()
        self._throttled = 0
        self._tokens_issued = 0
        self._in_flight = 0
        self._peak_in_flight = 0

    def record(self, entry: LoggedRequest) -> None:
        """Append ``entry`` and update the counters."""
        with self._lock:
            self._entries.append(entry)
            if entry.operation == "refresh" and entry.key_id and entry.authenticated:
                self._refreshes[entry.key_id] += 1
            if entry.throttled:
                self._throttled += 1

    def token_issued(self) -> None:
        """Count a JWT handed out by ``/auth/tokens``."""
        with self._lock:
            self._tokens_issued += 1

    def enter(self) -> None:
        """A key call started (for the peak concurrency figure)."""
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def leave(self) -> None:
        """A key call ended."""
        with self._lock:
            self._in_flight -= 1

    def entries(self) -> list[LoggedRequest]:
        """A copy of the log, oldest first."""
        with self._lock:
            return list(self._entries)

    def refresh_count(self, key_id: str | None = None) -> int:
        """Authenticated refresh calls received, for one key or in all."""
        with self._lock:
            if key_id is None:
                return sum(self._refreshes.values())
            return self._refreshes[key_id.lower()]

    @property
    def throttled(self) -> int:
        """Calls answered with OCI's ``TooManyRequests``."""
        with self._lock:
            return self._throttled

    @property
    def tokens_issued(self) -> int:
        """JWTs handed out by the auth endpoint."""
        with self._lock:
            return self._tokens_issued

    @property
    def peak_in_flight(self) -> int:
        """The most key calls (list/get/refresh) served at once."""
        with self._lock:
            return self._peak_in_flight

    def reset(self) -> None:
        """Forget every entry and zero the counters."""
        with self._lock:
            self._entries.clear()
            self._refreshes.clear()
            self._throttled = 0
            self._tokens_issued = 0
            self._peak_in_flight = self._in_flight
