"""Every run completes: the real run code in the simulated world (devkit/sim), over schedules
Hypothesis draws, and the cases the issues measured (docs/reference.md 4.3)."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

from devkit.sim.properties import check
from devkit.sim.scenarios import scenarios
from devkit.sim.world import LISTINGS, Pipeline, Scenario, World

# ``make test`` runs this many schedules; ``make soak`` thousands (bench/simulation.py).
EXAMPLES = int(os.environ.get("SIM_EXAMPLES", "30"))


def test_a_tenancy_whose_work_outlasts_an_invocation_is_refreshed_whole_by_a_warm_container() -> (
    None
):
    # Given one tenancy of 90 keys at 2/s, CTM_TIMEOUT_SECONDS=5 (a 15 s margin), 0.2 s calls,
    # 30 s invocations, the tenancy queue's messages delivered one at a time to a warm container
    scenario = Scenario(
        tenancies=(90,),
        rate=2.0,
        ctm_timeout=5.0,
        function_timeout=30.0,
        latency=0.2,
        tenancy_batch_size=1,
        warm=True,
    )

    # When the schedule fires
    report = World(scenario).run()

    # Then every key is refreshed, each invocation of the tenancy queue refreshing some (on
    # c4e111e the third and every later one refreshed none and handed the same 36 keys on for
    # ever: the run stayed RUNNING), and the run completes within five minutes
    findings = check(report)
    assert findings.problems == ()
    [run] = report.runs.values()
    assert (run["status"], run["refreshed"]) == ("COMPLETED", 90)
    chunks = [i for i in report.invocations if i.source == "TenancyQueue"]
    per_chunk = [report.refreshes_during(invocation) for invocation in chunks]
    assert len(per_chunk) >= 4
    assert all(n > 0 for n in per_chunk), per_chunk
    assert report.ended_at < 300


def test_a_function_timeout_too_short_for_one_call_is_refused_at_cold_start() -> None:
    report = World(Scenario(tenancies=(3,), ctm_timeout=5.0, function_timeout=19.0)).run()
    assert report.runs == {}
    assert all(i.failed for i in report.invocations)
    assert "CTM_TIMEOUT_SECONDS" in str(report.invocation_errors[0])


def test_a_run_whose_last_delivery_died_after_its_last_chunk_closed_is_completed_by_the_sweep() -> (
    None
):
    # Given the schedule `make soak` found (its 677th): one tenancy of 38 keys at 0.5/s, 21 s
    # invocations killed 30 % of the time, MAX_RECEIVE_COUNT 2; a chunk's last delivery closes
    # the run's last chunk and dies before completing the run, and its message dead-letters
    scenario = Scenario(
        tenancies=(38,),
        rate=0.5,
        ctm_timeout=2.0,
        function_timeout=21.0,
        latency=1.0,
        max_receive_count=2,
        chunk_size=5,
        concurrency=4,
        kill_rate=0.3,
        error_rate=0.2,
        token_lifetime=60.0,
        listing="sort-ignored",
        warm=False,
        seed=38,
    )

    # When the night goes on (the sweep every 15 minutes)
    report = World(scenario).run()

    # Then the sweep completed the run that owed nothing (before the fix it stayed RUNNING,
    # swept again every 15 minutes, for ever)
    assert check(report).problems == ()
    [run] = report.runs.values()
    assert (run["status"], run["refreshed"] + run["failed"]) == ("COMPLETED", 38)


def test_a_key_whose_tenancy_lookup_failed_is_not_refreshed_beside_its_tenancy() -> None:
    # Given the schedule `make soak` found next: a pipeline names a tenancy's two keys as the
    # schedule lists them, CTM answers 503 to a fifth of the calls (the lookup of a key's
    # tenancy among them), 0.5 refreshes/s allowed
    scenario = Scenario(
        tenancies=(2,),
        rate=0.5,
        ctm_timeout=2.0,
        function_timeout=12.0,
        max_receive_count=2,
        chunk_size=5,
        concurrency=4,
        error_rate=0.2,
        token_lifetime=60.0,
        listing="page-capped",
        pipeline=(Pipeline(at=0, tenancy=0, keys=2),),
        warm=False,
        seed=41,
    )

    # When both runs go
    report = World(scenario).run()

    # Then the tenancy never had two refreshes in one second (before the fix, the key whose
    # lookup failed went to the `~unknown` group and was refreshed beside its own tenancy's)
    assert check(report).problems == ()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenarios())
def test_every_run_completes_with_one_outcome_per_key_within_budgets_and_rates(
    scenario: Scenario,
) -> None:
    findings = check(World(scenario).run())
    assert findings.problems == (), (scenario, findings)


@pytest.mark.parametrize("listing", sorted(LISTINGS))
def test_a_selector_run_refreshes_every_key_exactly_once_however_ctm_lists(listing: str) -> None:
    # Given 300 keys over three tenancies and a CTM that lists them in one of its ways (sort
    # honoured, one sort field refused, sort ignored, pages capped at 7 keys)
    scenario = Scenario(tenancies=(120, 100, 80), listing=listing, latency=0.05, rate=4.0)

    # When the schedule's selector ({"all": true}) runs
    report = World(scenario).run()

    # Then every key has one result, REFRESHED, and CTM was asked to refresh each exactly once
    assert check(report).problems == ()
    [run] = report.runs.values()
    assert (run["status"], run["requested"], run["refreshed"]) == ("COMPLETED", 300, 300)
    calls = Counter(key for _tenancy, key, _at in report.refreshes)
    assert set(calls) == set(report.keys)
    assert set(calls.values()) == {1}
    # (and CTM did list as the mode says: a refused sort answered 400, capped pages were many)
    lists = [e for e in report.ctm_log if e.operation == "list"]
    assert any(e.status == 400 for e in lists) is (listing == "sort-refused")
    assert len(lists) >= (300 // 7 if listing == "page-capped" else 1)
