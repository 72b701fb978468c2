"""Scale: many tenancies at OCI's ceiling, one tenancy piled on, 100,000 keys in bounded memory.

Everything runs as the template deploys it: the real refresh handler in container processes
(``bench.world.ContainerPool``, one per concurrent invocation, reused warm), fed by the model of
Lambda's SQS poller (``devkit.lambda_poller``) with each queue's ``BatchSize`` and
``MaximumConcurrency`` read from ``template.yaml`` (FIFO: one batch per message group in
flight). The schedule fires at t=0 as a direct invocation. moto and the CTM emulator each run
in a process of their own, so /proc says where the CPU went.

    PYTHONPATH=layers/common:. .venv/bin/python -m bench.scale [--quick] [--only NAME ...]

Names: ceiling, latency, sweep, pileup, memory, cost, kills. Alone, it rewrites only the scale
section of ``bench/RESULTS.md`` (``--no-write`` prints it); ``make bench`` runs it with the
rest. ``--quick`` shrinks every run (a smoke test of the harness: prints, writes nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.drive import RUN_ID, Drive, cpu_meter, drive, run_notes, run_status, schedule
from bench.figures import (
    FULL_RATE,
    KILL_MAX_RECEIVE_COUNT,
    READS_PER_REFRESH,
    TARGET_PEAK_MB,
    TARGET_RATIO,
    TARGET_THROTTLED,
    Cost,
    KillRun,
    RateRun,
    Resolution,
    ScaleFigures,
    Size,
)
from bench.results import RESULTS, SCALE, render_scale, write_part
from bench.world import (
    FUNCTION_TIMEOUT,
    ContainerPool,
    CtmProcess,
    KeySet,
    LambdaContainer,
    World,
    process_cpu_seconds,
)
from cckm_refresh.table.items import RunState

RATES = (5, 4, 3, 2, 1)  # tried in turn until the machine carries one (see carried_rate)
PLOT_RATE = RESULTS.with_name("scale-throughput.png")
PLOT_MEMORY = RESULTS.with_name("scale-memory.png")

FULL = Size()
QUICK = Size(
    tenancies=4,
    per_tenancy=20,
    sweep=(1, 4),
    sweep_per_tenancy=20,
    pileup_keys=30,
    pipeline_keys=10,
    memory_sizes=(1_000, 2_000),
    cost_keys=500,
    kill_tenancies=2,
    kill_per_tenancy=30,
    kill_every=(3.0,),
)


# --- figures of a throughput run -------------------------------------------------------------


def rate_run(
    world: World,
    name: str,
    keys: KeySet,
    latency: float,
    rate: int,
    *,
    pipeline_keys: int = 0,
) -> RateRun:
    """The schedule (selector all) over ``keys``; ``pipeline_keys`` > 0 adds two pipeline
    messages of that many keys each, sent to the work queue at the same moment."""
    with CtmProcess(keys) as ctm:
        ctm.set_faults(latency=latency, tenancy_read_limit=rate * READS_PER_REFRESH)
        stack = world.fresh_stack(ctm)
        env = stack.refresh_env(CTM_BASE_URL=ctm.base_url, TENANCY_RATE_LIMIT=str(rate))
        key_ids = [key_id.lower() for key_id, _ in ctm.key_tenancies()]
        pipeline = _pipeline_messages(key_ids, pipeline_keys)
        run = drive(world, ctm, stack, env, schedule(), pipeline=pipeline)
        runs = [RUN_ID, *(str(body["request_id"]) for body in pipeline)]
        states = {run_id: run.run_state(run_id) for run_id in runs}
    result = _rate_figures(
        run,
        _asked(key_ids, pipeline),
        states,
        name=name,
        tenancies=keys.tenancies,
        latency=latency,
        rate=rate,
    )
    print_rate_run(result)
    return result


def _rate_figures(
    run: Drive,
    expected: Counter[str],
    states: Mapping[str, RunState | None],
    *,
    name: str,
    tenancies: int,
    latency: float,
    rate: int,
) -> RateRun:
    """What the emulator's log, the containers and the runs' RUN items say of a driven run
    that asked for ``expected`` refreshes."""
    per_key = run.refreshes()
    refresh_calls, throttled = _refresh_calls(run.log)
    twice, never = _twice_and_never(per_key, expected)
    return RateRun(
        name=name,
        tenancies=tenancies,
        keys=expected.total(),
        latency=latency,
        rate=rate,
        seconds=run.seconds(),
        refreshed=sum(per_key.values()),
        refresh_calls=refresh_calls,
        throttled=throttled,
        failed_keys=sum(state.counts.failed for state in states.values() if state),
        twice=twice,
        never=never,
        drained=run.report.drained,
        cpu=run.cpu,
        invocations=Counter(i.source for i in run.report.invocations),
        peak_in_flight=dict(run.report.peak_in_flight),
        cold_starts=run.pool.cold_starts,
        notes=[
            *run_notes(states),
            _ctm_calls_note(run.log),
            _aws_calls_note(run, expected.total()),
            *_refresh_times_note(run),
        ],
    )


def _asked(key_ids: Sequence[str], pipeline: Sequence[Mapping[str, Any]]) -> Counter[str]:
    """Refreshes asked for, by key: one by the schedule, one more by each message naming it."""
    expected = Counter(key_ids)
    for body in pipeline:
        expected.update(body["keys"])
    return expected


def _refresh_calls(log: Sequence[Any]) -> tuple[int, int]:
    """(refresh calls, throttled refresh calls) in the emulator's log; other throttled calls
    are in the run's notes."""
    refreshes = [e for e in log if e.operation == "refresh"]
    return len(refreshes), sum(1 for e in refreshes if e.throttled)


def _twice_and_never(per_key: Counter[str], expected: Counter[str]) -> tuple[int, int]:
    """(keys refreshed more often than asked, keys asked for and never refreshed)."""
    twice = sum(1 for key, n in per_key.items() if n > expected[key])
    never = sum(1 for key in expected if per_key[key] == 0)
    return twice, never


def _pipeline_messages(key_ids: Sequence[str], pipeline_keys: int) -> list[dict[str, Any]]:
    """Two pipeline messages of ``pipeline_keys`` keys (the first keys, the last), or none."""
    starts = (0, len(key_ids) - pipeline_keys) if pipeline_keys else ()
    return [
        {
            "keys": key_ids[start : start + pipeline_keys],
            "request_id": f"pipeline-{n}",
            "reason": "rotation pipeline",
        }
        for n, start in enumerate(starts)
    ]


def _ctm_calls_note(log: Sequence[Any]) -> str:
    operations = Counter(e.operation or "other" for e in log)
    throttled_by = Counter(e.operation or "other" for e in log if e.throttled)
    return "CTM calls: " + ", ".join(
        f"{op} {n}" + (f" ({throttled_by[op]} throttled)" if throttled_by[op] else "")
        for op, n in sorted(operations.items())
    )


def _aws_calls_note(run: Drive, asked: int) -> str:
    calls, _ = run.pool.aws()
    return (
        "AWS calls per key: "
        + ", ".join(f"{op} {n / asked:.2f}" for op, n in sorted(calls.calls.items()))
        + "; the poller's own: "
        + ", ".join(f"{op} {n}" for op, n in sorted(run.polled.items()))
    )


def _refresh_times_note(run: Drive) -> list[str]:
    """When the first and last refresh reached the emulator (nothing when none did)."""
    refreshes = [e.monotonic for e in run.log if e.operation == "refresh"]
    if not refreshes:
        return []
    return [
        f"first refresh {min(refreshes) - run.t0:.1f} s after the schedule fired, last "
        f"{max(refreshes) - run.t0:.1f} s; last invocation ended {run.seconds():.1f} s"
    ]


def print_rate_run(r: RateRun) -> None:
    print(
        f"[scale] {r.name}: {r.tenancies} tenancies, {r.keys} keys, {r.latency:.1f} s latency, "
        f"{r.rate}/s per tenancy: {r.refreshed} refreshed in {r.seconds:.1f} s = "
        f"{r.keys_per_second:.1f} keys/s ({r.ratio:.3f} of {r.ceiling:.0f}/s); throttled "
        f"{r.throttled}/{r.refresh_calls} ({r.throttled_share:.1%}); failed {r.failed_keys}; "
        f"twice {r.twice}; never {r.never}; drained {r.drained}",
        flush=True,
    )
    print(
        f"  invocations {dict(r.invocations)}, peak in flight {dict(r.peak_in_flight)}, "
        f"cold starts {r.cold_starts}"
    )
    print(f"  {r.cpu.line()}")
    for note in r.notes:
        print(f"  {note}", flush=True)


def carried_rate(world: World, size: Size, latency: float) -> list[RateRun]:
    """The 20-tenancy run at OCI's full rate, then at lower per-tenancy rates until one is
    carried (ratio >= target, nothing throttled beyond 2%, nothing failed)."""
    runs = []
    for rate in RATES:
        run = rate_run(
            world,
            f"{size.tenancies} tenancies at {rate}/s each",
            KeySet(tenancies=size.tenancies, per_tenancy=size.per_tenancy),
            latency,
            rate,
        )
        runs.append(run)
        if _carried(run, TARGET_RATIO):
            break
    return runs


def _carried(run: RateRun, target: float) -> bool:
    return (
        run.ratio >= target
        and run.throttled_share <= TARGET_THROTTLED
        and run.failed_keys == 0
        and run.drained
    )


# --- the resolving invocation ----------------------------------------------------------------


def resolution(world: World, keys: int) -> Resolution:
    """One container, one scheduled invocation (selector all) over ``keys`` keys."""
    with CtmProcess(KeySet(tenancies=20, count=keys, seed=7)) as ctm:
        stack = world.fresh_stack(ctm)
        env = stack.refresh_env(CTM_BASE_URL=ctm.base_url)
        container = LambdaContainer("refresh", env, timeout_seconds=FUNCTION_TIMEOUT)
        parties = {
            "moto": lambda: process_cpu_seconds(world.moto.pid),
            "CTM emulator": lambda: process_cpu_seconds(ctm.pid),
            "handler container": container.cpu_seconds,
        }
        try:
            with cpu_meter(parties) as measured:
                invocation = container.invoke(schedule())
        finally:
            container.close()
        queued, carried, messages, note = _queued_keys(stack, keys)
    result = Resolution(
        keys=keys,
        peak_kb=invocation.peak_rss_kb,
        after_import_kb=container.peak_rss_after_import_kb,
        seconds=invocation.wall_seconds,
        response=invocation.response,
        queued_keys=queued,
        continuation_keys=carried,
        messages=messages,
        aws_calls=invocation.aws_calls,
        cpu=measured[0],
        note=note,
    )
    print(
        f"[scale] resolving {keys:,} keys: peak {result.peak_kb / 1024:.0f} MiB (after import "
        f"{result.after_import_kb / 1024:.0f}), {result.seconds:.1f} s of {FUNCTION_TIMEOUT:.0f}; "
        f"{queued:,} keys queued in {messages} messages + {carried:,} carried by a continuation "
        f"= {queued + carried:,} of {keys:,}; {note}",
        flush=True,
    )
    print(f"  {result.cpu.line()}; AWS calls {dict(result.aws_calls)}", flush=True)
    return result


def _queued_keys(stack: Any, total: int) -> tuple[int, int, int, str]:
    """(keys in key messages, keys left to a continuation, messages, what the bodies held)."""
    sqs = stack.client("sqs")
    queues = [stack.work_queue_url, stack.tenancy_queue_url]
    queued = carried = messages = 0
    kinds: Counter[str] = Counter()
    for url in queues:
        while batch := sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=300
        ).get("Messages", []):
            for message in batch:
                body = json.loads(message["Body"])
                messages += 1
                if isinstance(body.get("keys"), list):
                    queued += len(body["keys"])
                    kinds["keys"] += 1
                else:
                    carried += total - _listing_position(body)
                    kinds["continuation"] += 1
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
                ],
            )
    return queued, carried, messages, ", ".join(f"{n} {kind}" for kind, n in kinds.items())


def _listing_position(body: Mapping[str, Any]) -> int:
    """Where a continuation's listing stopped: the number of keys already listed."""
    for name in ("skip", "listed", "offset", "position"):
        for holder in (body, body.get("continuation") or {}, body.get("resume") or {}):
            if isinstance(holder, Mapping) and isinstance(holder.get(name), int):
                return int(holder[name])
    raise ValueError(f"a message that is neither keys nor a known continuation: {body}")


# --- cost per key ----------------------------------------------------------------------------


def cost(world: World, keys: int) -> Cost:
    """A ``keys``-key scheduled run, no latency and no OCI limit (pacing is not the subject)."""
    with CtmProcess(KeySet(tenancies=20, count=keys, seed=11)) as ctm:
        stack = world.fresh_stack(ctm)
        env = stack.refresh_env(CTM_BASE_URL=ctm.base_url, TENANCY_RATE_LIMIT="100")
        run = drive(world, ctm, stack, env, schedule(), timeout=900)
        state = run.run_state()
    calls, items = run.pool.aws()
    result = Cost(
        keys=keys,
        refreshed=sum(run.refreshes().values()),
        seconds=run.seconds(),
        calls=calls,
        items=items,
        drained=run.report.drained,
        status=run_status(state),
        cpu=run.cpu,
    )
    print(
        f"[scale] cost of {keys:,} keys: {result.refreshed:,} refreshed in {result.seconds:.0f} "
        f"s, run {result.status}; per key: bookkeeping item reads "
        f"{result.per_key(result.bookkeeping_reads):.3f}, write requests "
        f"{result.per_key(result.write_requests):.3f}, queue messages "
        f"{result.per_key(result.messages):.4f}",
        flush=True,
    )
    print(f"  calls: dynamodb {calls.of('dynamodb')}, sqs {calls.of('sqs')}")
    print(f"  items: dynamodb {items.of('dynamodb')}, sqs {items.of('sqs')}")
    print(f"  {result.cpu.line()}", flush=True)
    return result


# --- kills -----------------------------------------------------------------------------------


def kill_run(world: World, size: Size, every: float, latency: float, rate: int) -> KillRun:
    """Kill the container running a tenancy-queue batch every ``every`` seconds; crashed
    batches come back after 1 s (standing in for the queue's visibility timeout).
    ``maxReceiveCount`` is raised to ``KILL_MAX_RECEIVE_COUNT`` so that the kills, not the
    dead-letter queue, end deliveries."""
    keys = KeySet(tenancies=size.kill_tenancies, per_tenancy=size.kill_per_tenancy, seed=13)
    with CtmProcess(keys) as ctm:
        ctm.set_faults(latency=latency, tenancy_read_limit=rate * READS_PER_REFRESH)
        stack = world.fresh_stack(ctm, max_receive_count=KILL_MAX_RECEIVE_COUNT)
        source = stack.tenancy_queue_arn
        env = stack.refresh_env(CTM_BASE_URL=ctm.base_url, TENANCY_RATE_LIMIT=str(rate))

        def killer(pool: ContainerPool, stop: threading.Event) -> None:
            while not stop.wait(every):
                pool.kill_busy(source)

        run = drive(world, ctm, stack, env, schedule(), during=killer, redeliver_crashed_after=1)
        state = run.run_state()
        total = len(ctm.key_tenancies())
    per_key = run.refreshes()
    result = KillRun(
        every=every,
        keys=total,
        kills=run.pool.kills,
        refresh_calls=sum(per_key.values()),
        twice=sum(1 for n in per_key.values() if n > 1),
        never=total - len(per_key),
        seconds=run.seconds(),
        status=run_status(state),
        drained=run.report.drained,
    )
    print(
        f"[scale] kill every {every:.0f} s: {result.kills} kills, {result.twice} of {total} keys "
        f"refreshed twice ({result.twice_per_thousand:.1f} per 1,000), never {result.never}; "
        f"run {result.status} in {result.seconds:.0f} s",
        flush=True,
    )
    return result


# --- the whole section -----------------------------------------------------------------------


def _measure_ceiling(world: World, figures: ScaleFigures) -> None:
    figures.ceiling = carried_rate(world, figures.size, 0.4)


def _measure_latency(world: World, figures: ScaleFigures) -> None:
    size = figures.size
    figures.slow = [
        rate_run(
            world,
            f"{size.tenancies} tenancies, 1.0 s latency",
            KeySet(tenancies=size.tenancies, per_tenancy=size.per_tenancy),
            1.0,
            figures.rate,
        )
    ]


def _measure_sweep(world: World, figures: ScaleFigures) -> None:
    size = figures.size
    for tenancies in size.sweep:
        if tenancies == size.tenancies and figures.ceiling:
            continue  # the ceiling run is this point
        figures.sweep.append(
            rate_run(
                world,
                f"{tenancies} tenanc{'y' if tenancies == 1 else 'ies'}",
                KeySet(tenancies=tenancies, per_tenancy=size.sweep_per_tenancy),
                0.4,
                figures.rate,
            )
        )


def _measure_pileup(world: World, figures: ScaleFigures) -> None:
    figures.pileup = rate_run(
        world,
        "one tenancy: schedule + 2 pipeline messages",
        KeySet(tenancies=1, per_tenancy=figures.size.pileup_keys, seed=17),
        0.4,
        FULL_RATE,
        pipeline_keys=figures.size.pipeline_keys,
    )


def _measure_memory(world: World, figures: ScaleFigures) -> None:
    figures.memory = [resolution(world, keys) for keys in figures.size.memory_sizes]


def _measure_cost(world: World, figures: ScaleFigures) -> None:
    figures.cost = cost(world, figures.size.cost_keys)


def _measure_kills(world: World, figures: ScaleFigures) -> None:
    figures.kills = [
        kill_run(world, figures.size, every, 0.15, FULL_RATE) for every in figures.size.kill_every
    ]


# Each part of the section and what measures it, in the order they run (the ceiling first:
# the later rate runs use the per-tenancy rate it carried).
MEASURES: Mapping[str, Callable[[World, ScaleFigures], None]] = {
    "ceiling": _measure_ceiling,
    "latency": _measure_latency,
    "sweep": _measure_sweep,
    "pileup": _measure_pileup,
    "memory": _measure_memory,
    "cost": _measure_cost,
    "kills": _measure_kills,
}
SECTIONS = tuple(MEASURES)


def run_all(size: Size = FULL, only: Sequence[str] = SECTIONS) -> ScaleFigures:
    """Run the scale section's benchmarks; print each figure as it comes."""
    import datetime as dt

    started = time.perf_counter()
    figures = ScaleFigures(size, taken_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    figures.load_before = os.getloadavg()[0]
    world = World.start()
    figures.mappings = world.mappings
    try:
        for section, measure in MEASURES.items():
            if section in only:
                measure(world, figures)
    finally:
        world.stop()
    figures.seconds = time.perf_counter() - started
    print(f"scale: {figures.seconds:.0f} s", flush=True)
    return figures


# --- plots -----------------------------------------------------------------------------------


def plot(figures: ScaleFigures) -> list[str]:
    """The two PNGs next to RESULTS.md (only those with data); their file names."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    points = sorted(
        {r.tenancies: r for r in [*figures.sweep, *figures.ceiling[-1:]]}.values(),
        key=lambda r: r.tenancies,
    )
    if points:
        _plot_throughput(points)
        written.append(PLOT_RATE.name)
    if figures.memory:
        _plot_memory(figures.memory)
        written.append(PLOT_MEMORY.name)
    return written


def _plot_throughput(points: Sequence[RateRun]) -> None:
    """keys/s against tenancies, with the ceiling at the rate run (and OCI's, when lower)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(figsize=(6, 4), dpi=100)
    xs = [r.tenancies for r in points]
    axes.plot(xs, [r.keys_per_second for r in points], "o-", label="measured (keys/s)")
    rate = points[-1].rate
    axes.plot(
        xs, [x * rate for x in xs], "--", color="grey", label=f"ceiling ({rate}/s x tenancies)"
    )
    if rate != FULL_RATE:
        axes.plot(
            xs,
            [x * FULL_RATE for x in xs],
            ":",
            color="lightgrey",
            label="OCI's 5/s x tenancies",
        )
    axes.set_xlabel("OCI tenancies")
    axes.set_ylabel("keys refreshed per second")
    axes.set_title(f"Throughput against tenancies ({points[-1].latency:.1f} s CTM latency)")
    _save(fig, axes, PLOT_RATE)


def _plot_memory(memory: Sequence[Resolution]) -> None:
    """Peak RSS of the resolving invocation against the keys it resolved, with the target."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(figsize=(6, 4), dpi=100)
    xs = [m.keys for m in memory]
    axes.plot(xs, [m.peak_kb / 1024 for m in memory], "o-", label="peak RSS (VmHWM)")
    axes.axhline(TARGET_PEAK_MB * 1e6 / 2**20, linestyle="--", color="grey", label="150 MB target")
    axes.set_xlabel("keys the selector matches")
    axes.set_ylabel("MiB")
    axes.set_ylim(bottom=0)
    axes.set_title("Peak memory of the resolving invocation")
    _save(fig, axes, PLOT_MEMORY)


def _save(fig: Any, axes: Any, path: Path) -> None:
    """Legend and grid, then write the figure to ``path`` and free it."""
    import matplotlib.pyplot as plt

    axes.legend()
    axes.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small runs: a smoke test")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--no-write", action="store_true", help="print the section instead of writing RESULTS.md"
    )
    args = parser.parse_args(argv)
    figures = run_all(QUICK if args.quick else FULL, args.only)
    if args.no_write or args.quick:  # a smoke test or a look: the tracked PNGs stay as they are
        print("\n".join(render_scale(figures)))
    else:
        plot(figures)
        write_part(SCALE, render_scale(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
