"""What must hold after any simulated schedule (docs/reference.md 4.3 and 4.4).

- every run completes, within a bound of invocations linear in its keys;
- every key a run asked for has exactly one result, terminal, and the run's counts are
  exactly its results';
- no invocation outlives its budget (Lambda never had to end one);
- no tenancy's refresh calls exceed its rate in any one-second window, and OCI never
  throttled one (with the tenancy queue, the rate holds across all invocations);
- nothing in the simulation raised an error of its own.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from dataclasses import dataclass

from devkit.sim.world import SWEEP_EVERY, Report

TERMINAL = frozenset({"REFRESHED", "NOT_FOUND", "FAILED", "SKIPPED"})
COUNTS = {
    "REFRESHED": "refreshed",
    "NOT_FOUND": "not_found",
    "FAILED": "failed",
    "SKIPPED": "skipped",
}
HEADROOM = 0.95  # the limiter's (cckm_refresh.ratelimit)


@dataclass(frozen=True)
class Findings:
    problems: tuple[str, ...]
    invocations: int
    bound: int
    busiest_second: dict[str, int]

    @property
    def ok(self) -> bool:
        return not self.problems


def invocation_bound(report: Report) -> int:
    """At most this many invocations end every run: each delivery of a message records an
    outcome (at most one per key) or counts toward ``MAX_RECEIVE_COUNT``, and a hand-off
    that made progress starts a new message; per run, its keys and a chunk per tenancy and
    per ``FANOUT_CHUNK_SIZE`` keys, each tried ``MAX_RECEIVE_COUNT`` times, plus the
    intake's and the schedule's retries; and the sweep schedule's invocations."""
    scenario = report.scenario
    per_run = sum(
        count + 2 + math.ceil(count / scenario.chunk_size) for count in scenario.tenancies
    )
    runs = max(1, len(report.expected_runs))
    sweeps = int(report.ended_at // SWEEP_EVERY) + 1  # the sweep schedule's own
    return scenario.max_receive_count * runs * (per_run + 3) + sweeps


def check(report: Report) -> Findings:
    problems: list[str] = []
    problems += _runs_complete(report)
    problems += _one_terminal_result_per_key(report)
    overran = [i for i in report.invocations if i.overran]
    if overran:
        problems.append(f"{len(overran)} invocations outlived their budget")
    busiest = _busiest_second(report)
    allowed = math.floor(report.scenario.rate * HEADROOM + 1e-9) + 1
    problems += [
        f"tenancy {t}: {n} refresh calls in one second (rate {report.scenario.rate})"
        for t, n in busiest.items()
        if n > allowed
    ]
    throttled = [e for e in report.ctm_log if e.throttled]
    if throttled and report.scenario.rate * 2 <= (report.scenario.oci_read_limit or math.inf):
        problems.append(f"OCI throttled {len(throttled)} calls")
    problems += _clean_scenarios_refresh_every_key(report)
    bound = invocation_bound(report)
    if len(report.invocations) > bound:
        problems.append(f"{len(report.invocations)} invocations, more than the bound {bound}")
    problems += [f"error in {name}: {error!r}" for name, error in report.errors]
    return Findings(tuple(problems), len(report.invocations), bound, busiest)


def _runs_complete(report: Report) -> list[str]:
    problems = []
    for run_id in sorted(report.expected_runs):
        run = report.runs.get(run_id)
        if run is None:
            problems.append(f"run {run_id} never started")
        elif run.get("status") != "COMPLETED":
            problems.append(f"run {run_id} is {run.get('status')} at t={report.ended_at:.0f}")
    return problems


def _one_terminal_result_per_key(report: Report) -> list[str]:
    problems = []
    for run_id, run in report.runs.items():
        results = report.results.get(run_id, {})
        wanted = report.requested.get(run_id, set())
        missing = wanted - set(results)
        if missing and not run.get("listing_error"):  # a listing that failed says so
            problems.append(f"run {run_id}: {len(missing)} keys without a result")
        open_results = [k for k, r in results.items() if r.get("status") not in TERMINAL]
        if run.get("status") == "COMPLETED" and open_results:
            problems.append(f"run {run_id} completed with {len(open_results)} keys not terminal")
        if run.get("status") != "COMPLETED":
            continue
        tally: dict[str, int] = defaultdict(int)
        for result in results.values():
            tally[COUNTS.get(str(result.get("status")), "other")] += 1
        for name in COUNTS.values():
            if int(run.get(name, 0)) != tally[name]:
                problems.append(f"run {run_id}: {name} {run.get(name)} but {tally[name]} results")
        if int(run.get("requested", 0)) != len(results):
            problems.append(
                f"run {run_id}: requested {run.get('requested')}, {len(results)} results"
            )
    return problems


def _busiest_second(report: Report) -> dict[str, int]:
    """Per tenancy, the most refresh calls that reached CTM within one second."""
    arrivals: dict[str, list[float]] = defaultdict(list)
    for tenancy, _key, moment in report.refreshes:
        arrivals[str(tenancy)].append(moment)
    busiest = {}
    for tenancy, moments in arrivals.items():
        moments.sort()
        busiest[tenancy] = max(
            bisect.bisect_left(moments, start + 1.0 - 1e-6) - i for i, start in enumerate(moments)
        )
    return busiest


def _clean_scenarios_refresh_every_key(report: Report) -> list[str]:
    """With nothing in the scenario that fails a key (no kill, no CTM error), every key CCKM
    knows is refreshed, whatever the tokens' lifetime, the rates or the hand-offs."""
    scenario = report.scenario
    if scenario.kill_rate or scenario.error_rate:
        return []  # the odd keys' outcomes hold whatever else fails, but are not checked then
    problems = []
    for run_id, results in report.results.items():
        for key_id, wanted in report.odd_keys.items():
            got = results.get(key_id, {}).get("status")
            if key_id in results and got != wanted:
                problems.append(f"run {run_id}: odd key {key_id} is {got}, not {wanted}")
        unrefreshed = {
            key_id: (r.get("status"), r.get("error_code"))
            for key_id, r in results.items()
            if key_id in report.keys
            and key_id not in report.odd_keys
            and r.get("status") != "REFRESHED"
        }
        if unrefreshed:
            example = next(iter(unrefreshed.items()))
            problems.append(
                f"run {run_id}: {len(unrefreshed)} keys not refreshed without a fault, "
                f"e.g. {example}"
            )
    return problems
