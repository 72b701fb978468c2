"""The ``Pacer`` protocol: how a caller paces every attempt of a CTM call (first tries and retries).

The refresh engine passes a tenancy's pacer (``ratelimit.TenancyPacer``) so that retries spend
the same OCI budget as first attempts; the transport calls it and knows nothing of tenancies.
"""

from __future__ import annotations

from typing import Protocol

from cckm_refresh.runtime import Deadline


class Pacer(Protocol):
    def wait(self, latest_start: Deadline) -> bool:
        """Block until the next attempt may leave, if that is by ``latest_start``; otherwise
        return False at once, without waiting and without taking a slot."""

    def throttled(self) -> None:
        """The attempt was throttled (429, or ``TooManyRequests`` in the body)."""

    def answered(self) -> None:
        """The attempt got an answer that was not a throttle."""


class Unpaced:
    """Every attempt may leave at once: list, get and token calls."""

    def wait(self, latest_start: Deadline) -> bool:
        return not latest_start.passed()

    def throttled(self) -> None:
        return None

    def answered(self) -> None:
        return None


UNPACED = Unpaced()
