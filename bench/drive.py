"""One run of the refresh function as deployed, driven as Lambda drives it, and measured.

The schedule fires at t=0 as a direct invocation; the model of Lambda's SQS poller
(``devkit.lambda_poller``) delivers what the function queues to handler containers
(``bench.world.ContainerPool``) until the queues drain. What the run did is read afterwards
from the emulator's request log, the containers' counters and the run's ``RUN`` item.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bench.figures import CpuShare
from bench.world import (
    FUNCTION_TIMEOUT,
    ContainerPool,
    CtmProcess,
    World,
    machine_cpu_seconds,
    process_cpu_seconds,
)
from cckm_refresh.table.items import RunState
from cckm_refresh.table.runs import RunBook

SCHEDULED_TIME = "2026-11-28T06:00:00Z"
RUN_ID = f"schedule-{SCHEDULED_TIME}"
# The poller wakes at once when an invocation ends or a message is sent (Lambda long-polls:
# moto's process signals each send); between, it polls moto this often (each poll costs moto
# ~3.5 ms of CPU, which the handlers need more).
POLL_INTERVAL = 0.25


def schedule(execution_id: str = "bench-scale") -> dict[str, Any]:
    """The scheduler's event: every key (selector all), the run ``RUN_ID``."""
    return {
        "scheduled_time": SCHEDULED_TIME,
        "execution_id": execution_id,
        "request": {"selector": {"all": True}},
    }


@contextmanager
def cpu_meter(parties: Mapping[str, Callable[[], float]]) -> Iterator[list[CpuShare]]:
    """Measure the CPU ``parties`` (name -> CPU seconds so far) use inside the block."""
    before = {name: read() for name, read in parties.items()}
    busy_before, _ = machine_cpu_seconds()
    started = time.monotonic()
    out: list[CpuShare] = []
    try:
        yield out
    finally:
        busy_after, _ = machine_cpu_seconds()
        out.append(
            CpuShare(
                wall=time.monotonic() - started,
                parties={name: read() - before[name] for name, read in parties.items()},
                machine_busy=busy_after - busy_before,
                cores=os.cpu_count() or 1,
            )
        )


def _driver_cpu() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Drive:
    """One run driven through the poller: what it did, what it cost, where the CPU went."""

    t0: float
    report: Any  # devkit.lambda_poller.PollerReport
    pool: ContainerPool
    cpu: CpuShare
    log: list[Any]  # the emulator's request log
    polled: Mapping[str, int]  # SQS calls the poller made
    stack: Any  # devkit.aws_local.LocalAwsStack: the run's table and queues

    @property
    def last_end(self) -> float:
        """When the last invocation's answer was applied (monotonic)."""
        return max((i.ended for i in self.report.invocations), default=self.t0)

    def seconds(self) -> float:
        return self.last_end - self.t0

    def refreshes(self) -> Counter[str]:
        """Successful refresh calls per key id, from the emulator's request log."""
        return Counter(
            str(e.key_id).lower()
            for e in self.log
            if e.operation == "refresh" and e.authenticated and 200 <= e.status < 300
        )

    def run_state(self, run_id: str = RUN_ID) -> RunState | None:
        """The run's ``RUN`` item as the package reads it (None: there is none)."""
        dynamodb = self.stack.client("dynamodb")
        # Retention is what writes give items; reading takes none.
        return RunBook(dynamodb, self.stack.table_name, retention_days=1).run_state(run_id)


def run_status(state: RunState | None) -> str:
    """A run's status as the figures name it."""
    return "no RUN item" if state is None else str(state.status)


def run_notes(states: Mapping[str, RunState | None]) -> list[str]:
    """A line per run: its status and counts."""
    return [
        f"run {run_id}: no RUN item, refreshed ?, failed ?"
        if state is None
        else f"run {state.run_id}: {state.status}, refreshed {state.counts.refreshed}, "
        f"failed {state.counts.failed}"
        for run_id, state in states.items()
    ]


def drive(
    world: World,
    ctm: CtmProcess,
    stack: Any,
    env: Mapping[str, str],
    schedule: Mapping[str, Any],
    *,
    pipeline: Sequence[Mapping[str, Any]] = (),
    timeout: float = 600.0,
    during: Callable[[ContainerPool, threading.Event], None] | None = None,
    redeliver_crashed_after: int | None = None,
) -> Drive:
    """Fire the schedule (and send the pipeline messages) at t=0, drain, and measure."""
    from devkit.lambda_poller import LambdaPoller, mappings_from_template

    pool = ContainerPool("refresh", env, timeout_seconds=FUNCTION_TIMEOUT)
    mappings = mappings_from_template(stack)
    ctm.reset_throttle()
    ctm.reset_log()
    sqs = stack.client("sqs")
    polled = _count_calls(sqs)  # the poller's own calls (Lambda's, not the function's)
    with (
        cpu_meter(_cpu_parties(world, ctm, pool)) as measured,
        LambdaPoller(
            sqs,
            mappings,
            pool,
            region=stack.region,
            poll_interval=POLL_INTERVAL,
            redeliver_crashed_after=redeliver_crashed_after,
            sent=world.moto.sends.wait,
        ) as poller,
    ):
        t0 = time.monotonic()
        poller.invoke(schedule)
        _send_pipeline(stack, pipeline)
        report = _drain_beside(poller, pool, during, timeout)
        pool.close()
    for crash in report.crashes:
        print(f"  ! {crash.source} invocation crashed: {crash.error!r}", flush=True)
    return Drive(t0, report, pool, measured[0], ctm.request_log, dict(polled), stack)


def _cpu_parties(
    world: World, ctm: CtmProcess, pool: ContainerPool
) -> dict[str, Callable[[], float]]:
    """Each party of a driven run, and how to read the CPU seconds it has used so far."""
    return {
        "moto": lambda: process_cpu_seconds(world.moto.pid),
        "CTM emulator": lambda: process_cpu_seconds(ctm.pid),
        "handler containers": pool.cpu_seconds,
        "driver (poller)": _driver_cpu,
    }


def _count_calls(sqs: Any) -> Counter[str]:
    """A counter of the calls ``sqs`` makes from now on, by operation."""
    calls: Counter[str] = Counter()
    sqs.meta.events.register(
        "before-call.sqs", lambda event_name, **_: calls.update([event_name.split(".")[-1]])
    )
    return calls


def _send_pipeline(stack: Any, pipeline: Sequence[Mapping[str, Any]]) -> None:
    """Send the pipeline's messages to the work queue."""
    pipelines = stack.client("sqs")  # not the poller's client: its calls are counted
    for body in pipeline:
        pipelines.send_message(QueueUrl=stack.work_queue_url, MessageBody=json.dumps(body))


def _drain_beside(
    poller: Any,
    pool: ContainerPool,
    during: Callable[[ContainerPool, threading.Event], None] | None,
    timeout: float,
) -> Any:
    """Drain the poller's queues (its report), with ``during`` running beside it until then."""
    stop = threading.Event()
    helper = None
    if during is not None:
        helper = threading.Thread(target=during, args=(pool, stop), daemon=True)
        helper.start()
    try:
        return poller.drain(timeout=timeout)
    finally:
        stop.set()
        if helper is not None:
            helper.join()
