"""The refresh engine with a fake CTM: outcomes, scheduling across tenancies, deadline, abort."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from cckm_refresh.ctm.errors import (
    CtmDeadlineError,
    CtmNotFoundError,
    CtmPermanentError,
    CtmSecretUnavailableError,
    CtmThrottledError,
    CtmTokenExpiredError,
)
from cckm_refresh.ctm.transport import Pacer
from cckm_refresh.engine import EngineResult, RefreshEngine, WorkItem
from cckm_refresh.model import KeyInfo, Status
from cckm_refresh.ratelimit import TenancyRateLimiter
from cckm_refresh.runtime import Deadline
from devkit.sim.runtime import SimRuntime


@dataclass(frozen=True)
class FakeResponse:
    body: dict[str, Any]
    http_status: int = 200
    attempts: int = 1
    elapsed: float = 0.0


def key_object(key_id: str, tenancy: str = "t1", version: str = "v2") -> dict[str, Any]:
    return {
        "id": key_id,
        "tenancy": tenancy,
        "region": "us-ashburn-1",
        "refreshed_at": "2026-11-28T06:00:00.000000Z",
        "oci_params": {
            "key_id": f"ocid1.key.oc1.iad.{key_id}",
            "display_name": f"name-{key_id}",
            "vault_name": "vault-a",
            "lifecycle_state": "ENABLED",
            "current_key_version": version,
        },
    }


@dataclass
class FakeCtm:
    """Answers refreshes from a script: key id -> exception to raise (else success), each
    answer ``latency`` seconds after the call leaves."""

    failures: dict[str, Exception] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    deadlines: list[float] = field(default_factory=list)
    latency: float = 0.0
    runtime: SimRuntime | None = None

    def refresh(self, key_id: str, pacer: Pacer, deadline: Deadline) -> FakeResponse:
        self.deadlines.append(deadline.at)
        if key_id in self.failures and isinstance(self.failures[key_id], SendsNothing):
            raise self.failures[key_id].error
        if not pacer.wait(deadline):
            raise CtmDeadlineError("no slot in time", error_code="DEADLINE", attempts=0)
        self.calls.append(key_id)
        if self.runtime is not None and self.latency:
            self.runtime.sleep(self.latency)
        if key_id in self.failures:
            raise self.failures[key_id]
        pacer.answered()
        return FakeResponse(key_object(key_id), elapsed=self.latency)


@dataclass(frozen=True)
class SendsNothing(Exception):
    """The call fails before asking for a slot (the secret unreadable, say)."""

    error: Exception


def items(*names: str, tenancy: str | None = None) -> list[WorkItem]:
    known = (lambda n: KeyInfo(key_id=n, tenancy=tenancy)) if tenancy else (lambda n: None)
    return [WorkItem(name, known(name)) for name in names]


@dataclass
class Run:
    """An engine run on the simulation's runtime (virtual time, one thread at a time)."""

    ctm: FakeCtm
    rate: float = 1000.0
    concurrency: int = 4
    seed: int = 0
    runtime: SimRuntime = field(init=False)
    limiter: TenancyRateLimiter = field(init=False)
    engine: RefreshEngine = field(init=False)

    def __post_init__(self) -> None:
        self.runtime = SimRuntime(self.seed)
        self.ctm.runtime = self.runtime
        self.limiter = TenancyRateLimiter(self.rate, runtime=self.runtime)
        self.engine = RefreshEngine(self.ctm.refresh, self.limiter, concurrency=self.concurrency)

    def __call__(
        self, work: list[WorkItem], start_within: float = 60.0, end_within: float = 120.0
    ) -> EngineResult:
        def run() -> EngineResult:
            now = self.runtime.now
            start_by = Deadline(now + start_within, self.runtime)
            return self.engine.run(work, start_by, Deadline(now + end_within, self.runtime))

        result: EngineResult = self.runtime.run(run)
        assert self.runtime.errors == []
        return result


def test_each_answer_maps_to_its_outcome() -> None:
    ctm = FakeCtm(
        failures={
            "gone": CtmNotFoundError(
                "not found", error_code="NCERRResourceNotFound", http_status=404
            ),
            "denied": CtmPermanentError("forbidden", error_code="HTTP_403", http_status=403),
            "busy": CtmThrottledError(
                "slow down", error_code="THROTTLED", http_status=429, attempts=4
            ),
        }
    )
    result = Run(ctm)(items("ok", "gone", "denied", "busy"))
    by_key = {o.key_id: o for o in result.outcomes}
    ok, gone, denied, busy = (by_key[name] for name in ("ok", "gone", "denied", "busy"))
    assert {
        "ok": (ok.status, ok.key.current_key_version, ok.key.display_name),
        "gone": (gone.status, gone.error_code),
        "denied": (denied.status, denied.http_status),
        "busy": (busy.status, busy.attempts),
        "leftovers": result.leftovers,
    } == {
        "ok": (Status.REFRESHED, "v2", "name-ok"),
        "gone": (Status.NOT_FOUND, "NCERRResourceNotFound"),
        "denied": (Status.FAILED, 403),
        "busy": (Status.PENDING, 4),
        "leftovers": [],
    }
    # Status members, not strings that merely equal them (Status is a StrEnum).
    assert {type(o.status) for o in result.outcomes} == {Status}


@pytest.mark.parametrize("seed", range(5))
def test_every_key_gets_exactly_one_outcome_under_concurrency(seed: int) -> None:
    ctm = FakeCtm(latency=0.2)
    names = [f"k{i:03}" for i in range(200)]
    result = Run(ctm, concurrency=8, seed=seed)(items(*names, tenancy="t1"))
    assert sorted(o.key_id for o in result.outcomes) == names
    assert sorted(ctm.calls) == names


def test_the_tenancy_with_the_earliest_free_slot_goes_first() -> None:
    ctm = FakeCtm()
    work = items("a1", "a2", "a3", tenancy="A") + items("b1", tenancy="B")
    Run(ctm, rate=1.0, concurrency=1)(work)
    assert ctm.calls == ["a1", "b1", "a2", "a3"]


def test_no_call_starts_past_the_deadline_and_the_rest_is_handed_back() -> None:
    ctm = FakeCtm()
    work = items("a1", "a2", "a3", "a4", tenancy="A")
    result = Run(ctm, rate=1.0, concurrency=1)(work, start_within=1.5)
    assert ctm.calls == ["a1", "a2"]
    assert [item.key_id for item in result.leftovers] == ["a3", "a4"]


@pytest.mark.parametrize("seed", range(3))
def test_a_warm_engine_s_next_run_starts_where_the_clock_is_not_where_idle_workers_left_it(
    seed: int,
) -> None:
    # Given a warm container's engine, one tenancy at 2/s, calls of 0.2 s, and invocations
    # that may start calls for 15 s: each hands back the keys it could not start
    ctm = FakeCtm(latency=0.2)
    run = Run(ctm, rate=2.0, concurrency=64, seed=seed)
    work = items(*(f"k{i:02}" for i in range(90)), tenancy="t1")

    # When it is invoked again and again with what is left, as the tenancy queue does
    refreshed_per_run = []
    while work and len(refreshed_per_run) < 10:
        before = len(ctm.calls)
        work = run(work, start_within=15.0, end_within=25.0).leftovers
        refreshed_per_run.append(len(ctm.calls) - before)

    # Then every invocation refreshes keys (about 2/s x 15 s) until none is left, and no slot
    # is left reserved (today's main: 25 and 29, then 0 for ever, the schedule pushed one
    # spacing further by every idle worker that found no slot in time)
    assert work == []
    assert all(n >= 25 for n in refreshed_per_run[:-1]), refreshed_per_run
    assert run.limiter.reserved("t1") == 0


def test_calls_that_never_send_leave_no_slot_reserved() -> None:
    # Given a tenancy at 1/s, keys whose calls end before sending (the secret unreadable,
    # then every other key stopped) or are never started (past the deadline)
    unavailable = CtmSecretUnavailableError("secret unreadable", error_code="CONNECTION")
    stopped = FakeCtm(failures={"a1": SendsNothing(unavailable)})
    for ctm, start_within in ((stopped, 60.0), (FakeCtm(), 2.5)):
        run = Run(ctm, rate=1.0)
        run(items("a1", "a2", "a3", "a4", "a5", tenancy="A"), start_within=start_within)
        # Then every slot reserved for them was given back
        assert run.limiter.reserved("A") == 0


def test_with_no_time_left_nothing_starts() -> None:
    ctm = FakeCtm()
    result = Run(ctm)(items("a", "b"), start_within=-1.0)
    assert ctm.calls == []
    assert len(result.leftovers) == 2


def test_an_expired_token_fails_the_whole_run_without_more_calls() -> None:
    expired = CtmTokenExpiredError("store a refresh token instead", error_code="TOKEN_EXPIRED")
    ctm = FakeCtm(failures={"a": expired})
    result = Run(ctm, concurrency=1)(items("a", "b", "c"))
    assert ctm.calls == ["a"]
    assert {o.key_id: o.status for o in result.outcomes} == {
        "a": Status.FAILED,
        "b": Status.FAILED,
        "c": Status.FAILED,
    }
    assert {o.error_code for o in result.outcomes} == {"TOKEN_EXPIRED"}
    assert result.leftovers == []


def test_an_unexpected_exception_keeps_the_key_pending() -> None:
    ctm = FakeCtm(failures={"a": ValueError("bug")})
    result = Run(ctm)(items("a"))
    assert result.outcomes[0].status is Status.PENDING
    assert result.outcomes[0].error_code == "INTERNAL_ERROR"


@pytest.mark.parametrize("concurrency", [1, 3])
def test_an_empty_list_does_nothing(concurrency: int) -> None:
    result = Run(FakeCtm(), concurrency=concurrency)([])
    assert result.outcomes == []


def test_calls_in_flight_follow_littles_law_up_to_the_ceiling() -> None:
    # Given calls answered in 0.38 s and tenancies paced at 5 calls/s
    ctm = FakeCtm(latency=0.38)
    run = Run(ctm, rate=5.0, concurrency=64)
    run(items(*(f"k{i}" for i in range(100)), tenancy="t1"))
    assert run.engine.latency == pytest.approx(0.38)
    # Then each tenancy keeps 5 x 0.38 = 1.9 calls busy (x1.25 to spare), plus one waiting
    assert run.engine.in_flight_target(1) == 4  # ceil(2.375) + 1
    assert run.engine.in_flight_target(10) == 34  # ceil(23.75) + 10
    # and never more than REFRESH_CONCURRENCY
    assert run.engine.in_flight_target(40) == 64


def test_every_call_gets_the_deadline_it_must_end_by() -> None:
    ctm = FakeCtm()
    Run(ctm, concurrency=2)(items("a", "b"), end_within=100.0)
    assert ctm.deadlines == [100.0, 100.0]


def test_an_unreadable_secret_stops_the_run_but_keeps_every_key_pending() -> None:
    unavailable = CtmSecretUnavailableError("secret unreadable", error_code="CONNECTION")
    ctm = FakeCtm(failures={"a": unavailable})
    result = Run(ctm, concurrency=1)(items("a", "b", "c"))
    assert ctm.calls == ["a"]
    assert {o.status for o in result.outcomes} == {Status.PENDING}
    assert len(result.outcomes) == 3
