"""Each tenancy's pace: slots, throttle back-off and recovery, on a manual clock."""

from __future__ import annotations

import pytest

from cckm_refresh.ratelimit import TenancyRateLimiter
from cckm_refresh.runtime import Deadline
from tests.unit.manual_runtime import ManualRuntime

NO_DEADLINE = Deadline(float("inf"))
LATE = float("inf")


@pytest.fixture
def runtime() -> ManualRuntime:
    return ManualRuntime()


def limiter_of(runtime: ManualRuntime, rate: float, **options: float) -> TenancyRateLimiter:
    return TenancyRateLimiter(rate, runtime=runtime, **{"headroom": 1.0, **options})


def test_slots_of_one_tenancy_are_spaced_by_the_inverse_rate(runtime: ManualRuntime) -> None:
    limiter = limiter_of(runtime, 4.0)
    starts = [limiter.reserve_by("t1", LATE) for _ in range(5)]
    assert starts == pytest.approx([100.0, 100.25, 100.5, 100.75, 101.0])


def test_slots_keep_a_little_headroom_below_the_limit(runtime: ManualRuntime) -> None:
    limiter = limiter_of(runtime, 5.0, headroom=0.8)
    limiter.reserve_by("t1", LATE)
    assert limiter.reserve_by("t1", LATE) == pytest.approx(100.25)


def test_tenancies_have_independent_slots(runtime: ManualRuntime) -> None:
    limiter = limiter_of(runtime, 2.0)
    limiter.reserve_by("t1", LATE)
    assert limiter.reserve_by("t2", LATE) == 100.0
    assert limiter.reserve_by("t1", LATE) == 100.5


def test_a_pacer_waits_for_its_slot(runtime: ManualRuntime) -> None:
    limiter = limiter_of(runtime, 2.0)
    limiter.pacer("t1").wait(NO_DEADLINE)
    limiter.reserve_by("t1", LATE)
    assert limiter.pacer("t1", reserved=True).wait(NO_DEADLINE) is True
    assert runtime.slept == [pytest.approx(0.5)]


def test_a_slot_opening_after_the_start_by_is_not_reserved_and_the_schedule_stays_put(
    runtime: ManualRuntime,
) -> None:
    # Given a tenancy at 2/s with one call handed out (slot 100.0) and a start-by at 100.2
    limiter = limiter_of(runtime, 2.0)
    assert limiter.reserve_by("t1", 100.2) == 100.0

    # When 36 idle workers each ask for a slot by then (the next one opens at 100.5)
    refused = [limiter.reserve_by("t1", 100.2) for _ in range(36)]

    # Then none was reserved, and the next slot is still one spacing after the one handed out
    # (it used to move one spacing per refusal: 18 s ahead of the clock here, and further at
    # every invocation of a warm container, until no invocation could make a call)
    assert refused == [None] * 36
    assert limiter.next_free("t1") == pytest.approx(100.5)


def test_a_reservation_given_back_moves_the_schedule_back(runtime: ManualRuntime) -> None:
    limiter = limiter_of(runtime, 1.0)
    pacers = [limiter.pacer("t1", reserved=True) for _ in range(3)]
    for _ in pacers:
        limiter.reserve_by("t1", LATE)
    assert limiter.next_free("t1") == pytest.approx(103.0)
    pacers[2].release()  # its call ended before sending (no JWT, say)
    pacers[2].release()  # once only
    assert (limiter.reserved("t1"), limiter.next_free("t1")) == (2, pytest.approx(102.0))


def test_the_schedule_never_runs_ahead_of_the_clock_by_more_than_the_calls_waiting(
    runtime: ManualRuntime,
) -> None:
    limiter = limiter_of(runtime, 4.0)
    for step in range(200):
        if step % 3:
            limiter.reserve_by("t1", runtime.now + 1.0)
        elif limiter.reserved("t1"):
            limiter.pacer("t1", reserved=True).wait(Deadline(runtime.now + 0.3))
        runtime.now += 0.01
        ahead = limiter.next_free("t1") - runtime.now
        assert ahead <= (limiter.reserved("t1") + 1) * 0.25 + 1e-9


def test_attempts_held_up_after_their_slot_still_leave_one_spacing_apart(
    runtime: ManualRuntime,
) -> None:
    # Given two calls of a tenancy at 1/s, their slots reserved at 100.0 and 101.0
    limiter = limiter_of(runtime, 1.0)
    first, second = (limiter.pacer("t1", reserved=True) for _ in range(2))
    limiter.reserve_by("t1", LATE)
    limiter.reserve_by("t1", LATE)

    # When both are held up until 101.5 (a JWT being fetched at a cold start), then wait
    runtime.now = 101.5
    first.wait(NO_DEADLINE)
    left_first = runtime.now
    second.wait(NO_DEADLINE)

    # Then the first leaves at once and the second one spacing later, not together with it,
    # and the next reservation comes after both
    assert (left_first, runtime.now) == (101.5, pytest.approx(102.5))
    assert limiter.reserve_by("t1", LATE) == pytest.approx(103.5)


def test_attempts_held_up_together_leave_one_spacing_apart_whatever_order_they_wake(
    runtime: ManualRuntime,
) -> None:
    # Given eight calls of a tenancy at 5/s, their slots reserved from 100.0 to 101.4
    limiter = limiter_of(runtime, 5.0)
    pacers = [limiter.pacer("t1", reserved=True) for _ in range(8)]
    for _ in pacers:
        limiter.reserve_by("t1", LATE)

    # When all are held up until 100.5 (one JWT fetched at a cold start) and wake in any order
    runtime.now = 100.5
    left = []
    for pacer in reversed(pacers):
        pacer.wait(NO_DEADLINE)
        left.append(runtime.now)

    # Then they leave one spacing apart from 100.5, and no reservation is left over
    assert left == pytest.approx([100.5 + 0.2 * n for n in range(8)])
    assert limiter.reserved("t1") == 0


def test_a_reserved_call_that_could_only_leave_too_late_gives_its_slot_back(
    runtime: ManualRuntime,
) -> None:
    limiter = limiter_of(runtime, 1.0)
    early, late = (limiter.pacer("t1", reserved=True) for _ in range(2))
    limiter.reserve_by("t1", LATE)
    limiter.reserve_by("t1", LATE)
    assert early.wait(Deadline(100.5)) is True  # leaves at 100.0
    assert late.wait(Deadline(100.5)) is False  # its slot, 101.0, is too late: refused at once
    assert (runtime.slept, limiter.reserved("t1")) == ([], 0)
    assert limiter.next_free("t1") == pytest.approx(101.0)


def test_a_throttle_slows_the_tenancy_and_pushes_its_next_slot_out(
    runtime: ManualRuntime,
) -> None:
    limiter = limiter_of(runtime, 4.0)
    limiter.throttled("t1")
    assert limiter.rate("t1") == 3.0
    assert limiter.reserve_by("t1", LATE) == pytest.approx(100 + 1 / 3)
    assert limiter.reserve_by("t1", LATE) == pytest.approx(100 + 2 / 3)
    assert limiter.throttle_count() == 1


def test_the_rate_never_falls_below_the_floor(runtime: ManualRuntime) -> None:
    limiter = limiter_of(runtime, 4.0, min_rate=1.0)
    for _ in range(10):
        limiter.throttled("t1")
    assert limiter.rate("t1") == 1.0


def test_answered_calls_win_the_rate_back_up_to_the_ceiling(runtime: ManualRuntime) -> None:
    limiter = limiter_of(runtime, 4.0, decrease=0.5, recovery_step=0.5)
    limiter.throttled("t1")
    for _ in range(3):
        limiter.answered("t1")
    assert limiter.rate("t1") == 3.5
    for _ in range(10):
        limiter.answered("t1")
    assert limiter.rate("t1") == 4.0


def test_unknown_tenancies_share_one_schedule(runtime: ManualRuntime) -> None:
    limiter = limiter_of(runtime, 1.0)
    limiter.reserve_by(None, LATE)
    assert limiter.reserve_by(None, LATE) == 101.0


def test_an_attempt_that_must_leave_by_a_deadline_takes_no_slot_opening_too_late(
    runtime: ManualRuntime,
) -> None:
    limiter = limiter_of(runtime, 1.0)
    assert limiter.pacer("t").wait(Deadline(100.5)) is True  # slot at 100.0
    assert limiter.pacer("t").wait(Deadline(100.5)) is False  # the next opens at 101.0
    assert runtime.now == 100.0
    assert limiter.pacer("t").wait(Deadline(101.0)) is True  # the refused slot was left free
    assert runtime.now == 101.0


def test_a_pace_handed_on_from_another_container_spaces_the_first_attempt(
    runtime: ManualRuntime,
) -> None:
    # Given a fresh limiter (a new container) told that t1's latest attempt left 0.1 s ago
    limiter = limiter_of(runtime, 4.0)
    assert limiter.seconds_since_sent("t1") is None
    limiter.sent_ago("t1", 0.1)
    # When t1's next attempt leaves, and one of t2 that nobody paced before
    limiter.pacer("t1").wait(NO_DEADLINE)
    limiter.pacer("t2").wait(NO_DEADLINE)
    # Then t1's waited the rest of its spacing (0.25 - 0.1 s), t2's nothing; and an older
    # pace handed on later does not undo what this container has sent since
    assert runtime.slept == pytest.approx([0.15])
    assert limiter.seconds_since_sent("t1") == pytest.approx(0.0)
    limiter.sent_ago("t1", 5.0)
    assert limiter.reserve_by("t1", LATE) == pytest.approx(100.4)


def test_a_retry_takes_the_earliest_slot_and_one_that_cannot_leave_in_time_takes_nothing(
    runtime: ManualRuntime,
) -> None:
    # Given t1 throttled right after an attempt left at 100.0: at 0.75/s its next attempt may
    # only leave at 101.33
    limiter = limiter_of(runtime, 1.0)
    limiter.pacer("t1").wait(NO_DEADLINE)
    limiter.throttled("t1")

    # When a retry that must leave by 101.2 asks, then one that may leave by 103.0
    refused = limiter.pacer("t1").wait(Deadline(101.2))
    accepted = limiter.pacer("t1").wait(Deadline(103.0))

    # Then the first took nothing, so the second left at 101.33, not a slot later
    assert (refused, accepted, runtime.now) == (False, True, pytest.approx(100 + 1 / 0.75))
