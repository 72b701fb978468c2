"""The one HTTP transport to CTM: pooled session, timeouts, TLS, retries, typed errors.

Every call goes through ``Transport.call``. It paces each attempt, authenticates it, sends it
with an explicit timeout and ``verify=``, classifies the answer (``retries.classify``),
re-authenticates once after a 401, retries transient failures with capped exponential backoff
and full jitter while the shared retry budget allows, and turns failures into ``CtmError``
subclasses carrying the contract's ``error_code``. Nothing here logs or raises a header.

Time: each attempt has one total limit (``timeout``, shrunk to what is left before the
caller's ``deadline``) covering connect, headers and the whole body. The body is streamed in
chunks with the socket timeout re-armed to the time left before each read, so an answer
trickling in byte by byte cannot stretch an attempt; it is also capped in size. No back-off
sleep or pacing wait is started that would pass the deadline.

Over 300 lines on purpose: one call's whole life (pacing, authentication, the attempt under one
time limit, the streamed and capped body, classification, retries and their budget) in the one
place that may see a bearer token.
"""

from __future__ import annotations

import json
import math
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.util import Timeout

from cckm_refresh.ctm.errors import (
    CtmBadResponseError,
    CtmConnectionError,
    CtmDeadlineError,
    CtmError,
    CtmPermanentError,
    CtmTimeoutError,
    CtmTlsError,
    RetryBudgetExhaustedError,
    error_for_response,
)
from cckm_refresh.ctm.pacing import UNPACED, Pacer
from cckm_refresh.ctm.retries import (
    SUCCESS_STATUSES,
    RetryBudget,
    RetryPolicy,
    Verdict,
    classify,
)
from cckm_refresh.ctm.tls import TlsPolicy
from cckm_refresh.observability import logger
from cckm_refresh.runtime import Deadline, Runtime

CLIENT_VERSION = "0.1.0"  # keep in step with pyproject.toml
USER_AGENT = f"cckm-oci-refresh/{CLIENT_VERSION}"
# Connecting is quick or not happening; the rest of CTM_TIMEOUT_SECONDS is for CTM's answer.
MAX_CONNECT_TIMEOUT = 5.0
# An attempt with less time than this left would only spend OCI's budget on an answer that
# cannot arrive in time (a refresh is two OCI reads behind CCKM): it is not started.
MIN_ATTEMPT_SECONDS = 0.5
# Largest answer read into memory by default: a CTM key list page of 1000 keys is about
# 2.5 MB (key objects are ~2.5 KB with tags), so 8 MiB leaves room without letting a
# misbehaving proxy or CTM fill a Lambda's memory. Single key objects use a smaller cap.
MAX_BODY_BYTES = 8 << 20
# Error answers are read for their codeDesc/message only.
MAX_ERROR_BODY_BYTES = 64 << 10
READ_CHUNK_BYTES = 64 << 10

_SSL_REASON = re.compile(r"\[SSL: [A-Z_]+\][^'\"()]*")


class Authenticator(Protocol):
    """Where the transport gets a bearer JWT and reports one CTM refused (``TokenSource``)."""

    def bearer(self) -> str: ...

    def invalidate(self, jwt: str) -> None: ...


@dataclass(frozen=True)
class CtmResponse:
    """A successful answer: its JSON object, status, and what it took to get it."""

    body: dict[str, Any]
    http_status: int
    attempts: int  # HTTP attempts made, including the one after re-authentication
    throttled: int  # how many of them were throttled


@dataclass
class _Call:
    """One call: what to send, and its progress across attempts."""

    method: str
    url: str
    params: Mapping[str, str | int] | None
    json_body: Mapping[str, Any] | None
    auth: Authenticator | None
    pacer: Pacer
    what: str  # "METHOD /path", for messages and logs (no query, no headers)
    deadline: float | None = None  # monotonic instant the whole call ends before
    max_body: int = MAX_BODY_BYTES
    attempts: int = 0
    throttled: int = 0
    failures: int = 0  # transient failures, bounded by max_attempts
    spent: int = 0  # retry budget taken, given back if the call succeeds
    reauthenticated: bool = False


class _Bearer(AuthBase):
    """Sets the Authorization header; also stops requests from consulting ``~/.netrc``."""

    def __init__(self, jwt: str | None) -> None:
        self._jwt = jwt

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._jwt is not None:
            request.headers["Authorization"] = f"Bearer {self._jwt}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(<redacted>)"


def error_for_exception(what: str, exc: OSError) -> CtmError:
    """The typed error for a request that got no answer."""
    if isinstance(exc, requests.exceptions.SSLError):
        found = _SSL_REASON.search(str(exc))
        reason = found.group(0).strip() if found else "TLS handshake failed"
        return CtmTlsError(f"{what}: {reason}", error_code="TLS")
    if isinstance(exc, requests.exceptions.Timeout):
        return CtmTimeoutError(f"{what}: no answer within the timeout", error_code="TIMEOUT")
    if isinstance(
        exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError
    ):
        return CtmConnectionError(f"{what}: connection failed or dropped", error_code="CONNECTION")
    if not isinstance(exc, requests.RequestException) and "CA certificate bundle" in str(exc):
        # requests raises a bare OSError when the CA file it was told to use does not exist.
        return CtmTlsError(
            f"{what}: the CA bundle to verify CTM with was not found", error_code="TLS"
        )
    # Anything else (an invalid URL, a header requests refused...) will not get better with
    # retries, and its text is requests' own, which may quote what it refused: not repeated.
    return CtmPermanentError(
        f"{what}: the request could not be sent ({type(exc).__name__})", error_code="CONNECTION"
    )


class _ClockView:
    """The transport's clock as a ``Deadline`` reads it (only ``monotonic`` is asked)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.monotonic = clock


class _BodyTooLargeError(Exception):
    """The answer is larger than the call allows (the rest is not read)."""


class Transport:
    """Sends CTM requests; safe to share between threads (one pooled session).

    ``pool_size`` is the number of connections kept open to CTM (urllib3's ``pool_maxsize``
    for the one CTM host): size it to the most calls in flight at once, i.e. the engine's
    ``REFRESH_CONCURRENCY`` (up to 64), so that every concurrent call reuses a kept-alive TLS
    connection instead of opening and discarding one per call. A burst above it opens extra
    connections rather than waiting (``pool_block=False``); those are closed after use.
    """

    def __init__(
        self,
        *,
        timeout: float = 20.0,
        retry: RetryPolicy | None = None,
        budget: RetryBudget | None = None,
        verify_tls: bool = True,
        ca_bundle: Callable[[], str | None] = lambda: None,
        pool_size: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        min_attempt: float = MIN_ATTEMPT_SECONDS,
        adapter: Any = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.attempt_timeout = timeout  # total per attempt: connect + headers + body
        self.connect_timeout = min(MAX_CONNECT_TIMEOUT, timeout / 2)
        self.min_attempt = min_attempt
        self.retry = retry or RetryPolicy()
        self.budget = budget or RetryBudget()
        self.tls = TlsPolicy(verify_tls=verify_tls, ca_bundle=ca_bundle)
        self.pool_size = max(pool_size, 1)
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        self._runtime = cast(Runtime, _ClockView(clock))
        # The deadline of the call on whose behalf this thread is getting a token: the token
        # exchange (a call of its own, made by the Authenticator) inherits it.
        self._ambient = threading.local()
        self.session = requests.Session()
        # No urllib3 Retry: retries are ours, explicit, budgeted and paced.
        # ``adapter``: one that answers in process (a simulation, tests) instead of the network.
        adapter = adapter or HTTPAdapter(
            pool_connections=4, pool_maxsize=self.pool_size, max_retries=0
        )
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update(
            {
                "Accept": "application/json",
                # identity: the size cap counts what is held in memory (no decompression
                # bomb), and each read returns as soon as bytes arrive, so the per-attempt
                # time limit is exact. CTM's answers are small next to a VPC's bandwidth.
                "Accept-Encoding": "identity",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            }
        )

    def call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: Mapping[str, Any] | None = None,
        auth: Authenticator | None = None,
        pacer: Pacer = UNPACED,
        deadline: float | None = None,
        max_body: int = MAX_BODY_BYTES,
    ) -> CtmResponse:
        """Send one CTM call with retries; return its JSON answer or raise a CtmError.

        With ``auth``, each attempt carries a bearer JWT and a 401 leads to one
        re-authentication and one more attempt (not counted against ``max_attempts``).
        ``deadline`` (a ``clock``/``time.monotonic()`` instant): the call, its retries,
        back-off sleeps and pacing waits end before it; when the next attempt (the first or a
        retry) cannot start and finish in time, ``CtmDeadlineError`` (``DEADLINE``, transient;
        its message and ``http_status`` tell the last failure, if any). A 2xx body over
        ``max_body`` bytes or not a JSON object is ``CtmBadResponseError``. Raised errors carry
        ``attempts`` (HTTP attempts made) and the last ``http_status``.
        """
        if deadline is None:
            deadline = getattr(self._ambient, "deadline", None)
        call = _Call(
            method,
            url,
            params,
            json_body,
            auth,
            pacer,
            f"{method} {urlsplit(url).path}",
            deadline=deadline,
            max_body=max_body,
        )
        last: CtmError | None = None
        while True:
            outcome = self._attempt(call, last)
            if isinstance(outcome, CtmResponse):
                self.budget.release(call.spent)
                return outcome
            if outcome is not None:
                self._wait_before_retry(call, outcome)  # raises when there is no retry
                last = outcome

    def _time_left(self, call: _Call) -> float | None:
        return None if call.deadline is None else call.deadline - self._clock()

    def _deadline_error(self, call: _Call, last: CtmError | None) -> CtmDeadlineError:
        summary = f"{call.what}: deadline reached after {call.attempts} attempt(s)"
        if last is not None:
            summary += f"; last: {last.message}"
        return CtmDeadlineError(
            summary,
            error_code="DEADLINE",
            http_status=last.http_status if last is not None else None,
            attempts=call.attempts,
        )

    def _pace(self, call: _Call, last: CtmError | None) -> None:
        """Wait for the pacer's slot; a slot too late for an attempt is a deadline error."""
        latest_start = math.inf if call.deadline is None else call.deadline - self.min_attempt
        if not call.pacer.wait(Deadline(latest_start, self._runtime)):
            raise self._deadline_error(call, last)
        if self._clock() > latest_start:
            raise self._deadline_error(call, last)

    def _attempt(self, call: _Call, last: CtmError | None) -> CtmResponse | CtmError | None:
        """One HTTP attempt: the answer, the error it ended in, or None to re-send at once."""
        # The JWT first: an attempt held up fetching it must not leave together with the next
        # (the pacer counts from when each attempt really leaves).
        jwt = self._bearer(call)
        self._pace(call, last)
        budget = self._attempt_budget(call, last)
        call.attempts += 1
        ends_at = self._clock() + budget
        try:
            response = self._send(call, jwt, budget)
        except OSError as exc:  # requests' exceptions are OSErrors
            return error_for_exception(call.what, exc)
        status = response.status_code
        text = self._receive(call, response, ends_at)
        if isinstance(text, CtmError):
            return text
        return self._judge(call, jwt, status, text)

    @contextmanager
    def within(self, deadline: float | None) -> Iterator[None]:
        """Calls this thread makes inside the block without a deadline of their own (a token
        exchange) end before ``deadline``."""
        outer = getattr(self._ambient, "deadline", None)
        self._ambient.deadline = deadline
        try:
            yield
        finally:
            self._ambient.deadline = outer

    def _bearer(self, call: _Call) -> str | None:
        """The attempt's JWT (None without ``auth``), got within the call's deadline."""
        try:
            with self.within(call.deadline):
                return call.auth.bearer() if call.auth is not None else None
        except CtmError as error:
            error.attempts = call.attempts
            raise

    def _attempt_budget(self, call: _Call, last: CtmError | None) -> float:
        """The attempt's total time: ``attempt_timeout``, or less when the deadline is near."""
        budget = self.attempt_timeout
        left = self._time_left(call)
        if left is not None:
            if left < self.min_attempt:  # getting the token took the time that was left
                raise self._deadline_error(call, last)
            budget = min(budget, left)
        return budget

    def _judge(
        self, call: _Call, jwt: str | None, status: int, text: str
    ) -> CtmResponse | CtmError | None:
        """What an answer read in full means: the response, its error, or None to re-send
        once after a 401 (the JWT invalidated first)."""
        auth, pacer = call.auth, call.pacer
        verdict = classify(status, text)
        if verdict is Verdict.THROTTLED:
            call.throttled += 1
            pacer.throttled()
        else:
            pacer.answered()
        if verdict is Verdict.OK:
            try:
                body = _json_object(call.what, status, text)
            except CtmError as error:
                error.attempts = call.attempts
                raise
            return CtmResponse(body, status, call.attempts, call.throttled)
        if (
            verdict is Verdict.UNAUTHORIZED
            and jwt is not None
            and auth is not None
            and not call.reauthenticated
        ):
            call.reauthenticated = True
            auth.invalidate(jwt)
            return None
        return error_for_response(call.what, status, text, verdict)

    def _receive(self, call: _Call, response: requests.Response, ends_at: float) -> str | CtmError:
        """The answer's text, or the transient error reading it ended in.

        A 2xx body over ``max_body`` raises ``CtmBadResponseError``; an error body is read up
        to ``MAX_ERROR_BODY_BYTES`` only (beyond, it is classified by its status alone).
        """
        status = response.status_code
        success = status in SUCCESS_STATUSES
        limit = call.max_body if success else MAX_ERROR_BODY_BYTES
        try:
            return self._read_body(response, limit, ends_at).decode("utf-8", "replace")
        except _BodyTooLargeError:
            if not success:
                return ""
            raise CtmBadResponseError(
                f"{call.what} answered HTTP {status} with a body over {limit} bytes",
                error_code="BAD_RESPONSE",
                http_status=status,
                attempts=call.attempts,
            ) from None
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
            return CtmTimeoutError(
                f"{call.what}: the answer did not arrive within the timeout",
                error_code="TIMEOUT",
                http_status=status,
            )
        except (urllib3.exceptions.HTTPError, OSError):
            return CtmConnectionError(
                f"{call.what}: connection dropped while reading the answer",
                error_code="CONNECTION",
                http_status=status,
            )

    def _read_body(self, response: requests.Response, limit: int, ends_at: float) -> bytes:
        """The whole body, read in chunks before ``ends_at``; at most ``limit`` bytes.

        Raises ``_BodyTooLargeError`` (the connection is closed, the rest never read) or a
        timeout when the body does not arrive in time, however it trickles.
        """
        declared = _declared_length(response)
        raw = response.raw
        try:
            if declared is not None and declared > limit:
                raise _BodyTooLargeError
            if raw is None:  # an adapter that answered from memory (no stream to time)
                if len(response.content) > limit:
                    raise _BodyTooLargeError
                return response.content
            return self._read_stream(raw, limit, ends_at)
        except BaseException:
            response.close()  # a half-read connection must not go back to the pool
            raise

    def _read_stream(self, raw: Any, limit: int, ends_at: float) -> bytes:
        """``raw``'s chunks until it ends, each read timed to end by ``ends_at``."""
        chunks: list[bytes] = []
        size = 0
        while True:
            left = ends_at - self._clock()
            if left <= 0:
                raise TimeoutError
            _arm_socket_timeout(raw, left)
            chunk = raw.read1(READ_CHUNK_BYTES)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise _BodyTooLargeError
            chunks.append(chunk)

    def _wait_before_retry(self, call: _Call, error: CtmError) -> None:
        """Sleep before the next attempt, or raise ``error`` when it must not be retried."""
        error.attempts = call.attempts
        if not error.transient:
            raise error
        call.failures += 1
        if call.failures >= self.retry.max_attempts:
            raise error
        delay = self.retry.delay(call.failures - 1, self._rng)
        left = self._time_left(call)
        if left is not None and delay + self.min_attempt > left:
            # Sleeping would leave no time for the retry: stop now, well before the deadline.
            raise self._deadline_error(call, error)
        cost = self.budget.acquire(after_timeout=isinstance(error, CtmTimeoutError))
        if not cost:
            logger.error(
                "CTM retry budget exhausted; failing fast",
                extra={"ctm_call": call.what, "error_code": error.error_code},
            )
            raise RetryBudgetExhaustedError(
                f"retry budget exhausted, not retrying: {error.message}",
                error_code=error.error_code,
                http_status=error.http_status,
                attempts=call.attempts,
            )
        call.spent += cost
        logger.info(
            "CTM call failed transiently; retrying",
            extra={
                "ctm_call": call.what,
                "attempt": call.attempts,
                "error_code": error.error_code,
                "http_status": error.http_status,
                "delay_s": round(delay, 3),
            },
        )
        self._sleep(delay)

    def close(self) -> None:
        """Close pooled connections and remove the temporary CA file."""
        self.session.close()
        self.tls.close()

    def _send(self, call: _Call, jwt: str | None, budget: float) -> requests.Response:
        # total= bounds connect + waiting for the headers together; the body is timed by
        # _read_body against the same end.
        connect = min(self.connect_timeout, budget)
        return self.session.request(
            call.method,
            call.url,
            params=dict(call.params) if call.params else None,
            data=json.dumps(call.json_body) if call.json_body is not None else None,
            auth=_Bearer(jwt),
            timeout=Timeout(connect=connect, read=budget, total=budget),  # type: ignore[arg-type]
            verify=self.tls.verify_for(call.url),
            # A redirect could carry the bearer elsewhere; CTM's API never redirects.
            allow_redirects=False,
            stream=True,
        )


def _declared_length(response: requests.Response) -> int | None:
    """The answer's Content-Length, or None when absent or not a number."""
    try:
        return int(response.headers.get("Content-Length", ""))
    except ValueError:
        return None


def _arm_socket_timeout(raw: Any, seconds: float) -> None:
    """Make the next read on ``raw``'s socket wait at most ``seconds`` (when there is one)."""
    connection = getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        sock.settimeout(max(seconds, 0.001))


def _json_object(what: str, status: int, text: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer ({} when empty); anything else is ``BAD_RESPONSE``."""
    if not text.strip():
        return {}
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise CtmBadResponseError(
            f"{what} answered HTTP {status} with a body that is not a JSON object",
            error_code="BAD_RESPONSE",
            http_status=status,
        )
    return document
