"""The simulation's runtime: virtual time, one thread at a time, replayable by seed."""

from __future__ import annotations

import time

import pytest

from cckm_refresh.runtime import map_concurrently
from devkit.sim.runtime import DeadlockError, Killed, SimRuntime


def interleaving(seed: int) -> list[str]:
    runtime = SimRuntime(seed)
    trace: list[str] = []

    def worker(name: str) -> None:
        for step in range(3):
            trace.append(f"{name}{step}")
            runtime.sleep(0)

    def main() -> None:
        tasks = [runtime.start(lambda n=n: worker(n), n) for n in "abc"]
        for task in tasks:
            task.join()

    runtime.run(main)
    return trace


def test_the_same_seed_replays_the_same_interleaving_and_others_differ() -> None:
    assert interleaving(7) == interleaving(7)
    assert len({tuple(interleaving(seed)) for seed in range(10)}) > 1


def test_sleepers_wake_in_virtual_time_order_without_waiting_for_real() -> None:
    runtime = SimRuntime()
    woke: list[tuple[str, float]] = []

    def sleeper(name: str, seconds: float) -> None:
        runtime.sleep(seconds)
        woke.append((name, runtime.monotonic()))

    def main() -> None:
        tasks = [runtime.start(lambda: sleeper("long", 3600.0), "long")]
        tasks.append(runtime.start(lambda: sleeper("short", 1.5), "short"))
        for task in tasks:
            task.join()

    began = time.monotonic()
    runtime.run(main)
    assert woke == [("short", 1.5), ("long", 3600.0)]
    assert time.monotonic() - began < 60  # an hour of virtual time, not of real time
    assert runtime.time() == runtime.epoch + 3600.0


def test_a_condition_wakes_its_waiter_and_a_timed_wait_times_out_on_the_virtual_clock() -> None:
    runtime = SimRuntime()
    condition = runtime.condition()
    seen: list[tuple[bool, float]] = []

    def waiter(timeout: float) -> None:
        with condition:
            seen.append((condition.wait(timeout), runtime.monotonic()))

    def main() -> None:
        notified = runtime.start(lambda: waiter(10.0), "notified")
        runtime.sleep(2.0)
        with condition:
            condition.notify_all()
        notified.join()
        waiter(5.0)

    runtime.run(main)
    assert seen == [(True, 2.0), (False, 7.0)]


def test_a_join_with_a_timeout_returns_at_the_timeout() -> None:
    runtime = SimRuntime()

    def main() -> float:
        runtime.start(lambda: runtime.sleep(100.0), "slow").join(timeout=4.0)
        return runtime.monotonic()

    assert runtime.run(main) == 4.0


def test_a_killed_container_s_threads_die_where_they_next_block_and_others_go_on() -> None:
    runtime = SimRuntime()
    container = object()
    progress: list[str] = []

    def victim() -> None:
        try:
            runtime.sleep(5.0)
            progress.append("victim woke")
        finally:
            progress.append("victim unwound")

    def main() -> None:
        task = runtime.spawn(victim, "victim", container)
        runtime.sleep(1.0)
        runtime.kill(container)
        task.join()
        runtime.sleep(10.0)
        progress.append("world goes on")

    runtime.run(main)
    assert progress == ["victim unwound", "world goes on"]
    assert runtime.errors == []


def test_a_thread_started_by_a_killed_container_dies_before_it_runs() -> None:
    runtime = SimRuntime()
    container = object()
    ran: list[str] = []

    def parent() -> None:
        runtime.start(lambda: ran.append("child"), "child")
        runtime.kill(container)
        runtime.sleep(0)
        ran.append("parent")

    def main() -> None:
        runtime.spawn(parent, "parent", container).join()
        runtime.sleep(1.0)

    runtime.run(main)
    assert ran == []


def test_every_thread_blocked_for_ever_is_a_deadlock() -> None:
    runtime = SimRuntime()
    condition = runtime.condition()

    def main() -> None:
        with condition:
            condition.wait()

    with pytest.raises(DeadlockError):
        runtime.run(main)


def test_an_error_in_a_thread_is_recorded_and_a_killed_one_is_not() -> None:
    runtime = SimRuntime()

    def main() -> None:
        runtime.start(lambda: 1 / 0, "broken").join()
        runtime.spawn(lambda: (_ for _ in ()).throw(Killed()), "killed", object()).join()

    runtime.run(main)
    assert [type(error) for _, _, error in runtime.errors] == [ZeroDivisionError]


def test_the_package_s_thread_helpers_run_on_the_simulation() -> None:
    runtime = SimRuntime(3)

    def slow_square(n: int) -> int:
        runtime.sleep(1.0)
        return n * n

    def main() -> tuple[list[int], float]:
        return map_concurrently(runtime, slow_square, list(range(8)), 4, "square"), runtime.now

    assert runtime.run(main) == ([n * n for n in range(8)], 2.0)
