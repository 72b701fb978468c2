"""A ``Runtime`` for single-threaded unit tests: a clock that moves only when slept on."""

from __future__ import annotations

from cckm_refresh.runtime import SystemRuntime


class ManualRuntime(SystemRuntime):
    """Real threads, a manual clock (``now``); what was slept is kept in ``slept``."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_800_000_000.0 + self.now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.slept.append(seconds)
            self.now += seconds
