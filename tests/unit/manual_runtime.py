"""The tests' one manual clock: a ``Runtime`` whose time moves only when told."""

from __future__ import annotations

import threading

from cckm_refresh.runtime import SystemRuntime


class ManualRuntime(SystemRuntime):
    """Real threads, a manual clock: ``now`` (``monotonic()``) moves by ``advance`` and by
    ``sleep`` (unless ``sleep_moves`` is False: a client whose back-off must not move the time
    it shares with an emulator); ``time()`` is ``epoch + now``. Sleeps are kept in ``slept``.
    Calling it reads ``time()``, so an emulator can take it as its clock. Thread-safe."""

    def __init__(
        self, start: float = 100.0, *, epoch: float = 1_800_000_000.0, sleep_moves: bool = True
    ) -> None:
        self.now = start
        self.epoch = epoch
        self.sleep_moves = sleep_moves
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.time()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch + self.now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self.slept.append(seconds)
                self.now += seconds if self.sleep_moves else 0.0

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
