"""``bench/RESULTS.md``: its sections rendered from the figures of one ``make bench`` run,
and the marked parts of it that a benchmark run alone replaces.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench.figures import (
    CEILING,
    FULL_RATE,
    IMPORT_RUNS,
    KEYS_PER_TENANCY,
    KILL_MAX_RECEIVE_COUNT,
    LATENCY,
    OCI_READS_PER_SECOND,
    READS_PER_REFRESH,
    TARGET_GROWTH_KB_PER_KEY,
    TARGET_IMPORT_RATIO,
    TARGET_MESSAGES_PER_KEY,
    TARGET_PEAK_MB,
    TARGET_PEAK_MIB,
    TARGET_RATIO,
    TARGET_RATIO_SLOW,
    TARGET_READS_PER_KEY,
    TARGET_THROTTLED,
    TARGET_THROTTLED_SHARE,
    TARGET_WRITE_REQUESTS_PER_KEY,
    TARGET_WRITES_PER_KEY,
    WITH_BYTECODE,
    Cost,
    Figures,
    ImportTime,
    LayerSize,
    MemoryRun,
    RateRun,
    ScaleFigures,
    Scenario,
)
from bench.world import DYNAMODB_WRITES, FUNCTION_TIMEOUT, ROOT, TENANCIES, AwsCalls

RESULTS = ROOT / "bench" / "RESULTS.md"


# --- the marked parts ------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A part of RESULTS.md between two HTML comments: what writes it replaces it, every other
    run keeps it."""

    name: str
    written_by: str

    @property
    def begin(self) -> str:
        return f"<!-- {self.name}: {self.written_by} -->"

    @property
    def end(self) -> str:
        return f"<!-- end of the {self.name} -->"

    def of(self, text: str) -> str | None:
        """This part of ``text``, markers included (found by its name, whoever wrote it);
        None when ``text`` has none."""
        start = text.find(f"<!-- {self.name}:")
        stop = text.find(self.end, start)
        if start < 0 or stop < 0:
            return None
        return text[start : stop + len(self.end)]

    def replaced(self, text: str, section: str) -> str:
        """``text`` with this part replaced by ``section`` (markers included). Where ``text``
        has none, ``section`` goes before the hand-written notes, which end the file."""
        old = self.of(text)
        if old is not None:
            return text.replace(old, section, 1)
        notes = NOTES.of(text)
        if notes is not None and self != NOTES:
            return text.replace(notes, f"{section}\n\n{notes}", 1)
        return text.rstrip("\n") + "\n\n" + section + "\n"

    def kept(self, old: str, new: str) -> str:
        """``new`` with this part as ``old`` has it (``new`` as it is when ``old`` has none)."""
        section = self.of(old)
        return new if section is None else self.replaced(new, section)


COLD_START = Part(
    "cold start", "written by `python -m bench.footprint --cold-start` and `make bench`"
)
SCALE = Part("scale section", "written by `python -m bench.scale` and `make bench`")
SIMULATION = Part("simulation", "written by `python -m bench.simulation scale`")
SOAK = Part("soak", "written by `make soak` (`python -m bench.simulation soak N`)")
NOTES = Part("notes", "written by hand; every benchmark keeps them")


def write_part(part: Part, lines: Sequence[str]) -> None:
    """Replace ``part`` of RESULTS.md by ``lines`` (its markers included); keep the rest."""
    text = RESULTS.read_text(encoding="utf-8")
    RESULTS.write_text(part.replaced(text, "\n".join(lines)), encoding="utf-8")
    print(f"{part.name} written to {RESULTS.relative_to(ROOT)}", flush=True)


# --- sections 1 to 3 -------------------------------------------------------------------------


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _per_key(calls: Mapping[str, int], keys: int) -> str:
    return (
        ", ".join(
            f"{op} {n / keys:.3f}" if n / keys >= 0.001 else f"{op} ({n} in all)"
            for op, n in calls.items()
            if n
        )
        or "none"
    )


def _writes(calls: Mapping[str, int]) -> int:
    return sum(n for op, n in calls.items() if op in DYNAMODB_WRITES)


_COLD_START_METHOD = (
    "Import time of each handler as `sam build` built it (`.aws-sam/build`), in a fresh "
    "python3.13 that has only boto3, as the Lambda runtime, run with `-I -B` and "
    "`sys.path` as Lambda sets it: the function's directory (`/var/task`), the layer's "
    "`python/` (`/opt/python`), then the runtime's own; nothing writes bytecode, as "
    "`/var/task` and `/opt` are read-only. Interpreter start-up is excluded; the figure "
    "is the CPU time of the import (the machine is shared, and wall time counts other "
    "processes' turns; the wall medians are shown too). `no bytecode` is the same layer "
    "without its `__pycache__`, what SAM's own `python3.13` build method ships: every cold "
    "start compiles it. `boto3` is `import boto3` with no layer. "
    f"{IMPORT_RUNS} rounds, the modules interleaved in each; the ratio is the median of "
    "the per-round ratios. The handler modules import with the variables "
    "they need at import. Both handlers import boto3 and validate their settings at "
    "import; both create their AWS clients (and the refresh function its CTM client) on "
    "first use and keep them for the container's later invocations, so creating them "
    "(about 80 ms for two boto3 clients here) is in the first invocation, not in these "
    "figures. This machine is x86_64: the layer's only native modules (charset_normalizer's, "
    "built for arm64) cannot load here, so their pure-Python twins are imported instead."
)


def render_cold_start(imports: Sequence[ImportTime], layer: LayerSize) -> list[str]:
    """The cold start part of section 2, markers included (``python -m bench.footprint
    --cold-start`` rewrites only this part of RESULTS.md)."""
    return [
        COLD_START.begin,
        "",
        _COLD_START_METHOD,
        "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        *_import_table(imports),
        "",
        _import_target(imports),
        "",
        *_layer_table(layer),
        "",
        COLD_START.end,
    ]


def _import_table(imports: Sequence[ImportTime]) -> list[str]:
    lines = [
        "| module | layer | median import (CPU) | wall | ratio to boto3 "
        "| heaviest packages (importtime ms, self) |",
        "|---|---|---:|---:|---:|---|",
    ]
    for imp in imports:
        heaviest = ", ".join(f"{n} {s * 1000:.0f}" for n, s in imp.heaviest)
        lines.append(
            f"| `{imp.name}` | {imp.layer or 'none'} | {imp.median * 1000:.0f} ms "
            f"| {imp.wall_median * 1000:.0f} ms | {imp.ratio:.2f} | {heaviest} |"
        )
    return lines


def _import_target(imports: Sequence[ImportTime]) -> str:
    """The target line: the slowest handler as ``sam build`` ships it, against boto3."""
    handlers = [imp for imp in imports if imp.layer == WITH_BYTECODE]
    worst = max(handlers, key=lambda imp: imp.ratio)
    return (
        f"Target: at most {TARGET_IMPORT_RATIO} x boto3 as `sam build` ships it: "
        f"{_mark(worst.ratio <= TARGET_IMPORT_RATIO)} (worst `{worst.name}`, {worst.ratio:.2f})."
    )


def _layer_table(layer: LayerSize) -> list[str]:
    return [
        "| layer as `sam build` makes it (`layers/common/Makefile`: pip for "
        "manylinux2014_aarch64, cp313, plus `cckm_refresh`, compiled; boto3 is not in it) "
        "| size |",
        "|---|---:|",
        f"| unpacked (`python/`, {layer.files} files) | {layer.unpacked_bytes / 2**20:.1f} MiB |",
        f"| zipped (deflate) | {layer.zipped_bytes / 2**20:.1f} MiB |",
        *(f"| `{name}` | {size / 2**20:.1f} MiB |" for name, size in layer.packages),
    ]


def render(figures: Figures) -> str:
    """The Markdown of RESULTS.md."""
    engine = figures.scenarios[-1]
    lines = [
        *_render_header(figures),
        *_render_throughput(figures.scenarios),
        "## 2. Cold start and footprint",
        "",
        *render_cold_start(figures.imports, figures.layer),
        *_render_peak_memory(figures.memory),
        "## 3. Cost per refreshed key",
        "",
        "AWS calls counted by a botocore `before-call` hook in the function's process (API "
        "calls, not HTTP retries); CTM calls from the emulator's request log.",
        "",
        *_cost_table(engine, figures.memory),
        "",
        "## What the numbers mean",
        "",
        *_meaning(figures),
        "",
    ]
    if figures.scale is not None:
        lines += [*render_scale(figures.scale), ""]
    return "\n".join(lines)


def _render_header(figures: Figures) -> list[str]:
    now = dt.datetime.now(dt.UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    return [
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m bench`); every figure below comes from that run.",
        "",
        f"- Date: {now}",
        f"- Machine: {os.cpu_count()} cores, {platform.machine()}, {platform.system()}",
        f"- Python {platform.python_version()} (the Lambda runtime is 3.13 on arm64)",
        f"- Whole run: {figures.seconds:.0f} s",
        "",
    ]


def _render_throughput(scenarios: Sequence[Scenario]) -> list[str]:
    """Section 1: the three clients' table, how each ran, and the engine's targets."""
    lines = [
        "## 1. Throughput against OCI's per-tenancy limit",
        "",
        f"CTM emulator over HTTPS on loopback: {LATENCY * 1000:.0f} ms added to every key call, "
        f"{OCI_READS_PER_SECOND} OCI reads per second per tenancy (sliding 1 s window; a refresh "
        f"costs 2, a throttled call nothing). {KEYS_PER_TENANCY * TENANCIES} keys, exactly "
        f"{KEYS_PER_TENANCY} in each of {TENANCIES} tenancies: the ceiling is "
        f"{CEILING:.0f} refreshes per second, whatever the client. Keys/s is refreshed keys "
        "over the wall time of the whole run; throttled counts the emulator's "
        "`TooManyRequests` answers; a failed key is one not refreshed when the run ended.",
        "",
        "| client | keys | refreshed | keys/s | of ceiling | refresh calls | throttled "
        "| failed keys | wall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {s.name} | {s.keys} | {s.refreshed} | {s.keys_per_second:.2f} | {s.ratio:.3f} "
        f"| {s.refresh_calls} | {s.throttled} ({s.throttled_share:.1%}) | {s.failed} "
        f"| {s.wall_seconds:.1f} s |"
        for s in scenarios
    ]
    lines.append("")
    for s in scenarios:
        lines.append(f"- **{s.name}**: {s.how}.")
        lines += [f"  - {note}" for note in s.notes]
    return [*lines, "", _engine_targets(scenarios[-1]), ""]


def _engine_targets(engine: Scenario) -> str:
    return (
        f"Targets for our engine: at least {TARGET_RATIO} of the ceiling: "
        f"{_mark(engine.ratio >= TARGET_RATIO)} ({engine.ratio:.3f}); zero failed keys: "
        f"{_mark(engine.failed == 0)} ({engine.failed}); at most "
        f"{TARGET_THROTTLED_SHARE:.0%} of calls throttled: "
        f"{_mark(engine.throttled_share <= TARGET_THROTTLED_SHARE)} "
        f"({engine.throttled_share:.1%})."
    )


def _render_peak_memory(memory: MemoryRun) -> list[str]:
    """Section 2's last part: the refresh function's peak memory over 5,000 keys."""
    return [
        "",
        f"Peak memory of the refresh function refreshing {memory.keys:,} keys as deployed "
        "(emulator with no latency and no throttle, `TENANCY_RATE_LIMIT=100`, template "
        "defaults otherwise): the scheduled intake invocation selects every key and sends them "
        "to the tenancy queue in chunks of one tenancy each; the model of Lambda's poller "
        "delivers each chunk to a handler container process (`BatchSize` 1). The two "
        "invocations a 256 MB function must hold: the intake, and the largest chunk. Peak is "
        "the container process's `VmHWM` over its life so far (`ru_maxrss` would include the "
        "driver's memory, which Linux carries across `exec`).",
        "",
        "| invocation | wall | peak RSS so far |",
        "|---|---:|---:|",
        f"| after import (cold start) | | {memory.peak_rss_after_import_kb / 1024:.0f} MiB |",
        *(
            f"| {name} | {inv.wall_seconds:.1f} s | {inv.peak_rss_kb / 1024:.0f} MiB |"
            for name, inv in memory.invocations
        ),
        "",
        f"{memory.refreshed:,} of {memory.keys:,} keys refreshed. Target: under "
        f"{TARGET_PEAK_MIB} MiB: {_mark(memory.peak_kb / 1024 < TARGET_PEAK_MIB)} "
        f"({memory.peak_kb / 1024:.0f} MiB).",
        "",
    ]


def _cost_table(engine: Scenario, memory: MemoryRun) -> list[str]:
    runs = [
        (
            f"{engine.refreshed} keys, intake + tenancy-queue chunks (section 1)",
            engine.refreshed,
            AwsCalls(
                {f"dynamodb.{op}": n for op, n in engine.costs.get("dynamodb", {}).items()}
                | {f"sqs.{op}": n for op, n in engine.costs.get("sqs", {}).items()}
            ),
            engine.costs["ctm"],
        ),
        (
            f"{memory.refreshed:,} keys, intake + tenancy-queue chunks (section 2)",
            memory.refreshed,
            memory.aws,
            memory.ctm,
        ),
    ]
    lines = [
        "| run | DynamoDB write calls / key | DynamoDB calls / key | SQS calls / key "
        "| CTM calls / key |",
        "|---|---:|---|---|---|",
    ]
    for name, keys, aws, ctm in runs:
        dynamodb = aws.of("dynamodb")
        lines.append(
            f"| {name} | {_writes(dynamodb) / keys:.3f} | {_per_key(dynamodb, keys)} "
            f"| {_per_key(aws.of('sqs'), keys)} | {_per_key(ctm, keys)} |"
        )
    worst = max(_writes(aws.of("dynamodb")) / keys for _, keys, aws, _ in runs)
    lines += [
        "",
        f"Target: at most {TARGET_WRITES_PER_KEY} DynamoDB write calls per key: "
        f"{_mark(worst <= TARGET_WRITES_PER_KEY)} (worst {worst:.3f}).",
    ]
    return lines


def _meaning(figures: Figures) -> list[str]:
    sequential, pool, engine = figures.scenarios
    return [
        f"The curl-style loop is safe but slow: one call at a time spends the {LATENCY * 1000:.0f}"
        f" ms latency plus a TLS handshake per key, so it reaches {sequential.ratio:.2f} of what "
        f"OCI allows. The unbounded pool is fast only at failing: OCI's window admits a burst "
        f"of {FULL_RATE} refreshes per tenancy, and with one attempt per key "
        f"{pool.failed} of {pool.keys} keys failed ({pool.throttled} throttled answers); its "
        f"keys/s counts only the {pool.refreshed} keys that got through. Our "
        f"engine paces each tenancy at `TENANCY_RATE_LIMIT` and retries throttled calls within "
        f"the same budget, so it lost no key; it reached {engine.ratio:.3f} of the ceiling with "
        f"{engine.throttled_share:.1%} of its calls throttled. The notes under the table say "
        "where its time went (before, during and after the refresh phase).",
        "",
        "For the loop and the pool, the emulator runs in the benchmark driver's process; for "
        "our engine and the 5,000-key run, the emulator and moto each run in a process of "
        "their own and the function in container processes, one per concurrent invocation, "
        "as in Lambda. Loopback has no network jitter, so the rate figures are what the "
        "pacing logic achieves, not a forecast of a real CTM's latency. The 5,000-key run is "
        "about memory and call counts: its wall time is dominated by moto answering two writes "
        "per key one request at a time on this machine and says nothing about DynamoDB's "
        "speed.",
    ]


# --- 4. Scale --------------------------------------------------------------------------------


def _rate_row(run: RateRun) -> str:
    return (
        f"| {run.name} | {run.tenancies} | {run.keys:,} | {run.latency:.1f} s "
        f"| {run.rate}/s ({run.rate * READS_PER_REFRESH} reads/s) | {run.keys_per_second:.1f} "
        f"| {run.ceiling:.0f} | {run.ratio:.3f} | {run.throttled} of {run.refresh_calls} "
        f"({run.throttled_share:.1%}) | {run.failed_keys} | {run.twice} / {run.never} "
        f"| {run.seconds:.1f} s |"
    )


def _cpu_row(run: RateRun | Cost, name: str) -> str:
    cpu = run.cpu
    capacity = cpu.wall * cpu.cores
    parties = " | ".join(f"{seconds:.0f} s" for seconds in cpu.parties.values())
    return (
        f"| {name} | {cpu.wall:.0f} s | {parties} | {cpu.ours / capacity:.0%} "
        f"| {cpu.machine_busy / capacity:.0%} |"
    )


def _rate_target(run: RateRun | None, target: float, what: str) -> str:
    if run is None:
        return f"- {what}: not measured."
    return (
        f"- {what}: at least {target} of the ceiling: {_mark(run.ratio >= target)} "
        f"({run.ratio:.3f}); at most {TARGET_THROTTLED:.0%} throttled: "
        f"{_mark(run.throttled_share <= TARGET_THROTTLED)} ({run.throttled_share:.1%}); "
        f"0 failed: {_mark(run.failed_keys == 0)} ({run.failed_keys}); every key refreshed "
        f"once: {_mark(run.twice == 0 and run.never == 0)} ({run.twice} twice, {run.never} never)."
    )


def render_scale(scale: ScaleFigures) -> list[str]:
    """The scale section's Markdown lines, markers included."""
    rate_runs = _rate_runs(scale)
    carried = scale.ceiling[-1] if scale.ceiling else None  # the rate the machine carried
    return [
        SCALE.begin,
        *_scale_method(scale),
        *(_rate_row(run) for run in rate_runs),
        "",
        *_carried_rate(scale, carried),
        *_scale_targets(scale, carried),
        *_full_rate(scale, carried),
        *_throughput_plot(scale),
        *_run_notes(rate_runs),
        *_render_cpu(scale, rate_runs),
        *_render_memory(scale),
        *_render_cost(scale.cost),
        *_render_kills(scale),
        SCALE.end,
    ]


def _rate_runs(scale: ScaleFigures) -> list[RateRun]:
    """Every run against OCI's limit, in the order of the section's table."""
    return [*scale.ceiling, *scale.slow, *scale.sweep, *([scale.pileup] if scale.pileup else [])]


def _scale_method(scale: ScaleFigures) -> list[str]:
    """The section's heading, how its figures were taken, and the rate table's head."""
    return [
        "## 4. Scale: many tenancies, one tenancy piled on, 100,000 keys",
        "",
        f"Taken {scale.taken_at} (`python -m bench.scale`, {scale.seconds:.0f} s; the machine's "
        f"load average was {scale.load_before:.1f} when it started). Every figure is driven "
        "through the real refresh handler in container processes (one per concurrent "
        "invocation, reused warm, `bench/lambda_container.py`), fed by the model of Lambda's SQS "
        "poller (`devkit/lambda_poller.py`) with the template's event source mappings: "
        + "; ".join(scale.mappings)
        + ". FIFO: one batch per message group (tenancy) in flight. The schedule fires at t=0 "
        "as a direct invocation; keys/s is successful refresh calls (the emulator's request "
        "log) over the time from the schedule firing to the end of the last invocation. moto "
        "(one request at a time) and the CTM emulator each run in a process of their own. The "
        "emulator adds the stated latency to every key call and allows the stated OCI reads "
        "per second per tenancy (a refresh costs 2); `TENANCY_RATE_LIMIT` is set to exactly "
        "that budget, template defaults otherwise.",
        "",
        "| run | tenancies | keys | CTM latency | per tenancy | keys/s | ceiling | of ceiling "
        "| throttled | failed | twice / never | time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]


def _carried_rate(scale: ScaleFigures, carried: RateRun | None) -> list[str]:
    """Why the figures that count are at a lower rate, when the machine did not carry OCI's."""
    if carried is None or carried.rate == FULL_RATE:
        return []
    made_it = carried.ratio >= TARGET_RATIO and carried.throttled_share <= TARGET_THROTTLED
    verdict = (
        ", which it carried."
        if made_it
        else f"; even that it did not carry ({carried.ratio:.3f} of its ceiling)."
    )
    return [
        f"This machine did not carry OCI's full rate ({FULL_RATE}/s per tenancy, "
        f"{scale.size.tenancies * FULL_RATE} keys/s) through the emulator, moto and the "
        f"handlers on {os.cpu_count()} cores: see where the CPU went below. The figures "
        "that count are at a lower per-tenancy rate, "
        f"{carried.rate} keys/s (the emulator's limit {carried.rate * READS_PER_REFRESH} "
        f"reads/s, `TENANCY_RATE_LIMIT={carried.rate}`), as a ratio to that rate's ceiling"
        + verdict,
        "",
    ]


def _scale_targets(scale: ScaleFigures, carried: RateRun | None) -> list[str]:
    return [
        "Targets (issue 10):",
        "",
        _rate_target(carried, TARGET_RATIO, f"{scale.size.tenancies} tenancies, 0.4 s latency"),
        _rate_target(scale.slow[0] if scale.slow else None, TARGET_RATIO_SLOW, "1.0 s latency"),
        _rate_target(
            scale.pileup, TARGET_RATIO_SLOW, "one tenancy, schedule + 2 pipeline messages"
        ),
        "",
    ]


def _full_rate(scale: ScaleFigures, carried: RateRun | None) -> list[str]:
    """The ratio at OCI's full rate, when the rate carried was a lower one."""
    full = [run for run in scale.ceiling if run.rate == FULL_RATE]
    if full and carried is not None and full[0] is not carried:
        return [f"At the full rate: {full[0].ratio:.3f} of the ceiling.", ""]
    return []


def _throughput_plot(scale: ScaleFigures) -> list[str]:
    if scale.sweep or scale.ceiling:
        return ["![keys/s against tenancies, with the ceiling](scale-throughput.png)", ""]
    return []


def _run_notes(rate_runs: Sequence[RateRun]) -> list[str]:
    notes = [f"- {run.name}: {note}" for run in rate_runs for note in run.notes]
    if not notes:
        return []
    return ["<details><summary>Run notes</summary>", "", *notes, "", "</details>", ""]


def _render_cpu(scale: ScaleFigures, rate_runs: Sequence[RateRun]) -> list[str]:
    """CPU seconds by party for every run, then what a key costs in the ceiling runs."""
    cpu_runs: list[tuple[str, RateRun | Cost]] = [(run.name, run) for run in rate_runs]
    if scale.cost is not None:
        cpu_runs.append((f"cost run, {scale.cost.keys:,} keys", scale.cost))
    if not cpu_runs:
        return []
    parties = cpu_runs[0][1].cpu.parties
    lines = [
        "### Where the CPU went",
        "",
        "CPU seconds (user + system, from /proc) each party used during the run; "
        '"machine busy" counts every process on the machine, ours and others\'.',
        "",
        f"| run | wall | {' | '.join(parties)} | ours, of capacity | machine busy |",
        "|---|---:|" + "---:|" * len(parties) + "---:|---:|",
        *(_cpu_row(run, name) for name, run in cpu_runs),
        "",
    ]
    for run in scale.ceiling:
        lines += [_cpu_per_key(run), ""]
    return lines


def _cpu_per_key(run: RateRun) -> str:
    """What one refreshed key costs in CPU, and the rate that bounds."""
    if not run.refreshed:
        return f"{run.name}: nothing refreshed."
    per_key = {name: 1000 * seconds / run.refreshed for name, seconds in run.cpu.parties.items()}
    total = sum(per_key.values())
    moto = per_key.get("moto", 0.0)
    others = run.cpu.machine_busy - run.cpu.ours
    return (
        f"{run.name}: per refreshed key "
        + ", ".join(f"{name} {ms:.1f} ms" for name, ms in per_key.items())
        + f" of CPU, {total:.1f} ms in all: {run.cpu.cores} cores carry at most "
        f"{1000 * run.cpu.cores / total:.0f} keys/s of it, and moto, one request at a time "
        f"on one core, at most {1000 / moto if moto else float('inf'):.0f} keys/s. Other "
        f"processes on the machine used {others:.0f} core-s meanwhile."
    )


def _render_memory(scale: ScaleFigures) -> list[str]:
    if not scale.memory:
        return []
    lines = [
        "### The invocation that resolves a selector",
        "",
        "One container, one scheduled invocation (selector `all`) over N keys in 20 tenancies "
        "(emulator without latency or limit), function timeout 300 s. Peak is the container's "
        "`VmHWM`. Afterwards the queues are read: keys in key messages plus keys a "
        "continuation still has to list must equal the keys in CTM.",
        "",
        "| keys | peak RSS | after import | invocation | messages | keys queued "
        "| left to a continuation | all accounted for |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in scale.memory:
        lines.append(
            f"| {m.keys:,} | {m.peak_kb / 1024:.0f} MiB | {m.after_import_kb / 1024:.0f} MiB "
            f"| {m.seconds:.1f} s | {m.messages:,} | {m.queued_keys:,} | {m.continuation_keys:,} "
            f"| {'yes' if m.accounted else '**no**'} |"
        )
    peak = max(scale.memory, key=lambda m: m.peak_kb)
    lines += ["", "Targets:", ""]
    lines.append(
        f"- peak under {TARGET_PEAK_MB} MB: "
        f"{_mark(peak.peak_kb * 1024 < TARGET_PEAK_MB * 1e6)} "
        f"({peak.peak_kb * 1024 / 1e6:.0f} MB at {peak.keys:,} keys)."
    )
    small, large = scale.memory[0], scale.memory[-1]
    if large.keys > small.keys:
        growth = (large.peak_kb - small.peak_kb) * 1024 / 1000 / (large.keys - small.keys)
        lines.append(
            f"- growth under {TARGET_GROWTH_KB_PER_KEY} KB per key between {small.keys:,} and "
            f"{large.keys:,} keys: {_mark(growth < TARGET_GROWTH_KB_PER_KEY)} "
            f"({growth:.3f} KB per key)."
        )
    late = [m for m in scale.memory if m.seconds >= FUNCTION_TIMEOUT]
    lines.append(
        f"- returns before its deadline with every key queued or carried: "
        f"{_mark(not late and all(m.accounted for m in scale.memory))}."
    )
    lines += ["", "![peak memory against run size](scale-memory.png)", ""]
    return lines


def _render_cost(run: Cost | None) -> list[str]:
    if run is None:
        return []
    reads = run.per_key(run.bookkeeping_reads)
    writes = run.per_key(run.write_requests)
    messages = run.per_key(run.messages)
    lines = [
        f"### DynamoDB and SQS per key, {run.keys:,}-key run",
        "",
        f"The whole run, schedule to last key, through the poller (no latency, no OCI limit, "
        f"`TENANCY_RATE_LIMIT=100`): {run.refreshed:,} refreshed in {run.seconds:.0f} s, run "
        f"{run.status}. Calls counted by a botocore hook in each container; items are what the "
        "requests named (keys asked for by `GetItem`/`BatchGetItem`, items `Query` returned, "
        "items written, messages sent).",
        "",
        "| operation | calls | calls / key | items | items / key |",
        "|---|---:|---:|---:|---:|",
    ]
    for service in ("dynamodb", "sqs"):
        calls, items = run.calls.of(service), run.items.of(service)
        for op in sorted(set(calls) | set(items)):
            count = items.get(op)
            lines.append(
                f"| {service} {op} | {calls.get(op, 0):,} | {run.per_key(calls.get(op, 0)):.4f} "
                f"| {'' if count is None else f'{count:,}'} "
                f"| {'' if count is None else f'{run.per_key(count):.4f}'} |"
            )
    lines += [
        "",
        f"Targets: bookkeeping item reads at most {TARGET_READS_PER_KEY} per key: "
        f"{_mark(reads <= TARGET_READS_PER_KEY)} ({reads:.3f}); write requests at most "
        f"{TARGET_WRITE_REQUESTS_PER_KEY} per key: "
        f"{_mark(writes <= TARGET_WRITE_REQUESTS_PER_KEY)} "
        f"({writes:.3f}); queue messages at most {TARGET_MESSAGES_PER_KEY} per key: "
        f"{_mark(messages <= TARGET_MESSAGES_PER_KEY)} ({messages:.4f}).",
        "",
    ]
    return lines


def _render_kills(scale: ScaleFigures) -> list[str]:
    if not scale.kills:
        return []
    size = scale.size
    lines = [
        "### Keys refreshed twice under kills (issue 11)",
        "",
        f"{size.kill_tenancies} tenancies x {size.kill_per_tenancy} keys, 0.15 s latency, "
        f"{FULL_RATE}/s per tenancy. Every N seconds the container running a tenancy-queue "
        "batch is killed (SIGKILL, as Lambda ends a timed-out environment); the poller reads "
        "it as a crashed invocation and the batch comes back 1 s later (standing in for the "
        "queue's visibility timeout); the queues' `maxReceiveCount` is raised to "
        f"{KILL_MAX_RECEIVE_COUNT} so that no message reaches the dead-letter queue because of "
        "the kills. Counted from the emulator's log: keys with more than one successful "
        "refresh call, and successful refresh calls beyond one per key.",
        "",
        "| kill every | kills | keys refreshed twice per 1,000 | extra refresh calls per 1,000 "
        "| never refreshed | run | time |",
        "|---:|---:|---:|---:|---:|---|---:|",
    ]
    for k in scale.kills:
        lines.append(
            f"| {k.every:.0f} s | {k.kills} | {k.twice_per_thousand:.1f} "
            f"| {k.extra_per_thousand:.1f} | {k.never} | {k.status} | {k.seconds:.0f} s |"
        )
    lines.append("")
    return lines
