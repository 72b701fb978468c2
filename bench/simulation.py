"""The whole-system simulation (devkit/sim) as a benchmark: the figures the tests cannot reach,
and the long profile of the liveness property.

    PYTHONPATH=layers/common:. .venv/bin/python -m bench.simulation scale    # ~15 minutes
    PYTHONPATH=layers/common:. .venv/bin/python -m bench.simulation soak [N] # make soak

``scale`` runs a night of 100,000 keys over 20 tenancies and one of 20,000 keys in one
tenancy, with the template's settings and 0.4 s CTM calls, on the virtual clock; prints the
completion time against the ideal, invocations, hand-offs, DynamoDB/SQS/SNS requests per key
and what the night costs at list prices; writes its section of RESULTS.md and a plot.
``soak`` checks the properties of ``devkit.sim.properties`` over N schedules Hypothesis
draws (``devkit.sim.scenarios``), prints what they covered and the worst case found, and
writes them to RESULTS.md (``--no-write``: print only).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bench.figures import FULL_RATE
from bench.results import RESULTS, SIMULATION, SOAK, write_part
from devkit.sim.dynamodb import plain
from devkit.sim.properties import Findings, check
from devkit.sim.runtime import EPOCH
from devkit.sim.world import Report, Scenario, World, template_default

PLOT = RESULTS.with_name("simulation-night.png")
NOTIFY_BATCH = 25  # the notify function's stream batch size (template.yaml)

# List prices, us-east-1 (AWS pricing pages, after DynamoDB's on-demand cut of 2024-11).
LAMBDA_GB_SECOND_ARM = 0.0000133334
LAMBDA_REQUEST = 0.20 / 1e6
DYNAMODB_WRITE_UNIT = 0.625 / 1e6
DYNAMODB_READ_UNIT = 0.125 / 1e6
SQS_STANDARD_REQUEST = 0.40 / 1e6
SQS_FIFO_REQUEST = 0.50 / 1e6
SNS_PUBLISH = 0.50 / 1e6
MEMORY_GB = 0.25  # both functions' MemorySize (256 MB)
NOTIFY_SECONDS = 0.3  # an assumed notify invocation: a few SNS publishes and ledger writes


@dataclass(frozen=True)
class Night:
    name: str
    report: Report
    findings: Findings
    wall_seconds: float

    @property
    def keys(self) -> int:
        return sum(self.report.scenario.tenancies)

    @property
    def ideal_seconds(self) -> float:
        """The keys of the largest tenancy at the configured rate (tenancies run in parallel)."""
        return max(self.report.scenario.tenancies) / self.report.scenario.rate

    @property
    def ceiling_seconds(self) -> float:
        return max(self.report.scenario.tenancies) / FULL_RATE


def night(name: str, tenancies: tuple[int, ...]) -> Night:
    """A scheduled run of every key with the template's settings, rotations and all."""
    rate = float(template_default("TenancyRateLimit"))
    keys = sum(tenancies)
    scenario = Scenario(
        tenancies=tenancies,
        rate=rate,
        latency=0.4,
        known_before=True,
        rotated=keys // 200,  # 0.5 % of the keys rotated in OCI since the night before
        seed=7,
    )
    started = time.perf_counter()
    report = World(scenario).run()
    return Night(name, report, check(report), time.perf_counter() - started)


def costs(n: Night) -> dict[str, float]:
    """What the night cost at list prices, by service (dollars)."""
    report, db, sqs = n.report, n.report.dynamodb, n.report.sqs
    seconds = sum((i.ended or report.ended_at) - i.started for i in report.invocations)
    notify_records = _notify_records(report)
    notify_invocations = math.ceil(notify_records / NOTIFY_BATCH)
    write_units = db.items_written + db.calls["transact_write_items"]  # transactions: 2x
    return {
        "refresh Lambda": len(report.invocations) * LAMBDA_REQUEST
        + seconds * MEMORY_GB * LAMBDA_GB_SECOND_ARM,
        "notify Lambda": notify_invocations
        * (LAMBDA_REQUEST + NOTIFY_SECONDS * MEMORY_GB * LAMBDA_GB_SECOND_ARM),
        "DynamoDB writes": write_units * DYNAMODB_WRITE_UNIT,
        "DynamoDB reads": db.items_read * DYNAMODB_READ_UNIT,
        "SQS": sum(sqs.calls.values()) * SQS_FIFO_REQUEST
        + len(report.invocations) * SQS_STANDARD_REQUEST,  # receives and deletes, roughly
        "SNS": notify_records * SNS_PUBLISH,  # about a publish per record that wakes notify
    }


def _notify_records(report: Report) -> int:
    """Stream records the notify function's filter passes (template.yaml): completed runs,
    KEY items a refresh changed, rejected requests."""
    passing = {("RUN", "COMPLETED"), ("KEY", True), ("REJECTED", None)}
    passed = 0
    for event, _old, new in report.dynamodb.stream:
        item = plain(new) if new is not None else {}
        kind = item.get("item_type")
        mark = {"RUN": item.get("status"), "KEY": item.get("changed")}.get(str(kind))
        if (kind, mark) in passing and (event == "MODIFY" or kind != "KEY"):
            passed += 1
    return passed


def _key_modifications(report: Report) -> int:
    return sum(
        1
        for event, _old, new in report.dynamodb.stream
        if event == "MODIFY" and new is not None and new.get("item_type", {}).get("S") == "KEY"
    )


def render(nights: Sequence[Night]) -> list[str]:
    lines = [
        SIMULATION.begin,
        "## The simulation: a night at scale, on the virtual clock",
        "",
        "The whole system in `devkit/sim` (the real function code in simulated containers, "
        "SQS, DynamoDB and the CTM emulator), with the template's settings "
        f"(`TENANCY_RATE_LIMIT` {template_default('TenancyRateLimit')}, 300 s invocations, "
        "`CTM_TIMEOUT_SECONDS` 20, `REFRESH_CONCURRENCY` 64, `FANOUT_CHUNK_SIZE` 100), CTM "
        "calls of 0.4 s, 0.5 % of the keys rotated in OCI since the night before. Times are "
        "virtual: what the night takes in AWS, not what the simulation took.",
        "",
        "| figure | " + " | ".join(n.name for n in nights) + " |",
        "|---|" + "---:|" * len(nights),
    ]
    rows = _rows(nights)
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    lines += ["", "What a night costs at list prices (us-east-1, arm64, on-demand):", ""]
    lines += ["| service | " + " | ".join(n.name for n in nights) + " |"]
    lines += ["|---|" + "---:|" * len(nights)]
    per_night = [costs(n) for n in nights]
    for service in per_night[0]:
        dollars = " | ".join(f"${c[service]:.4f}" for c in per_night)
        lines.append(f"| {service} | {dollars} |")
    totals = " | ".join(f"**${sum(c.values()):.3f}**" for c in per_night)
    lines.append(f"| **total** | {totals} |")
    lines += ["", f"![keys refreshed over the night]({PLOT.name})", "", SIMULATION.end]
    return lines


def _rows(nights: Sequence[Night]) -> list[tuple[str, list[str]]]:
    figures = [_figures(n) for n in nights]
    return [(label, [f[label] for f in figures]) for label in figures[0]]


def _figures(n: Night) -> dict[str, str]:
    report, db = n.report, n.report.dynamodb
    records = _notify_records(report)
    return {
        "keys (tenancies)": f"{n.keys:,} ({len(report.scenario.tenancies)})",
        "properties": "all hold" if n.findings.ok else "; ".join(n.findings.problems),
        "completed in (virtual)": f"{report.ended_at / 60:.1f} min",
        "ideal at the configured rate": f"{n.ideal_seconds / 60:.1f} min",
        "ideal at OCI's ceiling (5/s)": f"{n.ceiling_seconds / 60:.1f} min",
        "refresh invocations": _by_source(report),
        "DynamoDB calls per key": f"{sum(db.calls.values()) / n.keys:.3f}",
        "items read / written per key": (
            f"{db.items_read / n.keys:.3f} / {db.items_written / n.keys:.3f}"
        ),
        "SQS send calls per key": f"{sum(report.sqs.calls.values()) / n.keys:.4f}",
        "KEY item modifications": f"{_key_modifications(report):,}",
        "stream records that wake notify": f"{records:,}",
        "notify invocations": f"{math.ceil(records / NOTIFY_BATCH):,}",
        "busiest second, any tenancy": f"{max(n.findings.busiest_second.values())} calls",
        "simulation wall time": f"{n.wall_seconds:.0f} s",
    }


def _by_source(report: Report) -> str:
    sources = Counter(i.source for i in report.invocations)
    return ", ".join(f"{count} {source}" for source, count in sources.most_common())


def plot(nights: Sequence[Night]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for n in nights:
        arrivals = sorted(at for _t, _k, at in n.report.refreshes)
        axis.plot([a / 60 for a in arrivals], range(1, len(arrivals) + 1), label=n.name)
    axis.set_xlabel("minutes after the schedule fired (virtual)")
    axis.set_ylabel("keys refreshed")
    axis.set_title("A night at scale in the simulation (template settings, 0.4 s calls)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)


def scale(write: bool = True) -> None:
    nights = [
        night("100,000 keys, 20 tenancies", tuple([5000] * 20)),
        night("20,000 keys, 1 tenancy", (20000,)),
    ]
    lines = render(nights)
    print("\n".join(lines))
    if write:
        write_part(SIMULATION, lines)
        plot(nights)


def last_completion(report: Report) -> float:
    """Virtual seconds to the last run's completion (its ``finished_at``): the world itself
    ends later, when every queue is drained (a sweep's copies of a completed run's chunks)."""
    ends = [
        dt.datetime.fromisoformat(run["finished_at"])
        for run in report.runs.values()
        if run.get("finished_at")
    ]
    epoch = dt.datetime.fromtimestamp(EPOCH, dt.UTC)
    return max(((end - epoch).total_seconds() for end in ends), default=0.0)


def soak(examples: int, write: bool = True) -> int:
    """The liveness property over ``examples`` schedules; 1 when one fails. What it covered
    goes to RESULTS.md (its soak part) unless ``write`` is false."""
    from hypothesis import HealthCheck, Phase, given, settings

    from devkit.sim.scenarios import scenarios

    seen = Counter[str]()
    worst: dict[str, float] = {}

    slowest: list[Scenario] = []  # the schedule whose last run completed last, to replay it

    def note(name: str, value: float, scenario: Scenario | None = None) -> None:
        if value > worst.get(name, 0.0):
            worst[name] = value
            if scenario is not None:
                slowest[:] = [scenario]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(scenarios(most_keys=60))
    def property_holds(scenario: Scenario) -> None:
        report = World(scenario).run()
        findings = check(report)
        _cover(seen, scenario, report)
        busiest = max(findings.busiest_second.values(), default=0)
        note("invocations / their bound", findings.invocations / findings.bound)
        note("last run completed (virtual s)", last_completion(report), scenario)
        note("queues drained, the world's end (virtual s)", report.ended_at)
        note("busiest second / calls allowed", busiest / (math.floor(scenario.rate * 0.95) + 1))
        assert findings.ok, (scenario, findings.problems)

    started = time.perf_counter()
    try:
        property_holds()
        failed = 0
    except AssertionError as failure:
        print(f"soak: a schedule broke a property: {failure}")
        failed = 1
    wall = time.perf_counter() - started
    lines = [
        f"soak: {seen['schedules']} schedules in {wall:.0f} s",
        *(f"  {name}: {count}" for name, count in sorted(seen.items())),
        *(f"  worst {name}: {value:.2f}" for name, value in worst.items()),
    ]
    print("\n".join(lines))
    if slowest:
        print(f"  the slowest schedule, to replay with World(...).run(): {slowest[0]!r}")
    if write:
        verdict = "a schedule broke a property" if failed else "every property held"
        write_part(
            SOAK,
            [
                SOAK.begin,
                "## The soak: the properties over many generated schedules",
                "",
                f"{examples} schedules asked, {verdict} (`devkit/sim/properties.py`: every run"
                " completes within its bound of invocations, one terminal outcome per key, no"
                " invocation past its budget, no tenancy over its rate in any second).",
                f"Taken {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load average"
                f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: the wall time is the"
                " machine's; every other figure is counted in the simulation.",
                "",
                "```",
                *lines,
                "```",
                SOAK.end,
            ],
        )
    return failed


def _cover(seen: Counter[str], scenario: Scenario, report: Report) -> None:
    """Count what a schedule exercised."""
    seen["schedules"] += 1
    seen["runs"] += len(report.expected_runs)
    seen["keys"] += sum(scenario.tenancies)
    seen["invocations"] += len(report.invocations)
    seen["containers killed"] += sum(i.killed for i in report.invocations)
    seen["cold starts"] += sum(i.cold for i in report.invocations)
    seen["messages dead-lettered"] += report.dead_letters
    seen["sweep invocations"] += sum(i.source == "sweep" for i in report.invocations)
    keys_failed = sum(
        1
        for results in report.results.values()
        for r in results.values()
        if r.get("status") == "FAILED"
    )
    seen["keys FAILED"] += keys_failed
    seen["CTM calls throttled"] += sum(1 for e in report.ctm_log if e.throttled)
    seen["deliveries after a hand-off without progress"] += sum(
        i.handoffs > 0 for i in report.invocations
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["soak"]:
        counts = [a for a in argv[1:] if a.isdigit()]
        return soak(int(counts[0]) if counts else 2000, write="--no-write" not in argv)
    if argv[:1] == ["scale"]:
        scale(write="--no-write" not in argv)
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
