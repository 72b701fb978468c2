"""The per-tenancy rate limiter: slots, throttle back-off and recovery, on a fake clock."""

from __future__ import annotations

import pytest

from cckm_refresh.ratelimit import TenancyRateLimiter
from cckm_refresh.runtime import Deadline

NO_DEADLINE = Deadline(float("inf"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_slots_of_one_tenancy_are_spaced_by_the_inverse_rate(clock: FakeClock) -> None:
    limiter = TenancyRateLimiter(4.0, headroom=1.0, clock=clock, sleep=clock.sleep)
    starts = [limiter.reserve("t1") for _ in range(5)]
    assert starts == pytest.approx([100.0, 100.25, 100.5, 100.75, 101.0])


def test_slots_keep_a_little_headroom_below_the_limit(clock: FakeClock) -> None:
    limiter = TenancyRateLimiter(5.0, headroom=0.8, clock=clock, sleep=clock.sleep)
    limiter.reserve("t1")
    assert limiter.reserve("t1") == pytest.approx(100.25)


def test_tenancies_have_independent_buckets(clock: FakeClock) -> None:
    limiter = TenancyRateLimiter(2.0, headroom=1.0, clock=clock, sleep=clock.sleep)
    limiter.reserve("t1")
    assert limiter.reserve("t2") == 100.0
    assert limiter.reserve("t1") == 100.5


def test_a_pacer_waits_for_its_reserved_slot(clock: FakeClock) -> None:
    limiter = TenancyRateLimiter(2.0, headroom=1.0, clock=clock, sleep=clock.sleep)
    limiter.reserve("t1")
    pacer = limiter.pacer("t1")
    pacer.wait(NO_DEADLINE)
    assert clock.slept == [pytest.approx(0.5)]


def test_attempts_held_up_after_their_slot_still_leave_one_spacing_apart(
    clock: FakeClock,
) -> None:
    # Given two calls of a tenancy at 1/s, their slots reserved at 100.0 and 101.0
    limiter = TenancyRateLimiter(1.0, headroom=1.0, clock=clock, sleep=clock.sleep)
    first = limiter.pacer("t1", limiter.reserve("t1"))
    second = limiter.pacer("t1", limiter.reserve("t1"))

    # When both are held up until 101.5 (a JWT being fetched at a cold start), then wait
    clock.now = 101.5
    first.wait(NO_DEADLINE)
    left_first = clock.now
    second.wait(NO_DEADLINE)

    # Then the first leaves at once and the second one spacing later, not together with it,
    # and the next reservation comes after both
    assert (left_first, clock.now) == (101.5, pytest.approx(102.5))
    assert limiter.reserve("t1") == pytest.approx(103.5)


def test_attempts_held_up_together_leave_in_the_earliest_slots_whatever_order_they_wake(
    clock: FakeClock,
) -> None:
    # Given eight calls of a tenancy at 5/s, their slots reserved from 100.0 to 101.4
    limiter = TenancyRateLimiter(5.0, headroom=1.0, clock=clock, sleep=clock.sleep)
    pacers = [limiter.pacer("t1", limiter.reserve("t1")) for _ in range(8)]

    # When all are held up until 100.5 (one JWT fetched at a cold start) and their threads
    # wake latest slot first
    clock.now = 100.5
    left = []
    for pacer in reversed(pacers):
        pacer.wait(NO_DEADLINE)
        left.append(clock.now)

    # Then they leave one spacing apart from 100.5, as if they had woken in slot order (the
    # first to wake took the earliest slot, not its own at 101.4, which would have pushed
    # the other seven behind it), and no reservation is left over
    assert left == pytest.approx([100.5 + 0.2 * n for n in range(8)])
    assert limiter.unclaimed("t1") == 0


def test_a_reservation_refused_or_released_is_given_back(clock: FakeClock) -> None:
    limiter = TenancyRateLimiter(1.0, headroom=1.0, clock=clock, sleep=clock.sleep)
    kept, refused, dropped = (limiter.pacer("t1", limiter.reserve("t1")) for _ in range(3))
    assert limiter.unclaimed("t1") == 3
    assert refused.wait(Deadline(100.5)) is True  # takes the earliest slot, 100.0
    assert kept.wait(Deadline(100.5)) is False  # the next leaves at 101.0: refused, given back
    dropped.release()  # its call ended before sending (e.g. no JWT)
    dropped.release()  # once only
    assert limiter.unclaimed("t1") == 0
    assert limiter.reserve("t1") == pytest.approx(103.0)  # slots are not handed out again


def test_a_held_up_attempt_that_could_only_leave_too_late_takes_no_slot(clock: FakeClock) -> None:
    limiter = TenancyRateLimiter(1.0, headroom=1.0, clock=clock, sleep=clock.sleep)
    limiter.pacer("t1", limiter.reserve("t1")).wait(NO_DEADLINE)  # left at 100.0
    late = limiter.pacer("t1", 100.2)
    assert late.wait(Deadline(100.5)) is False
    assert (clock.slept, limiter.claim_by("t1", 100.0, 101.0)) == ([], pytest.approx(101.0))


def test_a_throttle_slows_the_tenancy_and_pushes_its_next_slot_out(clock: FakeClock) -> None:
    limiter = TenancyRateLimiter(4.0, headroom=1.0, clock=clock, sleep=clock.sleep)
    limiter.throttled("t1")
    assert limiter.rate("t1") == 3.0
    assert limiter.reserve("t1") == pytest.approx(100 + 1 / 3)
    assert limiter.reserve("t1") == pytest.approx(100 + 2 / 3)
    assert limiter.throttle_count() == 1


def test_a_fixed_throttle_penalty_can_be_chosen(clock: FakeClock) -> None:
    limiter = TenancyRateLimiter(
        4.0, headroom=1.0, decrease=0.5, throttle_penalty=1.0, clock=clock, sleep=clock.sleep
    )
    limiter.throttled("t1")
    assert limiter.rate("t1") == 2.0
    assert limiter.reserve("t1") == 101.0


def test_the_rate_never_falls_below_the_floor(clock: FakeClock) -> None:
    limiter = TenancyRateLimiter(4.0, min_rate=1.0, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        limiter.throttled("t1")
    assert limiter.rate("t1") == 1.0


def test_answered_calls_win_the_rate_back_up_to_the_ceiling(clock: FakeClock) -> None:
    limiter = TenancyRateLimiter(
        4.0, decrease=0.5, recovery_step=0.5, clock=clock, sleep=clock.sleep
    )
    limiter.throttled("t1")
    for _ in range(3):
        limiter.answered("t1")
    assert limiter.rate("t1") == 3.5
    for _ in range(10):
        limiter.answered("t1")
    assert limiter.rate("t1") == 4.0


def test_unknown_tenancies_share_one_bucket(clock: FakeClock) -> None:
    limiter = TenancyRateLimiter(1.0, headroom=1.0, clock=clock, sleep=clock.sleep)
    limiter.reserve(None)
    assert limiter.reserve(None) == 101.0


def test_a_call_that_must_end_by_a_deadline_takes_no_slot_opening_too_late() -> None:
    clock = [0.0]
    limiter = TenancyRateLimiter(
        1.0,
        headroom=1.0,
        clock=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
    )
    first, second = limiter.pacer("t"), limiter.pacer("t")
    assert first.wait(Deadline(0.5)) is True  # slot at 0
    assert second.wait(Deadline(0.5)) is False  # the next slot opens at 1.0: refused at once
    assert clock[0] == 0.0
    assert limiter.pacer("t").wait(Deadline(1.0)) is True  # the refused slot was left free
    assert clock[0] == 1.0


def test_a_pace_handed_on_from_another_container_spaces_the_first_attempt(
    clock: FakeClock,
) -> None:
    # Given a fresh limiter (a new container) told that t1's latest attempt left 0.1 s ago
    limiter = TenancyRateLimiter(4.0, headroom=1.0, clock=clock, sleep=clock.sleep)
    assert limiter.seconds_since_sent("t1") is None
    limiter.sent_ago("t1", 0.1)
    # When t1's next attempt leaves, and one of t2 that nobody paced before
    limiter.pacer("t1").wait(NO_DEADLINE)
    limiter.pacer("t2").wait(NO_DEADLINE)
    # Then t1's waited the rest of its spacing (0.25 - 0.1 s), t2's nothing; and an older
    # pace handed on later does not undo what this container has sent since
    assert clock.slept == pytest.approx([0.15])
    assert limiter.seconds_since_sent("t1") == pytest.approx(0.0)
    limiter.sent_ago("t1", 5.0)
    assert limiter.reserve("t1") == pytest.approx(100.4)


def test_a_call_without_a_slot_that_could_not_leave_in_time_takes_nothing(
    clock: FakeClock,
) -> None:
    # Given t1 throttled right after an attempt left at 100.0, with a short throttle penalty:
    # its slots open from 101.0 on, but at 0.75/s its next attempt may only leave at 101.33
    limiter = TenancyRateLimiter(
        1.0, headroom=1.0, throttle_penalty=0.1, clock=clock, sleep=clock.sleep
    )
    limiter.pacer("t1").wait(NO_DEADLINE)
    limiter.throttled("t1")

    # When a retry that must leave by 101.2 asks, then one that may leave by 103.0
    refused = limiter.pacer("t1").wait(Deadline(101.2))
    accepted = limiter.pacer("t1").wait(Deadline(103.0))

    # Then the first took nothing, so the second left at 101.33, not a slot later
    assert (refused, accepted, clock.now) == (False, True, pytest.approx(100 + 1 / 0.75))
