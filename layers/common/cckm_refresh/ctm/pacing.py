"""The hook through which a caller paces every attempt of a CTM call (first tries and retries).

The refresh engine passes a per-tenancy pacer so that retries spend the same OCI budget as
first attempts; the transport calls it and knows nothing about tenancies.
"""

from __future__ import annotations

from typing import Protocol


class Pacer(Protocol):
    def wait(self) -> None:
        """Block until the next attempt may start."""

    def on_throttled(self) -> None:
        """The attempt was throttled (429 or ``TooManyRequests`` in the body)."""

    def on_success(self) -> None:
        """The attempt got an answer that was not a throttle."""


class Unpaced:
    """A pacer that never waits: list calls, token calls, tests."""

    def wait(self) -> None:
        return None

    def on_throttled(self) -> None:
        return None

    def on_success(self) -> None:
        return None


UNPACED = Unpaced()
