"""Time and threads as the refresh path sees them: the ``Runtime`` port and the ``Deadline`` value.

Everything on the run path that reads a clock, sleeps, starts a thread or waits for another
thread asks a ``Runtime``: ``SYSTEM`` in Lambda and in the CLI, a simulated one in the
whole-system simulation (``devkit/sim``), where one thread runs at a time on a virtual clock.
A short lock that is never held across a wait may stay a ``threading.Lock``; a wait for
another thread (a sign-in in progress, a free slot for a call) is a ``Runtime.condition()``.

A ``Deadline`` is one monotonic instant on its runtime's clock, handed explicitly from the
handler down to the last HTTP call; ``before(margin)`` derives the earlier ones.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Task(Protocol):
    """A started thread of work."""

    def join(self, timeout: float | None = None) -> None: ...


class Condition(Protocol):
    """What the run path uses of ``threading.Condition``."""

    def __enter__(self) -> bool: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def notify_all(self) -> None: ...


class Runtime(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (deadlines, pacing)."""

    def time(self) -> float:
        """Seconds since the epoch (timestamps, JWT expiry, the pace handed between containers)."""

    def sleep(self, seconds: float) -> None: ...

    def random(self) -> float:
        """Uniform in [0, 1): the jitter of back-offs (seeded in a simulation)."""

    def start(self, target: Callable[[], None], name: str) -> Task:
        """Run ``target`` in a thread of its own."""

    def condition(self) -> Condition:
        """A condition variable with a lock of its own."""


class SystemRuntime:
    """The real clock and real threads."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def random(self) -> float:
        return random.random()  # noqa: S311 - jitter, not a secret

    def start(self, target: Callable[[], None], name: str) -> Task:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    def condition(self) -> Condition:
        return threading.Condition()


SYSTEM: Runtime = SystemRuntime()


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    """``2026-11-28T06:00:00.123Z``: ISO 8601 UTC, milliseconds, so text order is time order."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_now(runtime: Runtime = SYSTEM) -> str:
    return iso(datetime.fromtimestamp(runtime.time(), UTC))


@dataclass(frozen=True)
class Deadline:
    """An instant (``runtime.monotonic()``) that work must end before."""

    at: float
    runtime: Runtime = field(default=SYSTEM, repr=False, compare=False)

    @classmethod
    def within(cls, seconds: float, runtime: Runtime = SYSTEM) -> Deadline:
        return cls(runtime.monotonic() + seconds, runtime)

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - self.runtime.monotonic()

    def passed(self) -> bool:
        return self.remaining() <= 0

    def before(self, margin: float) -> Deadline:
        """The instant ``margin`` seconds earlier."""
        return replace(self, at=self.at - margin)


def map_concurrently(
    runtime: Runtime, work: Callable[[T], R], items: Sequence[T], workers: int, name: str
) -> list[R]:
    """``[work(item) for item in items]`` with up to ``workers`` threads; the first exception
    (by item order) is raised once every thread has ended."""
    results: list[R | None] = [None] * len(items)
    errors: dict[int, BaseException] = {}
    pending = iter(enumerate(items))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                picked = next(pending, None)
            if picked is None:
                return
            index, item = picked
            try:
                results[index] = work(item)
            except BaseException as error:  # re-raised in the caller's thread
                errors[index] = error

    tasks = [runtime.start(worker, f"{name}-{i}") for i in range(min(workers, len(items)))]
    for task in tasks:
        task.join()
    if errors:
        raise errors[min(errors)]
    return results  # type: ignore[return-value]  # every slot was filled
