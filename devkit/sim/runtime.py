"""A ``Runtime`` on a virtual clock where one thread runs at a time: deterministic by seed.

The threads are real (the code under test blocks where it would block in Lambda), but a baton
decides which one runs: a thread runs until it sleeps, waits on a condition, joins another or
ends, and only then is the next one picked, at random (by the seed) among those ready at the
current virtual instant; when none is ready, the clock jumps to the earliest timer. The same
seed gives the same interleaving, so a failing schedule can be replayed. The model is
Shuttle's (randomised concurrency testing over real threads with their own primitives) and
FoundationDB's simulation (virtual time, seeded).

A container can be killed (a Lambda timeout or an out-of-memory kill): each of its threads
raises ``Killed`` (a ``BaseException``: the code under test does not catch it, as nothing
catches SIGKILL) where it next blocks or yields, and never runs on.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

EPOCH = 1_800_000_000.0  # the virtual wall clock at virtual time 0 (2027-01-15)
STACK_SIZE = 512 * 1024  # many threads live at once; none of them recurses deeply


class Killed(BaseException):
    """The thread's container is gone: nothing in it runs on."""


class DeadlockError(RuntimeError):
    """Every thread is blocked and no timer can wake one."""


@dataclass(eq=False)
class SimThread:
    name: str
    container: Any
    go: threading.Event = field(default_factory=threading.Event)
    done: bool = False
    ready: bool = False  # in the ready list (a thread is there once at most)
    token: int = 0  # the current block's id: a timer of an older block is stale
    timed_out: bool = False
    joiners: list[SimThread] = field(default_factory=list)
    error: BaseException | None = None


class SimRuntime:
    """Virtual time and baton-passing threads (``cckm_refresh.runtime.Runtime``)."""

    def __init__(self, seed: int = 0, *, epoch: float = EPOCH) -> None:
        self.now = 0.0
        self.epoch = epoch
        self.rng = random.Random(seed)
        self.switches = 0
        # Errors a thread raised: the world's own (container None) are the simulation's bugs;
        # a container's are its invocation's failures (Lambda sees them).
        self.errors: list[tuple[str, Any, BaseException]] = []
        self._ready: list[SimThread] = []
        self._timers: list[tuple[float, int, int, SimThread]] = []
        self._order = itertools.count()
        self._current: SimThread | None = None
        self._dead: set[int] = set()  # ids of killed containers
        self._outside = threading.Event()
        self._root: SimThread | None = None
        self._root_result: list[Any] = []
        self._failure: BaseException | None = None
        self._live: set[SimThread] = set()
        self._steps_left: dict[int, int] = {}  # container id -> steps before it is killed

    # --- the Runtime port -------------------------------------------------------------------

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch + self.now

    def sleep(self, seconds: float) -> None:
        me = self.current
        if seconds <= 0:
            self._make_ready(me)
        else:
            self._block(me, self.now + seconds)
        self._switch(me)

    def random(self) -> float:
        return self.rng.random()

    def start(self, target: Callable[[], None], name: str) -> SimTask:
        return SimTask(self, self._spawn(target, name, self.current.container))

    def condition(self) -> SimCondition:
        return SimCondition(self)

    # --- what the world uses ------------------------------------------------------------------

    @property
    def current(self) -> SimThread:
        if self._current is None or threading.current_thread().name != self._current.name:
            raise RuntimeError("not called from the simulation's running thread")
        return self._current

    def checkpoint(self) -> None:
        """Let the other threads ready now run first (a point where a kill can land)."""
        self.sleep(0)

    def spawn(self, target: Callable[[], None], name: str, container: Any = None) -> SimTask:
        """A thread of ``container`` (a Lambda container; None: the world itself)."""
        return SimTask(self, self._spawn(target, name, container))

    def kill(self, container: Any) -> None:
        """Every thread of ``container`` dies where it next blocks or yields; those blocked
        now are woken to die at once."""
        self._dead.add(id(container))
        for thread in list(self._live):
            if thread.container is container and thread is not self._current:
                self._wake(thread)

    def kill_after(self, container: Any, steps: int) -> None:
        """Kill ``container`` when its threads have resumed ``steps`` times: at any step."""
        self._steps_left[id(container)] = steps

    def is_dead(self, container: Any) -> bool:
        return container is not None and id(container) in self._dead

    def run(self, main: Callable[[], Any]) -> Any:
        """Run ``main`` as the first thread; return its result once it ends (threads still
        blocked then stay frozen). Raises what ``main`` raised, or ``DeadlockError``."""
        self._root_result.clear()
        self._failure = None
        stack = threading.stack_size(STACK_SIZE)
        try:
            self._root = self._spawn(lambda: self._root_result.append(main()), "sim-main", None)
            self._outside.clear()
            self._hand_on()
            self._outside.wait()
        finally:
            threading.stack_size(stack)
        if self._failure is not None:
            raise self._failure
        return self._root_result[0]

    # --- the baton --------------------------------------------------------------------------

    def _spawn(self, target: Callable[[], None], name: str, container: Any) -> SimThread:
        thread = SimThread(f"sim-{next(self._order)}-{name}", container)

        def body() -> None:
            thread.go.wait()
            thread.go.clear()
            try:
                self._alive(thread)
                target()
            except Killed:
                pass
            except BaseException as error:
                thread.error = error
                self.errors.append((thread.name, thread.container, error))
                if thread is self._root:
                    self._failure = error
            finally:
                self._finish(thread)

        threading.Thread(target=body, name=thread.name, daemon=True).start()
        self._live.add(thread)
        self._make_ready(thread)
        return thread

    def _finish(self, thread: SimThread) -> None:
        thread.done = True
        self._live.discard(thread)
        for joiner in thread.joiners:
            self._wake(joiner)
        thread.joiners.clear()
        if thread is self._root:
            self._current = None
            self._outside.set()
            return
        self._hand_on()

    def _block(self, thread: SimThread, at: float | None = None) -> None:
        """``thread`` is about to block, until woken or, with ``at``, until then."""
        thread.token += 1
        thread.timed_out = False
        if at is None:
            return
        heapq.heappush(self._timers, (at, next(self._order), thread.token, thread))

    def _wake(self, thread: SimThread) -> None:
        """Make a blocked thread ready (its timer, if any, goes stale)."""
        if not thread.ready:
            thread.token += 1
            self._make_ready(thread)

    def _make_ready(self, thread: SimThread) -> None:
        if not thread.ready and not thread.done:
            thread.ready = True
            self._ready.append(thread)

    def _switch(self, me: SimThread) -> None:
        """``me`` is blocked or has yielded: run the next thread, and resume when picked."""
        if self._hand_on() is not me:
            me.go.wait()
            me.go.clear()
        self._alive(me)

    def _alive(self, thread: SimThread) -> None:
        key = id(thread.container)
        if key in self._steps_left:
            self._steps_left[key] -= 1
            if self._steps_left[key] <= 0:
                del self._steps_left[key]
                self.kill(thread.container)
        if self.is_dead(thread.container):
            raise Killed

    def _hand_on(self) -> SimThread | None:
        """Give the baton to the next ready thread (advancing the clock to a timer if none is);
        the thread picked. Nothing the caller does after this may touch shared state."""
        nxt = self._pick()
        if nxt is None:
            return None
        self.switches += 1
        previous, self._current = self._current, nxt
        if nxt is not previous:
            nxt.go.set()
        return nxt

    def _pick(self) -> SimThread | None:
        while not self._ready:
            if not self._timers:
                self._deadlock()
                return None
            at, _, token, thread = heapq.heappop(self._timers)
            if token != thread.token or thread.done:
                continue  # woken before its timer
            self.now = max(self.now, at)
            thread.timed_out = True
            thread.token += 1
            self._make_ready(thread)
        # Dead containers' threads first: they only unwind, and must not hold anything up.
        index = next(
            (i for i, t in enumerate(self._ready) if self.is_dead(t.container)),
            None,
        )
        if index is None:
            index = self.rng.randrange(len(self._ready))
        thread = self._ready.pop(index)
        thread.ready = False
        return thread

    def _deadlock(self) -> None:
        if self._root is not None and not self._root.done:
            self._failure = DeadlockError("every thread is blocked and no timer is set")
            self._current = None
            self._outside.set()


class SimTask:
    """A started simulation thread."""

    def __init__(self, runtime: SimRuntime, thread: SimThread) -> None:
        self._runtime = runtime
        self.thread = thread

    def join(self, timeout: float | None = None) -> None:
        runtime, me = self._runtime, self._runtime.current
        if self.thread.done:
            return
        self.thread.joiners.append(me)
        runtime._block(me, None if timeout is None else runtime.now + max(timeout, 0.0))
        try:
            runtime._switch(me)
        finally:
            if me in self.thread.joiners:
                self.thread.joiners.remove(me)


class SimCondition:
    """``threading.Condition`` on the simulation's baton (its lock is the baton's too)."""

    def __init__(self, runtime: SimRuntime) -> None:
        self._runtime = runtime
        self._owner: SimThread | None = None
        self._lockers: list[SimThread] = []
        self._waiters: list[SimThread] = []

    def __enter__(self) -> bool:
        self._acquire()
        return True

    def __exit__(self, *exc: object) -> None:
        self._release()

    def wait(self, timeout: float | None = None) -> bool:
        runtime, me = self._runtime, self._runtime.current
        self._release()
        self._waiters.append(me)
        runtime._block(me, None if timeout is None else runtime.now + max(timeout, 0.0))
        try:
            runtime._switch(me)
        finally:
            if me in self._waiters:
                self._waiters.remove(me)
        self._acquire()
        return not me.timed_out

    def notify_all(self) -> None:
        for waiter in self._waiters:
            self._runtime._wake(waiter)
        self._waiters.clear()

    def notify(self, n: int = 1) -> None:
        for waiter in self._waiters[:n]:
            self._runtime._wake(waiter)
        del self._waiters[:n]

    def _acquire(self) -> None:
        runtime, me = self._runtime, self._runtime.current
        while self._owner is not None and self._owner is not me:
            self._lockers.append(me)
            runtime._block(me)
            try:
                runtime._switch(me)
            finally:
                if me in self._lockers:
                    self._lockers.remove(me)
        self._owner = me

    def _release(self) -> None:
        if self._owner is not self._runtime.current:
            return  # a killed thread unwinding through a lock it did not get back
        self._owner = None
        if self._lockers:
            self._runtime._wake(self._lockers.pop(0))
