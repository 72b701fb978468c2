"""Throughput against OCI's per-tenancy limit: a curl-style loop, a naive thread pool, our engine.

The CTM emulator answers every key call after 150 ms and allows 10 OCI reads per second per
tenancy (a refresh costs 2); 600 keys spread equally over 3 tenancies, so no client can do
better than 3 x 5 = 15 refreshes per second.

    PYTHONPATH=layers/common:. .venv/bin/python -m bench.throughput

The loop and the pool call the emulator from this process. Our engine runs as deployed (see
``bench.scale.drive``): the schedule fires the intake invocation, which sends the run's chunks
(one tenancy each) to the FIFO tenancy queue; the model of Lambda's SQS poller delivers them to
handler containers; moto and the emulator run in processes of their own.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from bench.drive import RUN_ID, Drive, drive, run_notes, schedule
from bench.figures import (
    CEILING,
    FULL_RATE,
    KEYS_PER_TENANCY,
    LATENCY,
    OCI_READS_PER_SECOND,
    Scenario,
)
from bench.world import TENANCIES, CtmProcess, KeySet, World, ctm_calls, prepare_process
from cckm_refresh.table.items import RunState

SEQUENTIAL_SUBSET = 120  # the loop runs at ~6 keys/s: 600 keys would take 100 s to say the same


def _issue_jwt(ctm: Any) -> str:
    answer = requests.post(
        f"{ctm.base_url}/api/v1/auth/tokens",
        json={"grant_type": "password", "username": ctm.username, "password": ctm.password},
        verify=ctm.ca_file,
        timeout=30,
    )
    answer.raise_for_status()
    return str(answer.json()["jwt"])


def _refresh_once(ctm: Any, jwt: str, key_id: str) -> bool:
    """The seed's call, as one curl line: a new connection, one attempt, 2xx or failure."""
    try:
        answer = requests.post(
            f"{ctm.base_url}/api/v1/cckm/oci/keys/{key_id}/refresh",
            headers={"Authorization": f"Bearer {jwt}", "accept": "application/json"},
            verify=ctm.ca_file,
            timeout=30,
        )
    except requests.RequestException:
        return False
    return answer.ok


def _scenario(
    name: str, how: str, log: list[Any], *, keys: int, refreshed: int, wall: float
) -> Scenario:
    """A row: ``refreshed`` of ``keys`` in ``wall`` seconds, and what the emulator's request
    ``log`` saw."""
    calls = ctm_calls(log)
    arrivals = [e.monotonic for e in log if e.operation == "refresh"]
    return Scenario(
        name=name,
        how=how,
        keys=keys,
        refreshed=refreshed,
        failed=keys - refreshed,
        wall_seconds=wall,
        refresh_calls=calls.get("refresh", 0),
        throttled=calls["throttled"],
        refresh_span_seconds=max(arrivals) - min(arrivals) if arrivals else 0.0,
        costs={"ctm": calls},
    )


def _measure(
    ctm: Any, name: str, how: str, key_ids: Sequence[str], run: Callable[[], list[bool]]
) -> Scenario:
    ctm.reset_throttle()
    ctm.reset_log()
    started = time.perf_counter()
    answers = run()
    wall = time.perf_counter() - started
    return _scenario(
        name, how, ctm.request_log, keys=len(key_ids), refreshed=sum(answers), wall=wall
    )


def sequential_loop(ctm: Any, key_ids: Sequence[str]) -> Scenario:
    """(a) One token, then the seed's curl call for each key in turn, no retries."""
    subset = list(key_ids[:SEQUENTIAL_SUBSET])
    jwt = _issue_jwt(ctm)
    return _measure(
        ctm,
        "sequential loop",
        f"curl-style loop over the first {len(subset)} keys: one JWT, a new TLS connection "
        "per call, one attempt",
        subset,
        lambda: [_refresh_once(ctm, jwt, key_id) for key_id in subset],
    )


def unbounded_pool(ctm: Any, key_ids: Sequence[str]) -> Scenario:
    """(b) One thread per key, all at once, one attempt each: what a naive script does."""
    jwt = _issue_jwt(ctm)

    def run() -> list[bool]:
        with ThreadPoolExecutor(max_workers=len(key_ids)) as pool:
            return list(pool.map(lambda key_id: _refresh_once(ctm, jwt, key_id), key_ids))

    return _measure(
        ctm,
        "unbounded thread pool",
        f"{len(key_ids)} threads (one per key), no pacing, one attempt each",
        key_ids,
        run,
    )


def engine_as_deployed(world: World, keys: KeySet) -> Scenario:
    """(c) The real refresh handler as deployed: the schedule's intake invocation, then one
    tenancy-queue invocation per chunk, delivered by the poller model to handler containers."""
    with CtmProcess(keys) as ctm:
        ctm.set_faults(latency=LATENCY, tenancy_read_limit=OCI_READS_PER_SECOND)
        stack = world.fresh_stack(ctm)
        # The true budget: OCI's reads per second over the reads of a refresh.
        env = stack.refresh_env(CTM_BASE_URL=ctm.base_url, TENANCY_RATE_LIMIT=str(FULL_RATE))
        asked = [key_id.lower() for key_id, _ in ctm.key_tenancies()]
        run = drive(world, ctm, stack, env, schedule())
        state = run.run_state()
    return _engine_scenario(run, asked, state, _engine_how(env, world.mappings))


def _engine_scenario(
    run: Drive, asked: Sequence[str], state: RunState | None, how: str
) -> Scenario:
    """The engine's row from a driven run: refreshed keys from the emulator's log, over the
    time from the schedule firing to the end of the last invocation."""
    per_key = run.refreshes()
    refreshed = sum(1 for key in asked if per_key[key])
    scenario = _scenario(
        "our engine", how, run.log, keys=len(asked), refreshed=refreshed, wall=run.seconds()
    )
    aws, _ = run.pool.aws()
    scenario.costs |= {"dynamodb": aws.of("dynamodb"), "sqs": aws.of("sqs")}
    twice = sum(1 for n in per_key.values() if n > 1)
    scenario.notes += [
        *_invocations_note(run),
        *run_notes({RUN_ID: state}),
        *_engine_diagnosis(run.log, refreshed, run.t0, run.last_end),
        *([f"{twice} keys refreshed more than once"] if twice else []),
        *([] if run.report.drained else ["the queues did not drain before the timeout"]),
    ]
    return scenario


def _engine_how(env: Mapping[str, str], mappings: Sequence[str]) -> str:
    """How the engine ran: as deployed, and the settings that decide its pace."""
    return (
        "real refresh handler as deployed: a scheduled intake invocation (selector all) "
        "registers the run's chunks (one tenancy each) and sends them to the FIFO tenancy "
        "queue, then tenancy-queue invocations refresh them, delivered by the model of Lambda's "
        f"SQS poller (`devkit/lambda_poller.py`; {'; '.join(mappings)}) to handler containers "
        "(a process per concurrent invocation, reused warm; moto and the emulator in processes "
        "of their own); template defaults except "
        f"TENANCY_RATE_LIMIT={env['TENANCY_RATE_LIMIT']}: "
        f"REFRESH_CONCURRENCY={env['REFRESH_CONCURRENCY']}, "
        f"FANOUT_CHUNK_SIZE={env['FANOUT_CHUNK_SIZE']}, "
        f"CTM_TIMEOUT_SECONDS={env['CTM_TIMEOUT_SECONDS']}; wall is from the schedule firing to "
        "the end of the last invocation"
    )


def _invocations_note(run: Drive) -> list[str]:
    """The invocations the run took: the intake's time, the chunks', concurrency, cold starts."""
    intake = [p for p in run.pool.invocations if p.source == "direct"]
    chunks = [p for p in run.pool.invocations if p.source != "direct"]
    if not intake or not chunks:
        return [f"invocations: {len(intake)} intake, {len(chunks)} from the queues"]
    first_chunk = min(p.started for p in chunks) - run.t0
    return [
        f"invocations: the intake {intake[0].invocation.wall_seconds:.1f} s, then "
        f"{len(chunks)} from the queues (chunks of {min(p.keys for p in chunks)}-"
        f"{max(p.keys for p in chunks)} keys), the first starting {first_chunk:.1f} s after "
        f"the schedule fired; peak in flight {dict(run.report.peak_in_flight)}, "
        f"{run.pool.cold_starts} cold starts"
    ]


def _engine_diagnosis(
    entries: Sequence[Any], refreshed: int, sent: float, answered: float
) -> list[str]:
    """Where the time went: before the first refresh, refresh phase, after the last one."""
    refreshes = sorted((e for e in entries if e.operation == "refresh"), key=lambda e: e.monotonic)
    if not refreshes:
        return ["no refresh call reached the emulator"]
    admitted = _admitted_by_tenancy(refreshes)
    return [
        *_phase_notes(refreshes, refreshed, sent, answered),
        *_throttle_spacing_note(refreshes, admitted),
        *_arrival_gaps_note(admitted),
    ]


def _phase_notes(
    refreshes: Sequence[Any], refreshed: int, sent: float, answered: float
) -> list[str]:
    """Time before the first refresh and after the last; the refresh phase's own rate."""
    first, last = refreshes[0].monotonic, refreshes[-1].monotonic  # sorted by arrival
    span = last - first
    return [
        f"before the first refresh {first - sent:.1f} s (the intake: token, list, registering "
        "and sending the chunks; then the poller's delivery and a container's cold start); "
        f"after the last refresh arrived {answered - last:.1f} s (its answer, recording, the "
        "invocation's end)",
        f"refresh phase: {len(refreshes)} calls in {span:.1f} s "
        f"({refreshed / span if span else 0:.2f} refreshed keys/s, "
        f"{refreshed / span / CEILING if span else 0:.3f} of the ceiling)",
    ]


def _admitted_by_tenancy(refreshes: Sequence[Any]) -> dict[str, list[float]]:
    """Arrival times of the refreshes OCI admitted (not throttled), by tenancy."""
    by_tenancy: dict[str, list[float]] = {}
    for entry in refreshes:
        if entry.tenancy and not entry.throttled:
            by_tenancy.setdefault(entry.tenancy, []).append(entry.monotonic)
    return by_tenancy


def _throttle_spacing_note(
    refreshes: Sequence[Any], admitted: Mapping[str, list[float]]
) -> list[str]:
    """How long after the window-th previous admitted refresh of its tenancy each throttled
    call came (OCI's window is 1 s: under 1000 ms is too early)."""
    window = FULL_RATE  # refreshes OCI admits per tenancy in its 1 s window
    spacing = []  # throttled arrival - arrival of the window-th previous admitted refresh
    for entry in refreshes:
        if entry.throttled and entry.tenancy:
            before = [t for t in admitted.get(entry.tenancy, []) if t <= entry.monotonic]
            if len(before) >= window:
                spacing.append(entry.monotonic - before[-window])
    if not spacing:
        return []
    return [
        f"each throttled call came a median {statistics.median(spacing) * 1000:.0f} ms "
        f"(min {min(spacing) * 1000:.0f}, max {max(spacing) * 1000:.0f}) after the "
        f"{window}th-previous admitted refresh of its tenancy (OCI's window: 1000 ms)"
    ]


def _arrival_gaps_note(admitted: Mapping[str, list[float]]) -> list[str]:
    """The time between a tenancy's consecutive admitted refreshes: median and p95."""
    gaps = [b - a for arrivals in admitted.values() for a, b in itertools.pairwise(arrivals)]
    if not gaps:
        return []
    return [
        "admitted refreshes per tenancy arrive every "
        f"{statistics.median(gaps) * 1000:.0f} ms (median), "
        f"{statistics.quantiles(gaps, n=20)[-1] * 1000:.0f} ms (p95)"
    ]


def run_all() -> list[Scenario]:
    """Run (a) and (b) on an emulator in this process, then (c) as deployed; their figures."""
    from devkit.ctm_emulator import CtmEmulator

    prepare_process()
    keys = KeySet(tenancies=TENANCIES, per_tenancy=KEYS_PER_TENANCY)
    key_ids = [key["id"] for key in keys.build()]
    scenarios = []
    with CtmEmulator(keys=keys.build()) as ctm:
        ctm.faults.latency = LATENCY
        ctm.faults.tenancy_read_limit = OCI_READS_PER_SECOND
        for client in (sequential_loop, unbounded_pool):
            scenarios.append(client(ctm, key_ids))
            print_scenario(scenarios[-1])
    world = World.start()
    try:
        scenarios.append(engine_as_deployed(world, keys))
        print_scenario(scenarios[-1])
    finally:
        world.stop()
    return scenarios


def print_scenario(s: Scenario) -> None:
    """One scenario's figures on a few lines."""
    print(f"[throughput] {s.name}: {s.how}")
    print(
        f"  {s.refreshed}/{s.keys} refreshed in {s.wall_seconds:.1f} s = "
        f"{s.keys_per_second:.2f} keys/s ({s.ratio:.3f} of {CEILING:.0f}/s); "
        f"failed {s.failed}; throttled {s.throttled} of {s.refresh_calls} refresh calls "
        f"({s.throttled_share:.1%})"
    )
    for note in s.notes:
        print(f"  {note}")
    if "dynamodb" in s.costs:
        print(f"  AWS calls: dynamodb {s.costs['dynamodb']}, sqs {s.costs['sqs']}")
    print(f"  CTM calls: {s.costs['ctm']}", flush=True)


if __name__ == "__main__":
    run_all()
