"""Every CTM call ends before its deadline: attempts, back-off sleeps, pacing, token calls and
slow bodies (docs/reference.md 4.3).

Answers come in process on the virtual clock (``FakeCtm``: an answer or each byte of its body
moves the clock), so the arithmetic is exact and asserted on that clock. Two answers come over
a real loopback socket (``SlowHttpServer``): what they show is the outcome (the call ended
with DEADLINE, the body was not all sent), never how long it took on a busy machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import requests

from cckm_refresh.ctm.errors import (
    CtmBadResponseError,
    CtmDeadlineError,
    CtmTimeoutError,
    CtmTransientError,
    RetryPolicy,
)
from cckm_refresh.ctm.transport import UNPACED, Transport
from cckm_refresh.runtime import Deadline
from tests.unit.ctm_fakes import (
    KEY_ID,
    KEYS_PATH,
    TOKEN_PATH,
    FakeCtm,
    Reply,
    fake_client,
    far,
    key_object,
    refresh,
)
from tests.unit.slow_http import SlowAnswer, SlowHttpServer

REFRESH_PATH = f"{KEYS_PATH}/{KEY_ID}/refresh"
KEY_BODY = json.dumps(key_object()).encode()


def test_retries_that_would_overrun_the_deadline_stop_before_it() -> None:
    # Given a CTM answering 503 after a second, and attempts to spare
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(503, "", takes=1.0))
    client = fake_client(ctm, max_attempts=10)
    client.issue_token(far(ctm.runtime))
    deadline = Deadline.within(3.0, ctm.runtime)
    # When a refresh must end within 3 s
    with pytest.raises(CtmDeadlineError) as caught:
        refresh(client, within=3.0)
    # Then it ended before the deadline, as a transient DEADLINE after two attempts: the third
    # back-off (1.0 s) would have left too little for an attempt
    assert not deadline.passed()
    assert isinstance(caught.value, CtmTransientError)
    assert (caught.value.error_code, caught.value.attempts, caught.value.http_status) == (
        "DEADLINE",
        2,
        503,
    )
    assert ctm.runtime.slept == [0.25]


def test_each_attempt_is_timed_to_what_is_left_before_the_deadline() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    refresh(fake_client(ctm), within=3.0)
    (sent,) = ctm.to("POST", REFRESH_PATH)
    assert sent.timeout.total == 3.0  # not CTM_TIMEOUT_SECONDS (20)
    assert sent.timeout.connect_timeout <= 3.0


def test_with_time_to_spare_an_attempt_has_the_whole_timeout() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    refresh(fake_client(ctm))
    sent = ctm.to("POST", REFRESH_PATH)[0]
    assert (sent.timeout.connect_timeout, sent.timeout.total) == (5.0, 20.0)


@pytest.mark.parametrize("left", [-1.0, 0.0, 0.4])
def test_no_attempt_starts_when_too_little_time_is_left(left: float) -> None:
    ctm = FakeCtm()
    client = fake_client(ctm)
    client.issue_token(far(ctm.runtime))

    with pytest.raises(CtmDeadlineError) as caught:
        refresh(client, within=left)

    assert caught.value.attempts == 0
    assert ctm.to("POST", REFRESH_PATH) == []


def test_a_timed_out_attempt_is_not_retried_past_the_deadline() -> None:
    # Given a CTM that does not answer within the (shrunk) time limit
    ctm = FakeCtm()
    timeout = requests.exceptions.ReadTimeout("slow")
    ctm.always("POST", REFRESH_PATH, Reply(raises=timeout, takes=2.0))
    client = fake_client(ctm, max_attempts=10)
    client.issue_token(far(ctm.runtime))
    deadline = Deadline.within(2.2, ctm.runtime)
    # When the refresh runs, Then one attempt was made and nothing after it
    with pytest.raises(CtmDeadlineError) as caught:
        refresh(client, within=2.2)
    assert caught.value.attempts == 1
    assert "no answer within the timeout" in caught.value.message
    assert not deadline.passed()


class ClockPacer:
    """A pacer whose next slot is ``delay`` seconds away on the virtual clock."""

    def __init__(self, ctm: FakeCtm, delay: float, *, bounded: bool) -> None:
        self.ctm, self.delay, self.bounded = ctm, delay, bounded
        self.waits = 0

    def wait(self, latest_start: Deadline) -> bool:
        if self.bounded and self.ctm.runtime() + self.delay > latest_start.at:
            return False
        self.waits += 1
        self.ctm.runtime.advance(self.delay)
        return True

    def throttled(self) -> None:
        return None

    def answered(self) -> None:
        return None


def test_a_pacing_slot_after_the_deadline_is_not_waited_for() -> None:
    ctm = FakeCtm()
    client = fake_client(ctm)
    client.issue_token(far(ctm.runtime))
    pacer = ClockPacer(ctm, 5.0, bounded=True)
    start = ctm.runtime()
    with pytest.raises(CtmDeadlineError):
        refresh(client, pacer=pacer, within=2.0)
    assert (pacer.waits, ctm.runtime(), ctm.to("POST", REFRESH_PATH)) == (0, start, [])


def test_a_plain_pacer_that_waited_past_the_deadline_sends_nothing() -> None:
    ctm = FakeCtm()
    with pytest.raises(CtmDeadlineError):
        refresh(fake_client(ctm), pacer=ClockPacer(ctm, 5.0, bounded=False), within=2.0)
    assert ctm.to("POST", REFRESH_PATH) == []


def test_the_list_and_get_calls_take_the_deadline_too() -> None:
    ctm = FakeCtm()
    ctm.always("GET", KEYS_PATH, Reply(200, {"resources": [], "total": 0}))
    client = fake_client(ctm)

    client.list_page(None, deadline=Deadline.within(4.0, ctm.runtime))
    client.find_oci_key("ocid1.key.oc1.iad.x", deadline=Deadline.within(4.0, ctm.runtime))

    assert [s.timeout.total for s in ctm.to("GET", KEYS_PATH)] == [4.0, 4.0]
    with pytest.raises(CtmDeadlineError):
        client.get_oci_key(KEY_ID, deadline=Deadline.within(0.0, ctm.runtime))


def _refresh(client: Any, deadline: Deadline) -> object:
    return client.refresh_oci_key(KEY_ID, pacer=UNPACED, deadline=deadline)


def _sign_in(client: Any, deadline: Deadline) -> object:
    return client.issue_token(deadline)


@pytest.mark.parametrize("needs_a_token", [_refresh, _sign_in], ids=["a refresh", "a sign-in"])
def test_the_token_exchange_keeps_to_the_deadline_of_what_needs_it(
    needs_a_token: Callable[[Any, Deadline], object],
) -> None:
    # Given a token endpoint answering 503 after a second, and no token yet
    ctm = FakeCtm()
    ctm.always("POST", TOKEN_PATH, Reply(503, "", takes=1.0))
    client = fake_client(ctm, max_attempts=10)
    deadline = Deadline.within(2.5, ctm.runtime)
    # When a refresh, or a sign-in ahead of the calls (beside a chunk's read), must end in 2.5 s
    with pytest.raises(CtmDeadlineError):
        needs_a_token(client, deadline)
    # Then the token exchange was timed to that deadline and stopped before it, no refresh sent
    assert ctm.to("POST", TOKEN_PATH)[0].timeout.total == 2.5
    assert not deadline.passed()
    assert ctm.to("POST", REFRESH_PATH) == []
    # And the same with time to spare is not bound by it
    ctm.always("POST", TOKEN_PATH, ctm.issue)
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    assert needs_a_token(client, far(ctm.runtime))
    assert ctm.to("POST", TOKEN_PATH)[-1].timeout.total == 20.0


# --- bodies that trickle, never end, or are too large ---------------------------------------


def test_a_body_trickling_in_byte_by_byte_ends_at_the_deadline() -> None:
    # Given CTM sending a key one byte every 20 ms (much longer than the second left)
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object(), per_byte=0.02))
    client = fake_client(ctm)
    client.issue_token(far(ctm.runtime))
    deadline = Deadline.within(1.0, ctm.runtime)
    # When a call with a 20 s timeout must end within 1 s
    with pytest.raises(CtmDeadlineError) as caught:
        refresh(client, within=1.0)
    # Then it ended at the deadline, though every byte came well within a read timeout
    assert deadline.remaining() == pytest.approx(0.0, abs=0.02)
    assert caught.value.attempts == 1
    assert ctm.stream is not None
    assert ctm.stream.sent < len(KEY_BODY)
    assert ctm.stream.closed


def test_a_trickling_body_is_cut_at_the_attempts_time_limit() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object(), per_byte=0.5))
    client = fake_client(ctm, max_attempts=1)
    client.issue_token(far(ctm.runtime))
    started = ctm.runtime()
    with pytest.raises(CtmTimeoutError) as caught:
        refresh(client)
    assert caught.value.error_code == "TIMEOUT"
    assert ctm.runtime() - started == pytest.approx(20.0, abs=0.5)  # CTM_TIMEOUT_SECONDS


def test_an_oversized_declared_body_is_refused_without_reading_it() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, "{", declared_length=100 << 20, per_byte=1.0))
    with pytest.raises(CtmBadResponseError) as caught:
        refresh(fake_client(ctm))
    assert (caught.value.error_code, caught.value.http_status) == ("BAD_RESPONSE", 200)
    assert "over 1048576 bytes" in caught.value.message
    assert ctm.stream is not None
    assert ctm.stream.sent == 0


def test_an_endless_body_is_cut_at_the_size_cap() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, "{", endless=True))
    with pytest.raises(CtmBadResponseError):
        refresh(fake_client(ctm))
    assert ctm.stream is not None
    assert (1 << 20) < ctm.stream.sent <= (1 << 20) + (64 << 10)


def test_an_oversized_error_body_is_classified_by_its_status() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(503, "{", endless=True))
    with pytest.raises(CtmTransientError) as caught:
        refresh(fake_client(ctm, max_attempts=1))
    assert caught.value.error_code == "HTTP_503"


# --- over a real socket: the socket's own timeout is re-armed to what is left -----------------


def transport() -> Transport:
    return Transport(retry=RetryPolicy(max_attempts=4, base_delay=0.05, max_delay=0.05))


def test_an_answer_slower_than_the_deadline_ends_with_deadline_not_the_answer() -> None:
    with SlowHttpServer(SlowAnswer(header_delay=30.0)) as server:
        with pytest.raises(CtmDeadlineError):
            transport().call("GET", server.url + "/slow", deadline=Deadline.within(0.8))
        assert server.requests >= 1


def test_a_body_trickling_over_a_socket_ends_before_it_is_all_sent() -> None:
    body = json.dumps({"padding": "x" * 10_000}).encode()
    with SlowHttpServer(SlowAnswer(body=body, byte_interval=0.02)) as server:
        with pytest.raises(CtmDeadlineError) as caught:
            transport().call("GET", server.url + "/slow", deadline=Deadline.within(1.0))
        sent = server.bytes_sent
    assert caught.value.attempts == 1
    assert sent < len(body)
