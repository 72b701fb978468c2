"""The refresh engine with a fake CTM: outcomes, scheduling across tenancies, deadline, abort."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from cckm_refresh.ctm.errors import (
    CtmNotFoundError,
    CtmPermanentError,
    CtmSecretUnavailableError,
    CtmThrottledError,
    CtmTokenExpiredError,
)
from cckm_refresh.ctm.pacing import Pacer
from cckm_refresh.engine import RefreshEngine, WorkItem
from cckm_refresh.model import KeyInfo, Status
from cckm_refresh.ratelimit import TenancyRateLimiter
from cckm_refresh.runtime import Deadline

NO_DEADLINE = Deadline(float("inf"))


@dataclass(frozen=True)
class FakeResponse:
    body: dict[str, Any]
    http_status: int = 200
    attempts: int = 1


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
    """Answers refreshes from a script: key id -> exception to raise (else success)."""

    failures: dict[str, Exception] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self, key_id: str, pacer: Pacer, deadline: float = float("inf")) -> FakeResponse:
        pacer.wait(NO_DEADLINE)
        with self.lock:
            self.calls.append(key_id)
        if key_id in self.failures:
            raise self.failures[key_id]
        pacer.answered()
        return FakeResponse(key_object(key_id))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def items(*names: str, tenancy: str | None = None) -> list[WorkItem]:
    known = (lambda n: KeyInfo(key_id=n, tenancy=tenancy)) if tenancy else (lambda n: None)
    return [WorkItem(name, known(name)) for name in names]


def engine_for(ctm: FakeCtm, *, rate: float = 1000.0, concurrency: int = 4) -> RefreshEngine:
    clock = FakeClock()
    limiter = TenancyRateLimiter(rate, clock=clock, sleep=clock.sleep)
    return RefreshEngine(ctm.refresh, limiter, concurrency=concurrency, clock=clock)


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
    result = engine_for(ctm).run(items("ok", "gone", "denied", "busy"), lambda: 60.0)
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


def test_every_key_gets_exactly_one_outcome_under_concurrency() -> None:
    ctm = FakeCtm()
    names = [f"k{i:03}" for i in range(200)]
    result = engine_for(ctm, concurrency=8).run(items(*names, tenancy="t1"), lambda: 60.0)
    assert sorted(o.key_id for o in result.outcomes) == names
    assert sorted(ctm.calls) == names


def test_the_tenancy_with_the_earliest_free_slot_goes_first() -> None:
    ctm = FakeCtm()
    work = items("a1", "a2", "a3", tenancy="A") + items("b1", tenancy="B")
    engine_for(ctm, rate=1.0, concurrency=1).run(work, lambda: 60.0)
    assert ctm.calls == ["a1", "b1", "a2", "a3"]


def test_no_call_starts_past_the_deadline_and_the_rest_is_handed_back() -> None:
    ctm = FakeCtm()
    work = items("a1", "a2", "a3", "a4", tenancy="A")
    result = engine_for(ctm, rate=1.0, concurrency=1).run(work, lambda: 1.5)
    assert ctm.calls == ["a1", "a2"]
    assert [item.key_id for item in result.leftovers] == ["a3", "a4"]


def test_calls_that_never_send_leave_no_slot_reserved() -> None:
    # Given a tenancy at 1/s, keys whose calls end before sending (the secret unreadable,
    # then every other key stopped) or are never started (past the deadline)
    clock = FakeClock()
    limiter = TenancyRateLimiter(1.0, clock=clock, sleep=clock.sleep)
    unavailable = CtmSecretUnavailableError("secret unreadable", error_code="CONNECTION")

    class NoSecret(FakeCtm):
        def refresh(self, key_id: str, pacer: Pacer, deadline: float = 0.0) -> FakeResponse:
            raise unavailable  # before the pacer is asked for a slot

    for ctm, seconds in ((NoSecret(), 60.0), (FakeCtm(), 2.5)):
        engine = RefreshEngine(ctm.refresh, limiter, concurrency=4, clock=clock)
        engine.run(items("a1", "a2", "a3", "a4", "a5", tenancy="A"), lambda s=seconds: s)
        # Then every slot reserved for them was given back
        assert limiter.unclaimed("A") == 0


def test_with_no_time_left_nothing_starts() -> None:
    ctm = FakeCtm()
    result = engine_for(ctm).run(items("a", "b"), lambda: -1.0)
    assert ctm.calls == []
    assert len(result.leftovers) == 2


def test_an_expired_token_fails_the_whole_run_without_more_calls() -> None:
    expired = CtmTokenExpiredError("store a refresh token instead", error_code="TOKEN_EXPIRED")
    ctm = FakeCtm(failures={"a": expired})
    result = engine_for(ctm, concurrency=1).run(items("a", "b", "c"), lambda: 60.0)
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
    result = engine_for(ctm).run(items("a"), lambda: 60.0)
    assert result.outcomes[0].status is Status.PENDING
    assert result.outcomes[0].error_code == "INTERNAL_ERROR"


@pytest.mark.parametrize("concurrency", [1, 3])
def test_an_empty_list_does_nothing(concurrency: int) -> None:
    result = engine_for(FakeCtm(), concurrency=concurrency).run([], lambda: 60.0)
    assert result.outcomes == []


def test_calls_in_flight_follow_littles_law_up_to_the_ceiling() -> None:
    # Given calls answered in 0.38 s and tenancies paced at 5 calls/s
    engine = engine_for(FakeCtm(), rate=5.0, concurrency=64)
    for _ in range(100):
        engine._observe(0.38)
    # Then each tenancy keeps 5 x 0.38 = 1.9 calls busy (x1.25 to spare), plus one waiting
    assert engine.in_flight_target(1) == 4  # ceil(2.375) + 1
    assert engine.in_flight_target(10) == 34  # ceil(23.75) + 10
    # and never more than REFRESH_CONCURRENCY
    assert engine.in_flight_target(40) == 64


def test_every_call_gets_the_deadline_it_must_end_by() -> None:
    seen: list[float] = []

    def refresh(key_id: str, pacer: Pacer, deadline: float) -> FakeResponse:
        seen.append(deadline)
        return FakeResponse(key_object(key_id))

    clock = FakeClock()
    limiter = TenancyRateLimiter(1000.0, clock=clock, sleep=clock.sleep)
    engine = RefreshEngine(refresh, limiter, concurrency=2, clock=clock)
    engine.run(items("a", "b"), lambda: 60.0, calls_end_within=100.0)
    assert seen == [100.0, 100.0]


def test_an_unreadable_secret_stops_the_run_but_keeps_every_key_pending() -> None:
    unavailable = CtmSecretUnavailableError("secret unreadable", error_code="CONNECTION")
    ctm = FakeCtm(failures={"a": unavailable})
    result = engine_for(ctm, concurrency=1).run(items("a", "b", "c"), lambda: 60.0)
    assert ctm.calls == ["a"]
    assert {o.status for o in result.outcomes} == {Status.PENDING}
    assert len(result.outcomes) == 3
