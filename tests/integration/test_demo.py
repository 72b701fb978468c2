"""``make demo``: its entry point plays the whole scenario, prints it, and fails when it should."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from devkit.demo import Scenario, run
from devkit.demo_report import Expected, Observed, QueueTraffic, check

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


# What the demo's output shows: doctor's preflight, the results, the run, the rejection and the
# notifications.
DEMO_SHOWS = (
    "PASS  list order: sort=createdAt,id honoured",
    "doctor: 9 PASS, 0 WARN, 0 FAIL, 0 SKIP: ready",
    "Results of run schedule-2026-11-28T02:00:00Z (40 keys):",
    "COMPLETED; 40 requested, 39 refreshed, 1 not found, 0 failed, 3 rotated",
    "tenancy queue, invocation",
    "ApproximateReceiveCount [2]",
    "Queues: tenancy queue 4 message(s) in ",
    "ENABLED -> DISABLED",
    "Rejected request REJECTED#",
    "Dead-letter queue: ",
    "RUN_COMPLETED, ",
    "KEY_ROTATED, ",
    "KEY_STATE_CHANGED, ",
    "REQUEST_REJECTED, ",
    "Every expected outcome happened.",
    "Elapsed: ",
)


def test_the_demo_entry_point_plays_the_whole_scenario_and_exits_zero() -> None:
    # Given a shell with no AWS account configured (a profile that does not exist)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AWS_") and name != "PYTHONPATH"
    }
    env |= {"PYTHONPATH": f"{ROOT / 'layers' / 'common'}{os.pathsep}{ROOT}"}
    env |= {"AWS_PROFILE": "no-such-profile"}

    # When `make demo`'s command runs
    done = subprocess.run(
        [sys.executable, "-m", "devkit.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    # Then it succeeds and shows the results, the run, the rejection and the notifications
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert [part for part in DEMO_SHOWS if part not in done.stdout] == []


def test_the_demo_exits_non_zero_when_the_world_misbehaves() -> None:
    # Given a CTM that refuses the flaky key for good (403) instead of recovering
    def refuse_for_good(ctm: Any) -> None:
        for key_id in list(ctm.faults.fail_keys):
            ctm.faults.fail_key(key_id, 403)

    out = io.StringIO()

    # When the demo plays a small version of its scenario
    code = run(Scenario(keys=12, tenancies=2), out, sabotage=refuse_for_good)

    # Then it says what did not happen and exits 1
    text = out.getvalue()
    assert code == 1
    assert "FAILED: " in text
    assert "the flaky key REFRESHED, got FAILED" in text
    assert "Every expected outcome happened." not in text


def test_the_environment_is_restored_after_the_demo() -> None:
    before = dict(os.environ)

    run(Scenario(keys=12, tenancies=2), io.StringIO())

    assert dict(os.environ) == before


# --- the checks themselves (no emulators) ----------------------------------------------------


def _expected() -> Expected:
    return Expected(
        run_id="schedule-x",
        requested=3,
        not_found=1,
        failed=0,
        rotated=frozenset({"k1"}),
        disabled="k2",
        deleted="k3",
        flaky="k2",
        rejected_field="keys[0]",
    )


def _note(event_type: str, severity: str, **body: str) -> dict[str, Any]:
    return {
        "Subject": f"[{severity}] {event_type}",
        "Message": {"event_type": event_type, "severity": severity, "summary": "s", **body},
        "MessageAttributes": {
            "event_type": {"Type": "String", "Value": event_type},
            "severity": {"Type": "String", "Value": severity},
        },
    }


def _observed() -> Observed:
    return Observed(
        baseline={"status": "COMPLETED"},
        run={
            "run_id": "schedule-x",
            "status": "COMPLETED",
            "requested": 3,
            "refreshed": 2,
            "not_found": 1,
            "failed": 0,
            "rotated": 1,
        },
        before={},
        results={
            "k1": {"status": "REFRESHED", "version_changed": True, "lifecycle_state": "ENABLED"},
            "k2": {"status": "REFRESHED", "lifecycle_state": "DISABLED"},
            "k3": {"status": "NOT_FOUND"},
        },
        rejected={"error": "keys[0]: must be a CCKM resource id"},
        dead_letters=[{"Body": "{}", "MessageAttributes": {"error": {"StringValue": "keys[0]"}}}],
        notifications=[
            _note("RUN_COMPLETED", "WARNING", run_id="schedule-x"),
            _note("KEY_ROTATED", "INFO", key_id="k1"),
            _note("KEY_STATE_CHANGED", "ERROR", key_id="k2"),
            _note("REQUEST_REJECTED", "ERROR"),
        ],
        flaky_receive_counts=[1, 2],
        work_queue=QueueTraffic(messages=1, deliveries=1, invocations=1),
        tenancy_queue=QueueTraffic(messages=2, deliveries=3, invocations=2),
    )


def test_the_checks_pass_when_everything_expected_happened() -> None:
    assert check(_observed(), _expected()) == []


@pytest.mark.parametrize(
    ("expected", "miss"),
    [
        (replace(_expected(), rotated=frozenset({"k1", "k3"})), "rotations detected"),
        (replace(_expected(), requested=4), "run counts"),
        (replace(_expected(), deleted="k1"), "the deleted key NOT_FOUND"),
        (replace(_expected(), rejected_field="selector"), "REJECTED naming selector"),
    ],
)
def test_a_wrong_expectation_is_reported_as_a_miss(expected: Expected, miss: str) -> None:
    misses = check(_observed(), expected)

    assert any(miss in line for line in misses), misses


def test_a_missing_notification_is_a_miss() -> None:
    observed = replace(_observed(), notifications=_observed().notifications[:-1])

    assert check(observed, _expected()) == ["one REQUEST_REJECTED (ERROR) for the invalid message"]


def test_a_key_finished_without_a_redelivery_is_a_miss() -> None:
    observed = replace(_observed(), flaky_receive_counts=[1])

    [miss] = check(observed, _expected())
    assert "redelivery" in miss


def test_a_run_that_never_used_the_tenancy_queue_is_a_miss() -> None:
    observed = replace(_observed(), tenancy_queue=QueueTraffic())

    [miss] = check(observed, _expected())
    assert "tenancy queue" in miss
