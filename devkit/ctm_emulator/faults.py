"""Fault injection: what can go wrong between a client, CCKM and OCI, switchable at run time.

Tests set plain attributes on ``emulator.faults`` while the server runs. Decisions that involve
chance are drawn from a hash of (seed, kind, subject, n-th call for that subject), not from a
shared random stream, so the same seed gives the same faults however threads interleave.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class KeyFailure:
    """Answer refreshes of one key with ``status``: ``times`` more times, or always (None)."""

    status: int
    times: int | None = None


@dataclass
class Faults:
    """The switches. All are safe to change while the emulator is serving.

    - ``latency``: seconds added to every list/get/refresh (and to auth when
      ``latency_on_auth``).
    - ``tenancy_read_limit``: OCI key-management reads allowed per second per tenancy
      (a refresh costs 2, a get 1, a list 0); over it CCKM answers ``throttle_status`` (429, or
      500 when CCKM wraps the OCI error) with ``TooManyRequests`` in the body.
    - ``fail_keys``: key id (CCKM id or OCID) -> status, or KeyFailure(status, times), for
      refreshes of that key.
    - ``error_rate`` / ``error_status``: a share of list/get/refresh calls answered with a 5xx.
    - ``drop_rate`` / ``drop_keys``: calls whose connection is closed without an answer.
    - ``token_lifetime``: seconds newly issued JWTs live (CTM: 300).
    - ``expire_tokens_after_requests``: a JWT counts as expired after serving that many calls.
    - ``max_page_size``: list pages hold at most this many keys whatever ``limit`` asked.
    """

    seed: int = 0
    latency: float = 0.0
    latency_on_auth: bool = False
    tenancy_read_limit: float | None = None
    throttle_status: int = 429
    fail_keys: dict[str, int | KeyFailure] = field(default_factory=dict)
    error_rate: float = 0.0
    error_status: int = 503
    drop_rate: float = 0.0
    drop_keys: set[str] = field(default_factory=set)
    token_lifetime: float = 300.0
    expire_tokens_after_requests: int | None = None
    max_page_size: int | None = None
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    _burst: deque[int] = field(default_factory=deque, init=False, repr=False, compare=False)
    _draws: dict[tuple[str, str], int] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next ``n`` refresh calls (any key) answer ``status``; 0 drops the connection.

        Bursts queue up: ``fail_next(2, 503); fail_next(1, 429)`` fails three calls in order.
        """
        with self._lock:
            self._burst.extend([status] * n)

    def drop_next(self, n: int) -> None:
        """The next ``n`` refresh calls have their connection closed without an answer."""
        self.fail_next(n, 0)

    def fail_key(self, key_id: str, status: int = 503, times: int | None = None) -> None:
        """Refreshes of ``key_id`` answer ``status``: ``times`` times, or until cleared."""
        with self._lock:
            self.fail_keys[key_id] = KeyFailure(status, times)

    def clear(self) -> None:
        """Back to a healthy CTM (the seed and the token lifetime stay)."""
        with self._lock:
            self.latency = 0.0
            self.latency_on_auth = False
            self.tenancy_read_limit = None
            self.throttle_status = 429
            self.fail_keys.clear()
            self.error_rate = 0.0
            self.error_status = 503
            self.drop_rate = 0.0
            self.drop_keys.clear()
            self.expire_tokens_after_requests = None
            self.max_page_size = None
            self._burst.clear()

    # --- decisions, used by the emulator ------------------------------------------------------

    def take_burst(self) -> int | None:
        """The status owed to this refresh call by ``fail_next``, if any (0 means drop)."""
        with self._lock:
            return self._burst.popleft() if self._burst else None

    def take_key_failure(self, *names: str) -> int | None:
        """The status ``fail_keys`` assigns to a refresh of the key known by ``names``."""
        with self._lock:
            for name in names:
                rule = self.fail_keys.get(name)
                if rule is None:
                    continue
                if isinstance(rule, int):
                    return rule
                if rule.times is None:
                    return rule.status
                if rule.times <= 1:
                    del self.fail_keys[name]
                else:
                    self.fail_keys[name] = KeyFailure(rule.status, rule.times - 1)
                if rule.times >= 1:
                    return rule.status
        return None

    def is_dropped_key(self, *names: str) -> bool:
        """True when ``drop_keys`` names this key."""
        keys = self.drop_keys
        return any(name in keys for name in names)

    def chance(self, kind: str, subject: str, rate: float) -> bool:
        """A deterministic draw: True with probability ``rate`` for this call of ``subject``."""
        with self._lock:
            n = self._draws.get((kind, subject), 0)
            self._draws[(kind, subject)] = n + 1
        if rate <= 0:
            return False
        digest = hashlib.sha256(f"{self.seed}|{kind}|{subject}|{n}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < rate


class TenancyReadWindow:
    """OCI's per-tenancy limit on key-management reads, as a sliding one-second window.

    A throttled call spends nothing (OCI refused it before reading), so a client that backs
    off gets through once the window has moved on.
    """

    WINDOW = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads: dict[str, deque[tuple[float, int]]] = {}

    def admit(self, tenancy: str, cost: int, now: float, limit: float | None) -> bool:
        """Spend ``cost`` reads of ``tenancy`` at ``now`` if the limit allows; False if not."""
        if limit is None or cost <= 0:
            return True
        with self._lock:
            window = self._reads.setdefault(tenancy, deque())
            while window and window[0][0] <= now - self.WINDOW:
                window.popleft()
            spent = sum(reads for _, reads in window)
            if spent + cost > limit:
                return False
            window.append((now, cost))
            return True

    def reset(self) -> None:
        """Forget every read (a fresh second everywhere)."""
        with self._lock:
            self._reads.clear()
