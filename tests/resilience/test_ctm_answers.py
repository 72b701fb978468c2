"""CTM as it really behaves, at run level (issue 11): malformed answers, lists that do not
honour the selector, keys moving while pages are read, keys gone from OCI, busy vaults, and
calls too slow for the invocation's deadline. Each run goes through the real handler and
Lambda's pollers; the promises are asserted on the table, the queues and the captured logs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import pytest

from devkit.ctm_emulator import ListChurn, generate_keys
from devkit.ctm_emulator.faults import (
    LIST_ITEM_BAD_OCI_PARAMS,
    LIST_ITEM_WITHOUT_ID,
    REFRESH_BAD_OCI_PARAMS,
    REFRESH_NOT_A_KEY,
    REFRESH_NOT_JSON,
)
from tests.resilience.conftest import MakeScenario
from tests.resilience.lambda_kills import Containers, KillSwitch
from tests.resilience.promises import (
    refresh_calls,
    run_items,
)
from tests.resilience.scenario import Scenario, finished_once

pytestmark = pytest.mark.resilience
OVERSIZED = "oversized"  # a refresh answer larger than the client's 1 MiB cap on key bodies


def run_to_the_end(
    scenario: Scenario, kills: KillSwitch, request: dict[str, Any]
) -> tuple[Containers, dict[str, Any]]:
    """The request as an EventBridge event, then the pollers until the queues are empty;
    no invocation may have crashed."""
    containers = Containers(scenario.world, kills)
    answer = containers.invoke(scenario.world.rule_event(request))
    report = containers.drain()
    assert not report.crashes, "an invocation failed as a whole"
    return containers, answer


def logged(scenario: Scenario, field: str) -> list[Any]:
    """The values of a structured field in the warnings the package logged."""
    return [
        getattr(record, field)
        for record in scenario.logs.caplog.records
        if record.levelno >= logging.WARNING and hasattr(record, field)
    ]


# --- 4. malformed answers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "position"), [(LIST_ITEM_WITHOUT_ID, 0), (LIST_ITEM_BAD_OCI_PARAMS, -1)]
)
def test_a_malformed_list_item_is_skipped_and_counted_and_the_rest_refreshed(
    scenario: Scenario, kills: KillSwitch, mode: str, position: int
) -> None:
    # Given CTM listing one malformed item (the first key without an id, or the last with
    # oci_params a string) in its one page of 30 keys
    scenario.ctm.faults.malform(mode)
    keys = scenario.key_ids()
    malformed = keys[position]

    # When every key is requested
    containers, answer = run_to_the_end(
        scenario, kills, {"selector": {"all": True}, "request_id": "m"}
    )

    # Then the invocation succeeded; the malformed item was left out of the run and counted
    # in a warning, and the 29 others were refreshed once
    assert answer["fanned_out"] == 29
    assert sum(logged(scenario, "malformed")) >= 1
    results = finished_once(scenario, containers, "m", set(keys) - {malformed})
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert scenario.ctm.refresh_count(malformed) == 0


@pytest.mark.parametrize(
    "mode", [REFRESH_NOT_A_KEY, REFRESH_BAD_OCI_PARAMS, REFRESH_NOT_JSON, OVERSIZED]
)
def test_a_malformed_refresh_answer_fails_its_key_only(
    scenario: Scenario, kills: KillSwitch, mode: str
) -> None:
    # Given CTM answering one key's refresh with 200 and a body that is not that key (or
    # one larger than 1 MiB), and every other key's as it should
    keys = scenario.key_ids(6)
    bad = keys[4]
    faults = scenario.ctm.faults
    faults.malformed_keys = {bad}
    if mode == OVERSIZED:
        faults.oversize_bytes = 2 << 20
    else:
        faults.malform(mode)

    # When the keys are requested
    containers, _ = run_to_the_end(scenario, kills, {"keys": keys, "request_id": "bad-answer"})

    # Then that key is FAILED with BAD_RESPONSE after one call (never retried: the answer was
    # a 2xx), no invocation failed, and the others were refreshed once
    results = finished_once(scenario, containers, "bad-answer", set(keys))
    assert (results[bad]["status"], results[bad]["error_code"]) == ("FAILED", "BAD_RESPONSE")
    assert int(results[bad]["http_status"]) == 200
    del results[bad]
    assert {r["status"] for r in results.values()} == {"REFRESHED"}
    assert set(refresh_calls(scenario, keys).values()) == {1}


# --- 5. CTM modes -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["unknown-filter-ignored", "wildcard-match"])
def test_listed_keys_that_do_not_match_the_selector_are_logged_not_refreshed(
    scenario: Scenario, kills: KillSwitch, mode: str
) -> None:
    # Given a selector on one key's name, and a CTM that ignores the filter (it knows it as
    # display_name) or matches the name as a wildcard, so that it lists other keys too
    target = scenario.ctm.keys[7]
    name = str(target["oci_params"]["display_name"])
    faults = scenario.ctm.faults
    if mode == "unknown-filter-ignored":
        faults.ignore_unknown_filters = True
        faults.unknown_filters = {"key_name"}
        selector, matching = {"key_name": name}, {str(target["id"])}
    else:
        faults.wildcard_filters = True
        selector, matching = {"key_name": name[:-1] + "*"}, set()
    listed = {
        str(k["id"])
        for k in scenario.ctm.keys
        if mode == "unknown-filter-ignored"
        or str(k["oci_params"]["display_name"])[:-1] == name[:-1]
    }
    assert len(listed - matching) > 1

    # When the selector is requested
    containers, _ = run_to_the_end(scenario, kills, {"selector": selector, "request_id": "sel"})

    # Then only the keys whose name is the selector's were refreshed (none, for a wildcard:
    # the selector names no key with a star); every other listed key was logged by id and
    # counted, and called by nobody
    assert set(logged(scenario, "key_id")) >= listed - matching
    assert sum(logged(scenario, "mismatched")) == len(listed - matching)
    results = finished_once(scenario, containers, "sel", matching)
    assert {r["status"] for r in results.values()} <= {"REFRESHED"}
    assert scenario.ctm.refresh_count() == len(matching)


def test_keys_moving_while_pages_are_read_are_each_resolved_once(
    make_scenario: MakeScenario, kills: KillSwitch
) -> None:
    # Given 60 keys listed 25 to a page, and after every list answer CCKM forgets the first
    # two keys of the list (already listed: every position moves back by two) and discovers
    # a new one (created now: last in the list); unsorted, the list would be in updatedAt
    # order, which every refresh changes
    scenario = make_scenario(keys=generate_keys(60, seed=13))
    faults = scenario.ctm.faults
    faults.max_page_size = 25
    faults.list_churn = ListChurn(remove=2, add=1)
    faults.default_sort = "updatedAt"
    original = set(scenario.key_ids())

    # When every key is requested
    containers, answer = run_to_the_end(
        scenario, kills, {"selector": {"all": True}, "request_id": "churn"}
    )

    # Then every key listed was registered in exactly one chunk and called at most once;
    # every original key is in the run; keys CCKM forgot before their refresh are NOT_FOUND
    chunks = run_items(scenario.world, "churn", "CHUNK#")
    registered = Counter(key for chunk in chunks for key in chunk["keys"])
    assert {
        "chunks each key was registered in": set(registered.values()),
        "original keys not registered": original - set(registered),
        "keys discovered while listing joined the run": len(registered) > len(original),
        "fanned out": answer["fanned_out"],
    } == {
        "chunks each key was registered in": {1},
        "original keys not registered": set(),
        "keys discovered while listing joined the run": True,
        "fanned out": len(registered),
    }
    results = finished_once(scenario, containers, "churn", set(registered))
    present = {str(k["id"]) for k in scenario.ctm.keys}
    assert {
        "statuses": {key: result["status"] for key, result in results.items()},
        "refresh calls per key": set(refresh_calls(scenario, set(registered)).values()),
    } == {
        "statuses": {key: "REFRESHED" if key in present else "NOT_FOUND" for key in results},
        "refresh calls per key": {1},
    }


def test_gone_keys_are_not_found_not_authorized_ones_failed_and_a_busy_vault_waited_for(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # Given one key CCKM reports gone, three refreshes answering OCI's NotAuthorizedOrNotFound
    # under 404, 500 and 409, and one key whose vault is being updated for two attempts
    keys = scenario.key_ids()
    gone, denied_404, denied_500, denied_409, busy = keys[:5]
    faults = scenario.ctm.faults
    faults.gone_keys = {gone}
    faults.not_authorized_keys = {denied_404: 404, denied_500: 500, denied_409: 409}
    faults.vault_busy(busy, times=2)

    # When every key is requested
    containers, _ = run_to_the_end(
        scenario, kills, {"selector": {"all": True}, "request_id": "modes"}
    )

    # Then the gone key is NOT_FOUND (GONE); the NotAuthorizedOrNotFound ones FAILED whatever
    # their status, called once (OCI cannot tell a deleted key from a refused one: a lost
    # policy must not read as keys gone); the busy vault was retried and the key refreshed
    # (3 calls); the rest refreshed once
    results = finished_once(scenario, containers, "modes", set(keys))

    def outcome(key: str) -> tuple[str, str, int]:
        r = results[key]
        return str(r["status"]), str(r.get("error_code")), int(r.get("http_status", 0))

    assert outcome(gone) == ("NOT_FOUND", "GONE", 200)
    for denied, status in ((denied_404, 404), (denied_500, 500), (denied_409, 409)):
        assert outcome(denied) == ("FAILED", "NotAuthorizedOrNotFound", status)
    assert results[busy]["status"] == "REFRESHED"
    assert scenario.ctm.refresh_count(busy) == 3
    calls = refresh_calls(scenario, keys)
    del calls[busy]
    assert set(calls.values()) == {1}
    run = scenario.world.run_item("modes")
    assert (int(run["not_found"]), int(run["failed"])) == (1, 3)


def test_a_tenancy_whose_oci_policy_is_lost_has_its_keys_failed_and_none_not_found(
    scenario: Scenario, kills: KillSwitch
) -> None:
    # Given OCI answering NotAuthorizedOrNotFound for every key of one tenancy (under a 404)
    lost = str(scenario.ctm.keys[0]["tenancy"])
    scenario.ctm.faults.not_authorized_tenancies = {lost: 404}

    # When every key is requested
    containers, _ = run_to_the_end(
        scenario, kills, {"selector": {"all": True}, "request_id": "policy"}
    )

    # Then that tenancy's keys are FAILED with OCI's words after one call each (a lost policy
    # must not read as keys gone), the other tenancies' keys refreshed
    keys = {str(k["id"]): str(k["tenancy"]) for k in scenario.ctm.keys}
    results = finished_once(scenario, containers, "policy", set(keys))
    assert {key: (r["status"], r.get("error_code")) for key, r in results.items()} == {
        key: ("FAILED", "NotAuthorizedOrNotFound") if tenancy == lost else ("REFRESHED", None)
        for key, tenancy in keys.items()
    }
    assert set(refresh_calls(scenario, list(keys)).values()) == {1}


# --- 6. calls that would outlast the margin -----------------------------------------------------


class Countdown:
    """An invocation's remaining time, in real time (the client's deadlines are real)."""

    def __init__(self, seconds: float) -> None:
        self._ends = time.monotonic() + seconds

    def __call__(self) -> float:
        return self._ends - time.monotonic()


def settle(scenario: Scenario, queue: str, messages: list[Any], answer: dict[str, Any]) -> None:
    """What Lambda does with a batch's answer: deletes the messages done, the failed come back."""
    failed = {failure["itemIdentifier"] for failure in answer["batchItemFailures"]}
    stack = scenario.world.stack
    stack.delete_messages(queue, [m for m in messages if m["MessageId"] not in failed])
    stack.release_messages(queue, [m for m in messages if m["MessageId"] in failed])


@pytest.mark.parametrize(
    "slowness",
    [
        pytest.param({"trickle_interval": 0.05}, id="trickle"),
        pytest.param({"latency": 0.9}, id="slow"),
        pytest.param({"latency": 0.3, "error_rate": 1.0}, id="retried"),
    ],
)
def test_calls_that_would_outlast_the_margin_end_in_time_and_the_rest_is_handed_on(
    scenario: Scenario, kills: KillSwitch, slowness: dict[str, float]
) -> None:
    # Given 12 keys fanned out in 3 chunks, CTM_TIMEOUT_SECONDS=1 (margin 2 x 1 s + 5 s =
    # 7 s) and a batch invocation with 8 s left: 1 s to start calls, every call to end
    # within 3 s (5 s kept to record); and CTM answering refreshes one byte every 50 ms, or
    # after 0.9 s, or with a 503 after 0.3 s that up to 10 attempts would retry for longer
    scenario.world.cold_start(CTM_TIMEOUT_SECONDS="1", CTM_MAX_ATTEMPTS="10")
    keys = set(scenario.key_ids(12))
    containers = Containers(scenario.world, kills)
    intake = containers.invoke(
        scenario.world.rule_event({"keys": sorted(keys), "request_id": "slow"})
    )
    assert intake["fanned_out"] == 12
    for name, value in slowness.items():
        setattr(scenario.ctm.faults, name, value)
    queue = scenario.world.stack.tenancy_queue_url
    messages = scenario.world.stack.receive_all(queue)
    lifetime = 8.0

    # When the batch is delivered with that little time
    started = time.monotonic()
    answer = containers.invoke(
        scenario.world.stack.sqs_event(messages, queue), remaining=Countdown(lifetime)
    )
    elapsed = time.monotonic() - started

    # Then the invocation returned before its deadline (a whole trickled answer, or ten
    # attempts, would have taken far longer; the 5 s kept for recording were enough), and what
    # it could not finish is owed: its messages come back (as batch item failures, or in a
    # message the run sent on)
    assert elapsed < lifetime, f"the invocation took {elapsed:.1f} s"
    owed = {k for k, r in scenario.world.results("slow").items() if r["status"] == "PENDING"}
    handed_on = bool(answer["batchItemFailures"]) or kills.sent[-1].get("run_id") == "slow"
    assert {"keys owed": bool(owed), "handed on": handed_on} == {
        "keys owed": True,
        "handed on": True,
    }
    # ... and once CTM is quick again the run completes, each key refreshed, the keys whose
    # calls were cut called again, the others once
    scenario.ctm.faults.clear()
    settle(scenario, queue, messages, answer)
    containers.drain()
    results = finished_once(scenario, containers, "slow", keys)
    calls = refresh_calls(scenario, keys)
    # (a key owed is one whose call was cut or never started: only those are called again; a
    # cut call's request may reach the emulator's log only when its trickle ends, later)
    assert {
        "statuses": {r["status"] for r in results.values()},
        "keys called again though not owed": {k for k, n in calls.items() if n > 1} - owed,
    } == {"statuses": {"REFRESHED"}, "keys called again though not owed": set()}
