"""The one HTTP transport to CTM: pooled session, timeouts, TLS, retries, typed errors.

Every call goes through ``Transport.call``. It paces each attempt, authenticates it, sends it
with an explicit timeout and ``verify=``, classifies the answer (``retries.classify``),
re-authenticates once after a 401, retries transient failures with capped exponential backoff
and full jitter while the shared retry budget allows, and turns failures into ``CtmError``
subclasses carrying the contract's ``error_code``. Nothing here logs or raises a header.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from cckm_refresh.ctm.errors import (
    MAX_MESSAGE,
    CtmAuthError,
    CtmConnectionError,
    CtmError,
    CtmNotFoundError,
    CtmPermanentError,
    CtmThrottledError,
    CtmTimeoutError,
    CtmTlsError,
    CtmTransientError,
    RetryBudgetExhaustedError,
)
from cckm_refresh.ctm.pacing import UNPACED, Pacer
from cckm_refresh.ctm.retries import RetryBudget, RetryPolicy, Verdict, classify
from cckm_refresh.ctm.tls import TlsPolicy, VerifySetting
from cckm_refresh.observability import logger

CLIENT_VERSION = "0.1.0"  # keep in step with pyproject.toml
USER_AGENT = f"cckm-oci-refresh/{CLIENT_VERSION}"
# Connecting is quick or not happening; the rest of CTM_TIMEOUT_SECONDS is for CTM's answer.
MAX_CONNECT_TIMEOUT = 5.0

_CODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)bearer\s+\S+")
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


def redact(text: str) -> str:
    """Remove anything shaped like a JWT or a bearer credential from ``text``."""
    return _BEARER.sub("Bearer [redacted]", _JWT_LIKE.sub("[redacted]", text))


def ctm_error_fields(text: str) -> tuple[str | None, str | None]:
    """``(codeDesc name, message)`` from a CTM error body, each None when absent.

    ``"NCERRResourceNotFound: Resource not found"`` gives ``NCERRResourceNotFound``. Bodies that
    are not CTM's JSON shape give nothing: an unknown body (a proxy's page) might echo headers.
    """
    try:
        document = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(document, dict):
        return None, None
    code_name = None
    code_desc = document.get("codeDesc")
    if isinstance(code_desc, str):
        candidate = code_desc.split(":", 1)[0].strip()
        if _CODE_NAME.fullmatch(candidate):
            code_name = candidate
    message = document.get("message")
    if not isinstance(message, str) or not message.strip():
        return code_name, None
    return code_name, redact(message.strip())[:MAX_MESSAGE]


_ERROR_CLASSES: Mapping[Verdict, type[CtmError]] = {
    Verdict.THROTTLED: CtmThrottledError,
    Verdict.TRANSIENT: CtmTransientError,
    Verdict.UNAUTHORIZED: CtmAuthError,
    Verdict.NOT_FOUND: CtmNotFoundError,
    Verdict.PERMANENT: CtmPermanentError,
}


def error_for_response(what: str, status: int, text: str, verdict: Verdict) -> CtmError:
    """The typed error for a non-successful answer; ``error_code`` is CTM's codeDesc if any."""
    code_name, message = ctm_error_fields(text)
    default_code = {Verdict.THROTTLED: "THROTTLED", Verdict.UNAUTHORIZED: "UNAUTHORIZED"}.get(
        verdict, f"HTTP_{status}"
    )
    summary = f"{what} answered HTTP {status}"
    if code_name:
        summary += f" {code_name}"
    if message:
        summary += f": {message}"
    return _ERROR_CLASSES[verdict](
        summary, error_code=code_name or default_code, http_status=status
    )


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


class Transport:
    """Sends CTM requests; safe to share between threads (one pooled session)."""

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
    ) -> None:
        connect = min(MAX_CONNECT_TIMEOUT, timeout / 2)
        self.timeout: tuple[float, float] = (connect, timeout - connect)
        self.retry = retry or RetryPolicy()
        self.budget = budget or RetryBudget()
        self.tls = TlsPolicy(verify_tls=verify_tls, ca_bundle=ca_bundle)
        self._sleep = sleep
        self._rng = rng
        self.session = requests.Session()
        # No urllib3 Retry: retries are ours, explicit, budgeted and paced. pool_block=False:
        # a burst above the pool size opens extra connections rather than waiting.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(pool_size, 1), max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update(
            {
                "Accept": "application/json",
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
    ) -> CtmResponse:
        """Send one CTM call with retries; return its JSON answer or raise a CtmError.

        With ``auth``, each attempt carries a bearer JWT and a 401 leads to one
        re-authentication and one more attempt (not counted against ``max_attempts``).
        Raised errors carry ``attempts`` (HTTP attempts made) and the last ``http_status``.
        """
        call = _Call(method, url, params, json_body, auth, pacer, f"{method} {urlsplit(url).path}")
        while True:
            outcome = self._attempt(call)
            if isinstance(outcome, CtmResponse):
                self.budget.release(call.spent)
                return outcome
            if outcome is not None:
                self._wait_before_retry(call, outcome)  # raises when there is no retry

    def _attempt(self, call: _Call) -> CtmResponse | CtmError | None:
        """One HTTP attempt: the answer, the error it ended in, or None to re-send at once."""
        auth, pacer = call.auth, call.pacer
        pacer.wait()
        try:
            jwt = auth.bearer() if auth is not None else None
        except CtmError as error:
            error.attempts = call.attempts
            raise
        call.attempts += 1
        try:
            response = self._send(call, jwt)
        except OSError as exc:  # requests' exceptions are OSErrors
            return error_for_exception(call.what, exc)
        status = response.status_code
        text = response.content.decode("utf-8", "replace")
        verdict = classify(status, text)
        if verdict is Verdict.THROTTLED:
            call.throttled += 1
            pacer.on_throttled()
        else:
            pacer.on_success()
        if verdict is Verdict.OK:
            try:
                body = _json_object(call.what, status, text)
            except CtmError as error:
                error.attempts = call.attempts
                raise
            return CtmResponse(body, status, call.attempts, call.throttled)
        if verdict is Verdict.UNAUTHORIZED and jwt is not None and not call.reauthenticated:
            assert auth is not None
            call.reauthenticated = True
            auth.invalidate(jwt)
            return None
        return error_for_response(call.what, status, text, verdict)

    def _wait_before_retry(self, call: _Call, error: CtmError) -> None:
        """Sleep before the next attempt, or raise ``error`` when it must not be retried."""
        error.attempts = call.attempts
        if not error.transient:
            raise error
        call.failures += 1
        if call.failures >= self.retry.max_attempts:
            raise error
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
        delay = self.retry.delay(call.failures - 1, self._rng)
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

    def verify_setting(self, url: str) -> VerifySetting:
        """What is passed as ``verify=`` for ``url`` (resolved once)."""
        return self.tls.verify_for(url)

    def close(self) -> None:
        """Close pooled connections and remove the temporary CA file."""
        self.session.close()
        self.tls.close()

    def _send(self, call: _Call, jwt: str | None) -> requests.Response:
        return self.session.request(
            call.method,
            call.url,
            params=dict(call.params) if call.params else None,
            data=json.dumps(call.json_body) if call.json_body is not None else None,
            auth=_Bearer(jwt),
            timeout=self.timeout,
            verify=self.tls.verify_for(call.url),
            # A redirect could carry the bearer elsewhere; CTM's API never redirects.
            allow_redirects=False,
        )


def _json_object(what: str, status: int, text: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer ({} when empty); anything else is a permanent error."""
    if not text.strip():
        return {}
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise CtmPermanentError(
            f"{what} answered HTTP {status} with a body that is not a JSON object",
            error_code=f"HTTP_{status}",
            http_status=status,
        )
    return document
