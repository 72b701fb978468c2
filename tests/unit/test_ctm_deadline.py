"""Every CTM call ends before its deadline: attempts, back-off sleeps, pacing and slow bodies.

Scripted answers run on the fake clock (``FakeCtm``: a slow answer moves the clock), so the
arithmetic is exact; answers that trickle in over a real socket come from ``SlowHttpServer``
and are measured on the real monotonic clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from cckm_refresh.ctm.errors import (
    CtmBadResponseError,
    CtmDeadlineError,
    CtmTimeoutError,
    CtmTransientError,
)
from cckm_refresh.ctm.retries import RetryPolicy
from cckm_refresh.ctm.transport import Transport
from cckm_refresh.runtime import Deadline
from tests.unit.ctm_fakes import KEY_ID, FakeCtm, Reply, Sent, fake_client, key_object
from tests.unit.slow_http import SlowAnswer, SlowHttpServer

REFRESH_PATH = f"/api/v1/cckm/oci/keys/{KEY_ID}/refresh"
# How far past its deadline a call over a real socket may end: thread scheduling on a busy
# two-core machine, not the call's own waits (those are all cut to the deadline).
SCHEDULING_SLACK = 0.3


def slow(ctm: FakeCtm, seconds: float, reply: Reply) -> object:
    """An answer that takes ``seconds`` of the fake clock to arrive."""

    def answer(sent: Sent) -> Reply:
        ctm.clock.advance(seconds)
        return reply

    return answer


def test_retries_that_would_overrun_the_deadline_stop_before_it() -> None:
    # Given a CTM answering 503 after a second, and attempts to spare
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, slow(ctm, 1.0, Reply(503, "")))  # type: ignore[arg-type]
    sleeps: list[float] = []
    client = fake_client(ctm, max_attempts=10, sleeps=sleeps)
    deadline = ctm.clock() + 3.0
    # When a refresh must end within 3 s
    with pytest.raises(CtmDeadlineError) as caught:
        client.refresh_oci_key(KEY_ID, deadline=deadline)
    # Then it ended before the deadline, as a transient DEADLINE after two attempts: the
    # third back-off (1.0 s) would have left too little for an attempt
    assert ctm.clock() <= deadline
    assert caught.value.error_code == "DEADLINE"
    assert caught.value.transient
    assert isinstance(caught.value, CtmTransientError)
    assert caught.value.attempts == 2
    assert caught.value.http_status == 503
    assert sleeps == [0.25]


def test_each_attempt_is_timed_to_what_is_left_before_the_deadline() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    client = fake_client(ctm)

    client.refresh_oci_key(KEY_ID, deadline=ctm.clock() + 3.0)

    (sent,) = ctm.to("POST", REFRESH_PATH)
    assert sent.timeout.total == 3.0  # not CTM_TIMEOUT_SECONDS (20)
    assert sent.timeout.connect_timeout <= 3.0


def test_without_a_deadline_an_attempt_has_the_whole_timeout() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    fake_client(ctm).refresh_oci_key(KEY_ID)
    assert ctm.to("POST", REFRESH_PATH)[0].timeout.total == 20.0


@pytest.mark.parametrize("left", [-1.0, 0.0, 0.4])
def test_no_attempt_starts_when_too_little_time_is_left(left: float) -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))

    with pytest.raises(CtmDeadlineError) as caught:
        fake_client(ctm).refresh_oci_key(KEY_ID, deadline=ctm.clock() + left)

    assert caught.value.attempts == 0
    assert ctm.to("POST", REFRESH_PATH) == []


def test_a_timed_out_attempt_is_not_retried_past_the_deadline() -> None:
    # Given a CTM that does not answer within the (shrunk) timeout
    ctm = FakeCtm()
    timeout = Reply(raises=requests.exceptions.ReadTimeout("slow"))
    ctm.always("POST", REFRESH_PATH, slow(ctm, 2.0, timeout))  # type: ignore[arg-type]
    client = fake_client(ctm, max_attempts=10)
    deadline = ctm.clock() + 2.2
    # When the refresh runs
    with pytest.raises(CtmDeadlineError) as caught:
        client.refresh_oci_key(KEY_ID, deadline=deadline)
    # Then one attempt was made and nothing after it
    assert caught.value.attempts == 1
    assert "no answer within the timeout" in caught.value.message
    assert ctm.clock() <= deadline


class ClockPacer:
    """A pacer whose next slot is ``delay`` seconds away on the fake clock."""

    def __init__(self, ctm: FakeCtm, delay: float, *, bounded: bool) -> None:
        self.ctm = ctm
        self.delay = delay
        self.waits = 0
        self.bounded = bounded

    def wait(self, latest_start: Deadline) -> bool:
        if self.bounded and self.ctm.clock() + self.delay > latest_start.at:
            return False
        self.waits += 1
        self.ctm.clock.advance(self.delay)
        return True

    def throttled(self) -> None:
        return None

    def answered(self) -> None:
        return None


def test_a_pacing_slot_after_the_deadline_is_not_waited_for() -> None:
    # Given a pacer that can say whether its slot opens in time, and a slot 5 s away
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    pacer = ClockPacer(ctm, 5.0, bounded=True)
    start = ctm.clock()
    # When a refresh must end within 2 s
    with pytest.raises(CtmDeadlineError):
        fake_client(ctm).refresh_oci_key(KEY_ID, pacer=pacer, deadline=start + 2.0)
    # Then it neither waited nor sent
    assert pacer.waits == 0
    assert ctm.clock() == start
    assert ctm.to("POST", REFRESH_PATH) == []


def test_a_plain_pacer_that_waited_past_the_deadline_sends_nothing() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    pacer = ClockPacer(ctm, 5.0, bounded=False)
    with pytest.raises(CtmDeadlineError):
        fake_client(ctm).refresh_oci_key(KEY_ID, pacer=pacer, deadline=ctm.clock() + 2.0)
    assert ctm.to("POST", REFRESH_PATH) == []


def test_the_list_calls_take_the_deadline_too() -> None:
    ctm = FakeCtm()
    ctm.always("GET", "/api/v1/cckm/oci/keys", Reply(200, {"resources": [], "total": 0}))
    client = fake_client(ctm)
    deadline = ctm.clock() + 4.0

    client.list_page(None, deadline=deadline)
    list(client.list_oci_keys(deadline=deadline))

    assert [s.timeout.total for s in ctm.to("GET", "/api/v1/cckm/oci/keys")] == [4.0, 4.0]
    with pytest.raises(CtmDeadlineError):
        client.get_oci_key(KEY_ID, deadline=ctm.clock())


# --- over a real socket ----------------------------------------------------------------------


def transport(timeout: float = 20.0, max_attempts: int = 4) -> Transport:
    return Transport(
        timeout=timeout,
        retry=RetryPolicy(max_attempts=max_attempts, base_delay=0.05, max_delay=0.05),
        rng=lambda: 0.5,
    )


def test_a_body_trickling_in_byte_by_byte_ends_at_the_deadline() -> None:
    # Given a server sending a 10 kB answer one byte every 20 ms (200 s in all)
    body = json.dumps({"padding": "x" * 10_000}).encode()
    with SlowHttpServer(SlowAnswer(body=body, byte_interval=0.02)) as server:
        started = time.monotonic()
        deadline = started + 1.0
        # When a call with a 20 s timeout must end within 1 s
        with pytest.raises(CtmDeadlineError) as caught:
            transport().call("GET", server.url + "/slow", deadline=deadline)
        ended = time.monotonic()
    # Then it ended at the deadline, though every byte arrived well within a read timeout
    assert ended - started < 1.0 + SCHEDULING_SLACK
    assert caught.value.attempts == 1
    assert server.bytes_sent < len(body)


def test_a_trickling_body_is_cut_at_the_attempts_total_timeout() -> None:
    body = json.dumps({"padding": "x" * 10_000}).encode()
    with SlowHttpServer(SlowAnswer(body=body, byte_interval=0.02)) as server:
        started = time.monotonic()
        with pytest.raises(CtmTimeoutError) as caught:
            transport(timeout=0.8, max_attempts=1).call("GET", server.url + "/slow")
        ended = time.monotonic()
    assert ended - started < 0.8 + SCHEDULING_SLACK
    assert caught.value.error_code == "TIMEOUT"


def test_an_answer_slower_than_the_deadline_ends_at_the_deadline() -> None:
    with SlowHttpServer(SlowAnswer(header_delay=30.0)) as server:
        started = time.monotonic()
        with pytest.raises(CtmDeadlineError):
            transport().call("GET", server.url + "/slow", deadline=started + 0.8)
        ended = time.monotonic()
    assert ended - started < 0.8 + SCHEDULING_SLACK


def test_an_oversized_declared_body_is_refused_without_reading_it() -> None:
    answer = SlowAnswer(body=b"{", declared_length=100 << 20, byte_interval=1.0)
    with SlowHttpServer(answer) as server, pytest.raises(CtmBadResponseError) as caught:
        transport().call("GET", server.url + "/big", max_body=1 << 20)
    assert caught.value.error_code == "BAD_RESPONSE"
    assert caught.value.http_status == 200
    assert "over 1048576 bytes" in caught.value.message


def test_an_endless_body_is_cut_at_the_size_cap() -> None:
    # Given a server that sends filler until the client hangs up (no Content-Length)
    answer = SlowAnswer(body=b"{", declare_length=False, endless=True)
    # When the answer is read with a 1 MiB cap
    with SlowHttpServer(answer) as server, pytest.raises(CtmBadResponseError):
        transport().call("GET", server.url + "/endless", max_body=1 << 20)
    # Then the call ended (reading it all would never have)


def test_an_oversized_error_body_is_classified_by_its_status() -> None:
    answer = SlowAnswer(status=503, body=b"{", declare_length=False, endless=True)
    with SlowHttpServer(answer) as server, pytest.raises(CtmTransientError) as caught:
        transport(max_attempts=1).call("GET", server.url + "/endless")
    assert caught.value.error_code == "HTTP_503"


def _refresh(client: Any, deadline: float | None) -> object:
    return client.refresh_oci_key(KEY_ID, deadline=deadline)


def _sign_in(client: Any, deadline: float | None) -> object:
    return client.issue_token(deadline=deadline)


@pytest.mark.parametrize("needs_a_token", [_refresh, _sign_in], ids=["a refresh", "a sign-in"])
def test_the_token_exchange_keeps_to_the_deadline_of_what_needs_it(
    needs_a_token: Callable[[Any, float | None], object],
) -> None:
    # Given a token endpoint answering 503 after a second, and no token yet
    ctm = FakeCtm()
    ctm.always("POST", "/api/v1/auth/tokens", slow(ctm, 1.0, Reply(503, "")))  # type: ignore[arg-type]
    client = fake_client(ctm, max_attempts=10)
    deadline = ctm.clock() + 2.5
    # When a refresh, or a sign-in ahead of the calls (beside a chunk's read), must end in 2.5 s
    with pytest.raises(CtmDeadlineError):
        needs_a_token(client, deadline)
    # Then the token exchange was timed to that deadline and stopped before it, no refresh sent
    token_calls = ctm.to("POST", "/api/v1/auth/tokens")
    assert token_calls[0].timeout.total == 2.5
    assert ctm.clock() <= deadline
    assert ctm.to("POST", REFRESH_PATH) == []
    # And the same without a deadline afterwards is not bound by it
    ctm.always("POST", "/api/v1/auth/tokens", ctm.issue)
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    assert needs_a_token(client, None)
    assert ctm.to("POST", "/api/v1/auth/tokens")[-1].timeout.total == 20.0
