"""The one HTTP transport to CTM, the only place that sends a JWT: session, TLS, each attempt's time
limit and pace, retries (ours: urllib3's can neither pace nor renew a JWT), typed errors."""

from __future__ import annotations

import io
import json
import os
import random
import re
import socket
import tempfile
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypedDict
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3.util import Timeout

from cckm_refresh.ctm.auth import Bearer, TokenSource
from cckm_refresh.ctm.errors import (
    CtmAuthError,
    CtmConnectionError,
    CtmDeadlineError,
    CtmError,
    CtmPermanentError,
    CtmThrottledError,
    CtmTimeoutError,
    CtmTlsError,
    CtmTransientError,
    RetryBudget,
    RetryBudgetExhaustedError,
    RetryPolicy,
    bad_response,
    error_for_response,
)
from cckm_refresh.observability import logger
from cckm_refresh.runtime import SYSTEM, Deadline, Runtime

USER_AGENT = "cckm-oci-refresh/0.1.0"  # keep in step with pyproject.toml
MAX_CONNECT_TIMEOUT = 5.0  # connecting is quick or not happening; the rest is CTM's answer
# An attempt with less time than this would spend OCI's budget on an answer that cannot
# arrive in time (a refresh is two OCI reads behind CCKM): it is not started.
MIN_ATTEMPT_SECONDS = 0.5
# An attempt leaves on its slot, or within this of it (a JWT at hand); later, it takes another.
LATE_ON_SLOT = 0.05
# A list page of 1000 keys is about 2.5 MB; 8 MiB leaves room without letting a proxy fill
# a Lambda's memory. Error answers are read for their codeDesc and message only.
MAX_BODY_BYTES = 8 << 20
MAX_ERROR_BODY_BYTES = 64 << 10
_SSL_REASON = re.compile(r"\[SSL: [A-Z_]+\][^'\"()]*")


class Pacer(Protocol):
    """Paces every attempt, retries included (``ratelimit.TenancyPacer``): ``wait`` for a slot
    by ``latest_start`` (else False, taking none); each answer is ``throttled`` or ``answered``."""

    def wait(self, latest_start: Deadline) -> bool: ...
    def throttled(self) -> None: ...
    def answered(self) -> None: ...


class Unpaced:
    """Every attempt may leave at once: list, get and token calls."""

    def wait(self, latest_start: Deadline) -> bool:
        return not latest_start.passed()

    def throttled(self) -> None: ...
    def answered(self) -> None: ...


UNPACED = Unpaced()


@dataclass(frozen=True)
class CtmResponse:
    """A successful answer: its JSON object, and what it took to get it."""

    body: dict[str, Any]
    http_status: int
    attempts: int  # HTTP attempts made, those after a 401 included
    elapsed: float  # seconds of the successful attempt, from sending to the body read


class TlsPolicy:
    """The ``verify=`` of every request (docs/reference.md 3): the secret's ``ca_bundle`` alone,
    else the standard store as requests finds it or ``SSL_CERT_FILE``; none only by choice."""

    def __init__(self, *, verify_tls: bool, ca_bundle: Callable[[], str | None]) -> None:
        self._verify_tls = verify_tls
        self._ca_bundle = ca_bundle
        self._lock = threading.Lock()  # never held while the secret is read
        self._resolved: bool | str | None = None
        self.ca_file: str | None = None  # written from the secret's ca_bundle, once resolved
        self._quiet_hosts: set[str] = set()

    def verify_for(self, url: str) -> bool | str:
        if self._resolved is None:
            # Read outside the lock: a first call waits for its own read, bounded by its own
            # timeouts, never for another thread's. A file written by a read that lost goes.
            setting, ca_file = self._resolve()
            with self._lock:
                if self._resolved is None:
                    self._resolved, self.ca_file, ca_file = setting, ca_file, None
            _remove(ca_file)
        if (
            self._resolved is False
            and (host := urlsplit(url).hostname or "") not in self._quiet_hosts
        ):
            # The operator chose CTM_VERIFY_TLS=false (warned at cold start): silence
            # urllib3's per-request warning for CTM's host only.
            self._quiet_hosts.add(host)
            message = f"Unverified HTTPS request is being made to host '{re.escape(host)}'"
            warnings.filterwarnings("ignore", message, urllib3.exceptions.InsecureRequestWarning)
        return self._resolved

    def close(self) -> None:
        with self._lock:
            ca_file, self.ca_file, self._resolved = self.ca_file, None, None
        _remove(ca_file)

    def _resolve(self) -> tuple[bool | str, str | None]:
        if not self._verify_tls:
            return False, None
        pem = self._ca_bundle()
        if pem:
            with tempfile.NamedTemporaryFile(
                "w", prefix="ctm-ca-", suffix=".pem", delete=False, encoding="utf-8"
            ) as handle:
                handle.write(pem if pem.endswith("\n") else pem + "\n")
            return handle.name, handle.name
        if os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"):
            return True, None  # requests reads these itself, but not SSL_CERT_FILE
        return os.environ.get("SSL_CERT_FILE") or True, None


def _remove(path: str | None) -> None:
    if path is not None:
        Path(path).unlink(missing_ok=True)


@dataclass
class _Call:
    method: str
    url: str
    params: Mapping[str, str | int] | None
    json_body: Mapping[str, Any] | None
    auth: TokenSource | None
    pacer: Pacer
    deadline: Deadline
    max_body: int
    attempts: int = 0
    failures: int = 0  # transient ones, bounded by max_attempts
    spent: int = 0  # retry budget taken, given back if the call succeeds
    last: CtmError | None = None
    stale_retried: bool = False  # re-sent once with a newer JWT after a 401
    renewed: bool = False  # had its JWT renewed after a 401

    @property
    def what(self) -> str:  # for messages and logs: no query, no header
        return f"{self.method} {urlsplit(self.url).path}"

    def bearer(self) -> Bearer | None:
        return self.auth.bearer(self.deadline) if self.auth is not None else None

    def unauthorized(self, auth: TokenSource, bearer: Bearer, error: CtmError) -> None:
        """A 401 is run-fatal only when a fresh login is refused (``bearer()`` raises it): a stale
        JWT is re-sent as the newest, the newest renewed once, then the 401 is transient."""
        if bearer.generation < auth.generation and not self.stale_retried:
            self.stale_retried = True
            return
        if not self.renewed:
            self.renewed = True
            auth.refused(bearer)
            return
        raise error.copy(CtmTransientError, f"{error.message} (to a JWT just issued, too)")

    def deadline_error(self, last: CtmError | None = None) -> CtmDeadlineError:
        last = last or self.last
        summary = f"{self.what}: deadline reached after {self.attempts} attempt(s)"
        return CtmDeadlineError(
            summary + (f"; last: {last.message}" if last is not None else ""),
            error_code="DEADLINE",
            http_status=last.http_status if last is not None else None,
            attempts=self.attempts,
        )


class TransportWiring(TypedDict, total=False):
    """``Transport``'s arguments that are not settings, passed on by a client's wiring."""

    pool_size: int
    runtime: Runtime
    rng: Callable[[], float]
    adapter: BaseAdapter | None


class TransportOptions(TransportWiring, total=False):
    timeout: float
    verify_tls: bool


class Transport:
    """Sends CTM calls; safe to share between threads. ``pool_size`` connections to CTM are
    kept alive (the most calls in flight, ``REFRESH_CONCURRENCY``); a burst above it opens
    extra ones. ``adapter``, when given, answers every https:// request (a simulation)."""

    def __init__(
        self,
        *,
        timeout: float = 20.0,
        retry: RetryPolicy | None = None,
        verify_tls: bool = True,
        ca_bundle: Callable[[], str | None] = lambda: None,
        pool_size: int = 8,
        runtime: Runtime = SYSTEM,
        rng: Callable[[], float] = random.random,
        adapter: BaseAdapter | None = None,
    ) -> None:
        self.attempt_timeout = timeout  # one total per attempt: connect, headers and body
        self.retry = retry or RetryPolicy()
        self.budget = RetryBudget()
        self.tls = TlsPolicy(verify_tls=verify_tls, ca_bundle=ca_bundle)
        self.runtime = runtime
        self._rng = rng
        self.session = requests.Session()
        pooled = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 1), max_retries=0)
        self.session.mount("http://", pooled)
        self.session.mount("https://", adapter or pooled)
        # identity: the size cap counts what is held in memory (no decompression bomb), and
        # a read returns as soon as bytes arrive, so the time limit is exact.
        self.session.headers.update(
            {
                "Accept": "application/json",
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
        deadline: Deadline,
        params: Mapping[str, str | int] | None = None,
        json_body: Mapping[str, Any] | None = None,
        auth: TokenSource | None = None,
        pacer: Pacer = UNPACED,
        max_body: int = MAX_BODY_BYTES,
    ) -> CtmResponse:
        """One CTM call with its retries: its JSON object answer, or a CtmError carrying
        ``attempts`` (``DEADLINE`` when no attempt can end before ``deadline``, ``BAD_RESPONSE``
        for a 2xx body over ``max_body`` bytes or not a JSON object)."""
        call = _Call(method, url, params, json_body, auth, pacer, deadline, max_body)
        try:
            while True:
                outcome = self._attempt(call)
                if isinstance(outcome, CtmResponse):
                    self.budget.release(call.spent)
                    return outcome
                if outcome is not None:
                    self._before_retry(call, outcome)  # raises when it is not retried
                    call.last = outcome
        except CtmError as error:  # the sign-in's too: it counts this call's attempts
            error.attempts = call.attempts
            raise

    def close(self) -> None:
        self.session.close()
        self.tls.close()

    def _attempt(self, call: _Call) -> CtmResponse | CtmError | None:
        """One attempt: the answer, the error it ended in, or None to re-send at once (401)."""
        bearer, limit = self._take_slot(call)
        call.attempts += 1
        started = self.runtime.monotonic()
        response = None
        try:
            response = self._send(call, bearer, limit)
            text = self._read(call, response, started + limit)
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # requests' are OSErrors
            if response is None:
                return error_for_exception(call.what, exc)
            response.close()  # a half-read connection must not go back to the pool
            return error_for_exception(call.what, exc, response.status_code)
        except CtmError as error:  # the secret's ca_bundle could not be read just now
            if not error.transient:
                raise
            return error
        failure = error_for_response(call.what, response.status_code, text)
        if isinstance(failure, CtmThrottledError):
            call.pacer.throttled()
        else:
            call.pacer.answered()
        if isinstance(failure, CtmAuthError) and call.auth is not None and bearer is not None:
            call.unauthorized(call.auth, bearer, failure)  # raises unless re-sent at once
            return None
        if failure is not None:
            return failure
        body = _json_object(call, response.status_code, text)
        elapsed = self.runtime.monotonic() - started
        return CtmResponse(body, response.status_code, call.attempts, elapsed)

    def _take_slot(self, call: _Call) -> tuple[Bearer | None, float]:
        """Waits for the attempt's slot: its JWT and time limit (``DEADLINE`` when too short)."""
        call.bearer()  # a sign-in the attempt needs happens before its slot is taken
        latest_start = call.deadline.before(MIN_ATTEMPT_SECONDS)
        self._wait_for_slot(call, latest_start)
        slot = self.runtime.monotonic()
        bearer = call.bearer()  # the newest JWT, after the wait it might have outlived
        # A renewal took the slot's moment: leaving now would crowd the tenancy's next attempt.
        # Leave on the next slot, with this JWT (asking again could take that slot's moment too).
        if self.runtime.monotonic() - slot > LATE_ON_SLOT:
            self._wait_for_slot(call, latest_start)
        limit = min(self.attempt_timeout, call.deadline.remaining())
        if limit < MIN_ATTEMPT_SECONDS:
            raise call.deadline_error()
        return bearer, limit

    def _wait_for_slot(self, call: _Call, latest_start: Deadline) -> None:
        if not call.pacer.wait(latest_start) or latest_start.passed():
            raise call.deadline_error()

    def _send(self, call: _Call, bearer: Bearer | None, limit: float) -> requests.Response:
        # total= bounds connecting and waiting for the headers; _read times the body.
        connect = min(MAX_CONNECT_TIMEOUT, self.attempt_timeout / 2, limit)
        return self.session.request(
            call.method,
            call.url,
            params=dict(call.params) if call.params else None,
            data=json.dumps(call.json_body) if call.json_body is not None else None,
            headers={"Authorization": f"Bearer {bearer.jwt}"} if bearer is not None else None,
            auth=lambda request: request,  # adds nothing, so that requests never reads ~/.netrc
            timeout=Timeout(connect=connect, read=limit, total=limit),  # type: ignore[arg-type]
            verify=self.tls.verify_for(call.url),
            allow_redirects=False,  # a redirect could carry the bearer elsewhere
            stream=True,
        )

    def _read(self, call: _Call, response: requests.Response, ends_at: float) -> str:
        """The body, read in chunks before ``ends_at``: a 2xx one up to ``max_body`` bytes (beyond:
        ``BAD_RESPONSE``), an error one up to ``MAX_ERROR_BODY_BYTES`` (beyond: "")."""
        status = response.status_code
        limit = call.max_body if 200 <= status < 300 else MAX_ERROR_BODY_BYTES
        declared = response.headers.get("Content-Length", "")
        size = limit + 1 if declared.isdigit() and int(declared) > limit else 0  # not read
        # an adapter may answer from memory, with no stream to time
        source = response.raw if response.raw is not None else io.BytesIO(response.content)
        chunks: list[bytes] = []
        while size <= limit and (chunk := self._chunk(source, ends_at)):
            chunks.append(chunk)
            size += len(chunk)
        if size <= limit:
            return b"".join(chunks).decode("utf-8", "replace")
        response.close()
        if limit == MAX_ERROR_BODY_BYTES:
            return ""
        raise bad_response(call.what, status, f"a body over {limit} bytes")

    def _chunk(self, raw: Any, ends_at: float) -> bytes:
        left = ends_at - self.runtime.monotonic()
        if left <= 0:
            raise TimeoutError
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if isinstance(sock, socket.socket):
            sock.settimeout(max(left, 0.001))
        return bytes(raw.read1(64 << 10))

    def _before_retry(self, call: _Call, error: CtmError) -> None:
        call.failures += 1
        if not error.transient or call.failures >= self.retry.max_attempts:
            raise error
        delay = self.retry.delay(call.failures - 1, self._rng)
        if delay + MIN_ATTEMPT_SECONDS > call.deadline.remaining():
            raise call.deadline_error(error)  # the sleep would leave no time to retry
        cost = self.budget.acquire(after_timeout=isinstance(error, CtmTimeoutError))
        logged = {"ctm_call": call.what, "error_code": error.error_code, "delay_s": delay}
        if not cost:
            logger.error("CTM retry budget exhausted; failing fast", extra=logged)
            message = f"retry budget exhausted, not retrying: {error.message}"
            raise error.copy(RetryBudgetExhaustedError, message)
        call.spent += cost
        logger.info("CTM call failed transiently; retrying", extra=logged)
        self.runtime.sleep(delay)


def error_for_exception(what: str, exc: Exception, status: int | None = None) -> CtmError:
    """The error of an attempt that raised ``exc``; ``status``: the answer's, when it raised
    reading the body."""
    if isinstance(exc, requests.exceptions.SSLError):
        found = _SSL_REASON.search(str(exc))
        reason = found.group(0).strip() if found else "TLS handshake failed"
        return CtmTlsError(f"{what}: {reason}", error_code="TLS")
    if isinstance(exc, requests.Timeout | urllib3.exceptions.ReadTimeoutError | TimeoutError):
        message = f"{what}: no answer within the timeout"
        return CtmTimeoutError(message, error_code="TIMEOUT", http_status=status)
    if status is not None or isinstance(
        exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError
    ):
        message = f"{what}: connection failed or dropped"
        return CtmConnectionError(message, error_code="CONNECTION", http_status=status)
    if not isinstance(exc, requests.RequestException) and "CA certificate bundle" in str(exc):
        # requests raises a bare OSError when the CA file it was told to use does not exist.
        message = f"{what}: the CA bundle to verify CTM with was not found"
        return CtmTlsError(message, error_code="TLS")
    # Anything else (an invalid URL, a header requests refused) will not get better, and its
    # text is requests' own, which may quote what it refused: not repeated.
    message = f"{what}: the request could not be sent ({type(exc).__name__})"
    return CtmPermanentError(message, error_code="CONNECTION")


def _json_object(call: _Call, status: int, text: str) -> dict[str, Any]:
    try:
        document = json.loads(text) if text.strip() else {}
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise bad_response(call.what, status, "a body that is not a JSON object", call.attempts)
    return document
