"""Transport: retry classification (docs/reference.md 4.4), back-off, retry budget, errors,
TLS, pacing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import requests

from cckm_refresh.ctm.errors import (
    CtmAuthError,
    CtmBadResponseError,
    CtmConnectionError,
    CtmError,
    CtmNotFoundError,
    CtmPermanentError,
    CtmThrottledError,
    CtmTimeoutError,
    CtmTlsError,
    CtmTransientError,
    RetryBudget,
    RetryBudgetExhaustedError,
    RetryPolicy,
    ctm_error_fields,
    error_for_response,
)
from cckm_refresh.ctm.transport import USER_AGENT, Transport
from cckm_refresh.runtime import Deadline
from tests.unit.ctm_fakes import (
    KEY_ID,
    FakeCtm,
    Reply,
    error_body,
    fake_client,
    far,
    key_object,
    refresh,
)

REFRESH_PATH = f"/api/v1/cckm/oci/keys/{KEY_ID}/refresh"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
OCI_THROTTLE = '{"code":"TooManyRequests","message":"User-rate limit exceeded."}'


def kind(status: int, body: str) -> type[CtmError] | None:
    """The class of error an answer is (None: a success)."""
    error = error_for_response("POST /x", status, body)
    return None if error is None else type(error)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_success(status: int) -> None:
    assert kind(status, "") is None


def test_a_2xx_body_mentioning_too_many_requests_is_still_success() -> None:
    assert kind(200, '{"oci_params": {"display_name": "TooManyRequests"}}') is None


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, CtmPermanentError),
        (403, CtmPermanentError),
        (404, CtmNotFoundError),
        (409, CtmPermanentError),
        (422, CtmPermanentError),
        (401, CtmAuthError),
        (302, CtmPermanentError),
        (429, CtmThrottledError),
        (500, CtmTransientError),
        (502, CtmTransientError),
        (503, CtmTransientError),
        (504, CtmTransientError),
    ],
)
def test_status_classification(status: int, expected: type[CtmError]) -> None:
    assert kind(status, '{"code": 1, "message": "x"}') is expected


@pytest.mark.parametrize("status", [400, 409, 500, 503])
def test_a_too_many_requests_body_is_throttling_whatever_the_status(status: int) -> None:
    assert kind(status, OCI_THROTTLE) is CtmThrottledError


@pytest.mark.parametrize(
    ("reply", "error_type", "error_code"),
    [
        (
            Reply(400, error_body("NCERRInvalidParamValue: bad", "bad")),
            CtmPermanentError,
            "NCERRInvalidParamValue",
        ),
        (Reply(403, ""), CtmPermanentError, "HTTP_403"),
        (
            Reply(404, error_body("NCERRResourceNotFound: Resource not found")),
            CtmNotFoundError,
            "NCERRResourceNotFound",
        ),
        (Reply(409, error_body("NCERRConflict")), CtmPermanentError, "NCERRConflict"),
        (Reply(422, "<html>nope</html>"), CtmPermanentError, "HTTP_422"),
    ],
)
def test_permanent_answers_fail_at_once_with_their_error_code(
    reply: Reply, error_type: type[CtmError], error_code: str
) -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, reply)

    with pytest.raises(error_type) as caught:
        refresh(fake_client(ctm))

    assert not caught.value.transient
    assert caught.value.error_code == error_code
    assert caught.value.http_status == reply.status
    assert caught.value.attempts == 1
    assert len(ctm.to("POST", REFRESH_PATH)) == 1


@pytest.mark.parametrize(
    ("reply", "error_type", "error_code"),
    [
        (Reply(429, ""), CtmThrottledError, "THROTTLED"),
        (Reply(500, ""), CtmTransientError, "HTTP_500"),
        (Reply(502, "<html>bad gateway</html>"), CtmTransientError, "HTTP_502"),
        (Reply(503, ""), CtmTransientError, "HTTP_503"),
        (Reply(504, ""), CtmTransientError, "HTTP_504"),
        (Reply(400, OCI_THROTTLE), CtmThrottledError, "THROTTLED"),
        (
            Reply(500, error_body("NCERRInternal: x", "OCI said TooManyRequests")),
            CtmThrottledError,
            "NCERRInternal",
        ),
        (
            Reply(raises=requests.exceptions.ConnectionError("refused")),
            CtmConnectionError,
            "CONNECTION",
        ),
        (
            Reply(raises=requests.exceptions.ChunkedEncodingError("dropped")),
            CtmConnectionError,
            "CONNECTION",
        ),
        (Reply(raises=requests.exceptions.ReadTimeout("slow")), CtmTimeoutError, "TIMEOUT"),
        (Reply(raises=requests.exceptions.ConnectTimeout("slow")), CtmTimeoutError, "TIMEOUT"),
    ],
)
def test_transient_failures_are_retried_up_to_max_attempts(
    reply: Reply, error_type: type[CtmError], error_code: str
) -> None:
    # Given CTM failing the same transient way every time
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, reply)
    # When a refresh is attempted with 4 attempts
    with pytest.raises(error_type) as caught:
        refresh(fake_client(ctm, max_attempts=4))
    # Then it was tried 4 times and the last failure is reported
    assert caught.value.transient
    assert caught.value.error_code == error_code
    assert caught.value.attempts == 4
    assert len(ctm.to("POST", REFRESH_PATH)) == 4


def test_a_transient_failure_followed_by_success_returns_the_answer() -> None:
    ctm = FakeCtm()
    ctm.script("POST", REFRESH_PATH, Reply(503, ""), Reply(429, ""), Reply(200, key_object()))

    pacer = RecordingPacer()
    response = refresh(fake_client(ctm), pacer=pacer)

    assert (response.http_status, response.attempts, pacer.events.count("throttled")) == (200, 3, 1)
    assert response.body["id"] == KEY_ID


def test_tls_failure_is_permanent_and_never_retried() -> None:
    ctm = FakeCtm()
    failure = requests.exceptions.SSLError(
        "HTTPSConnectionPool(host='ctm.test', port=443): Max retries exceeded (Caused by "
        "SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate "
        "verify failed: self-signed certificate in certificate chain (_ssl.c:1006)')))"
    )
    ctm.always("POST", REFRESH_PATH, Reply(raises=failure))

    with pytest.raises(CtmTlsError, match="CERTIFICATE_VERIFY_FAILED") as caught:
        refresh(fake_client(ctm))

    assert caught.value.error_code == "TLS"
    assert len(ctm.to("POST", REFRESH_PATH)) == 1


def test_a_401_retry_is_not_counted_against_max_attempts() -> None:
    ctm = FakeCtm()
    ctm.script("POST", REFRESH_PATH, Reply(401, ""), Reply(503, ""), Reply(503, ""))
    ctm.always("POST", REFRESH_PATH, Reply(503, ""))

    with pytest.raises(CtmTransientError) as caught:
        refresh(fake_client(ctm, max_attempts=3))

    assert caught.value.attempts == 4  # one re-authenticated + three transient


def test_backoff_is_full_jitter_capped_exponential() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.5, max_delay=20.0)
    assert [policy.delay(n, lambda: 1.0) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 20, 20]
    assert policy.delay(10_000, lambda: 1.0) == 20.0
    assert policy.delay(3, lambda: 0.0) == 0.0
    assert policy.delay(3, lambda: 0.999) == pytest.approx(0.999 * 4)


@pytest.mark.parametrize("jitter", [0.0, 0.25, 0.999])
def test_the_waits_between_attempts_stay_within_their_bounds(jitter: float) -> None:
    # Given a CTM that is down for 6 attempts
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(503, ""))
    # When a refresh is attempted
    with pytest.raises(CtmTransientError):
        refresh(fake_client(ctm, max_attempts=6, rng=lambda: jitter))
    # Then each wait n is jitter * min(20, 0.5 * 2**n), and there is no wait after the last
    # (a wait of 0 s sleeps no time)
    waits = [jitter * c for c in (0.5, 1, 2, 4, 8)]
    assert ctm.runtime.slept == pytest.approx([w for w in waits if w > 0])


def test_retry_budget_exhaustion_fails_fast_with_the_last_error_code() -> None:
    # Given a budget with room for two retries, shared by the client's calls
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(503, error_body("NCERRServiceUnavailable")))
    client = fake_client(ctm, max_attempts=10)
    client.transport.budget = RetryBudget(capacity=10, retry_cost=5)
    # When a call keeps failing
    with pytest.raises(RetryBudgetExhaustedError) as caught:
        refresh(client)
    # Then it stops after the budget's two retries, reporting the last failure's code
    assert caught.value.error_code == "NCERRServiceUnavailable"
    assert caught.value.http_status == 503
    assert caught.value.transient
    assert caught.value.attempts == 3
    # And the next call, with the budget empty, makes a single attempt
    with pytest.raises(RetryBudgetExhaustedError):
        refresh(client)
    assert len(ctm.to("POST", REFRESH_PATH)) == 4


def test_retry_budget_charges_timeouts_double_and_refunds_on_success() -> None:
    budget = RetryBudget(capacity=20, retry_cost=5, timeout_cost=10)
    assert budget.acquire(after_timeout=True) == 10
    assert budget.acquire(after_timeout=False) == 5
    assert budget.available == 5
    assert budget.acquire(after_timeout=True) == 0  # cannot pay: no retry
    budget.release(15)  # the call that spent 15 succeeded
    assert budget.available == 20
    budget.release(0)  # a first-try success adds the small refund, capped at capacity
    assert budget.available == 20


def test_a_success_after_retries_gives_the_budget_back() -> None:
    ctm = FakeCtm()
    ctm.script("POST", REFRESH_PATH, Reply(503, ""), Reply(200, key_object()))
    client = fake_client(ctm)
    client.transport.budget = RetryBudget(capacity=100)

    refresh(client)

    assert client.transport.budget.available == 100


@pytest.mark.parametrize(
    ("code_desc", "expected"),
    [
        ("NCERRResourceNotFound: Resource not found", "NCERRResourceNotFound"),
        ("NCERRConflict", "NCERRConflict"),
        ("  NCERRInvalidParamValue : x", "NCERRInvalidParamValue"),
        ("has spaces in name: x", None),
        ("", None),
    ],
)
def test_error_code_is_the_code_desc_name_before_the_colon(
    code_desc: str, expected: str | None
) -> None:
    code, _ = ctm_error_fields(f'{{"code": 1, "codeDesc": "{code_desc}", "message": "m"}}')
    assert code == expected


def test_error_message_comes_from_ctm_and_is_truncated() -> None:
    error = error_for_response(
        "POST /x", 409, f'{{"codeDesc": "NCERRConflict", "message": "{"m" * 5000}"}}'
    )
    assert error is not None
    assert error.message.startswith("POST /x answered HTTP 409 NCERRConflict: mmm")
    assert len(error.message) <= 1000


def test_an_unknown_error_body_is_not_echoed() -> None:
    # A proxy's error page may echo the request, Authorization header included
    error = error_for_response("GET /x", 502, "<html>Authorization: Bearer abc</html>")
    assert error is not None
    assert error.message == "GET /x answered HTTP 502"


def test_a_jwt_in_ctms_message_is_redacted() -> None:
    body = '{"codeDesc": "NCERRUnauthorizedAccess", "message": "bad token eyJhbGc.eyJzdWIi.c2ln"}'
    error = error_for_response("GET /x", 401, body)
    assert error is not None
    assert "eyJ" not in error.message


def test_every_request_carries_timeouts_headers_and_no_redirects() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))

    refresh(fake_client(ctm))

    sent = ctm.to("POST", REFRESH_PATH)[0]
    assert (sent.timeout.connect_timeout, sent.timeout.total) == (5.0, 20.0)
    assert sent.headers["Accept"] == "application/json"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["User-Agent"] == USER_AGENT
    assert sent.headers["Authorization"].startswith("Bearer ")
    assert sent.body is None


def test_a_redirect_is_not_followed() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(302, ""))
    with pytest.raises(CtmPermanentError, match="HTTP 302"):
        refresh(fake_client(ctm))
    assert len(ctm.sent) == 2  # the token request and the refresh; nothing after the 302


def test_a_2xx_answer_that_is_not_a_json_object_is_a_bad_response() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, "<html>maintenance</html>"))
    with pytest.raises(CtmBadResponseError) as caught:
        refresh(fake_client(ctm))
    assert caught.value.error_code == "BAD_RESPONSE"
    assert not caught.value.transient


class RecordingPacer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def wait(self, latest_start: Deadline) -> bool:
        self.events.append("wait")
        return True

    def throttled(self) -> None:
        self.events.append("throttled")

    def answered(self) -> None:
        self.events.append("success")


def test_every_attempt_is_paced_and_reports_throttling() -> None:
    # Given a throttle, a dropped connection, a 503, then success
    ctm = FakeCtm()
    ctm.script(
        "POST",
        REFRESH_PATH,
        Reply(429, ""),
        Reply(raises=requests.exceptions.ConnectionError("reset")),
        Reply(503, ""),
        Reply(200, key_object()),
    )
    pacer = RecordingPacer()
    # When the refresh is paced
    refresh(fake_client(ctm), pacer=pacer)
    # Then each attempt waited first; answers reported, the dropped connection not
    assert pacer.events == ["wait", "throttled", "wait", "wait", "success", "wait", "success"]


def test_the_answer_says_how_long_its_successful_attempt_took() -> None:
    # Given CTM failing once after 3 s, then answering after 1.25 s
    ctm = FakeCtm()
    ctm.script(
        "POST", REFRESH_PATH, Reply(503, "", takes=3.0), Reply(200, key_object(), takes=1.25)
    )
    # When the key is refreshed (after a back-off sleep between the two)
    response = refresh(fake_client(ctm))
    # Then ``elapsed`` is the successful attempt's, from sending to the body read
    assert response.elapsed == pytest.approx(1.25)


# TLS modes: asserted on what reaches the adapter, after requests merged the environment.


def test_tls_default_verifies_with_the_standard_store(no_ca_env: None) -> None:
    ctm = FakeCtm()
    fake_client(ctm).issue_token(far(ctm.runtime))
    assert ctm.sent[0].verify is True


def test_tls_default_honours_requests_ca_bundle(
    no_ca_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundle = tmp_path / "corp.pem"
    bundle.write_text(PEM)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    ctm = FakeCtm()
    fake_client(ctm).issue_token(far(ctm.runtime))
    assert ctm.sent[0].verify == str(bundle)


def test_tls_default_honours_ssl_cert_file(
    no_ca_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundle = tmp_path / "python.pem"
    bundle.write_text(PEM)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    ctm = FakeCtm()
    fake_client(ctm).issue_token(far(ctm.runtime))
    assert ctm.sent[0].verify == str(bundle)


def test_tls_with_ca_bundle_verifies_against_it_whatever_the_environment_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given the machine's CA overrides set, and a CA in the secret
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "other.pem"))
    ctm = FakeCtm()
    client = fake_client(ctm, json.dumps({"refresh_token": "rt", "ca_bundle": PEM}))
    # When a request is made
    client.issue_token(far(ctm.runtime))
    # Then it is verified against a file holding exactly the secret's PEM
    verify = ctm.sent[0].verify
    assert verify == client.transport.tls.ca_file
    assert Path(verify).read_text() == PEM
    # And closing the client removes that file
    client.close()
    assert not Path(verify).exists()


def test_tls_off_sends_verify_false_and_silences_only_ctms_warning(no_ca_env: None) -> None:
    ctm = FakeCtm()
    with warnings.catch_warnings():
        fake_client(ctm, verify_tls=False).issue_token(far(ctm.runtime))
        assert ctm.sent[0].verify is False
        filters = [f for f in warnings.filters if "ctm" in str(f[1])]
    assert filters, "a warning filter scoped to CTM's host is installed"


def test_a_missing_ca_bundle_file_is_a_tls_error() -> None:
    ctm = FakeCtm()
    missing = OSError("Could not find a suitable TLS CA certificate bundle, invalid path: /x.pem")
    ctm.always("POST", REFRESH_PATH, Reply(raises=missing))
    with pytest.raises(CtmTlsError) as caught:
        refresh(fake_client(ctm))
    assert caught.value.error_code == "TLS"


def test_a_failure_to_get_a_token_fails_the_call_without_sending_it() -> None:
    # Given a token endpoint whose certificate does not verify
    ctm = FakeCtm()
    ctm.always("POST", "/api/v1/auth/tokens", Reply(raises=requests.exceptions.SSLError("x")))
    # When a refresh is attempted
    with pytest.raises(CtmTlsError) as caught:
        refresh(fake_client(ctm))
    # Then the refresh itself was never sent
    assert caught.value.attempts == 0
    assert ctm.to("POST", REFRESH_PATH) == []


# --- OCI's conditions passed through by CCKM, whatever the status (docs/reference.md 4.4) ---

NOT_AUTHORIZED_OR_NOT_FOUND = (
    'OCI error: {"code":"NotAuthorizedOrNotFound","message":"Authorization failed or '
    'requested resource not found."}'
)
VAULT_BUSY = (
    'OCI error: {"code":"IncorrectState","message":"Vault must be in one of the following '
    'states: [ACTIVE]"}'
)


@pytest.mark.parametrize("status", [400, 404, 409, 429, 500, 503])
def test_not_authorized_or_not_found_is_permanent_whatever_the_status(status: int) -> None:
    assert kind(status, NOT_AUTHORIZED_OR_NOT_FOUND) is CtmPermanentError


@pytest.mark.parametrize("status", [400, 409, 500])
def test_a_busy_vault_is_transient_whatever_the_status(status: int) -> None:
    assert kind(status, VAULT_BUSY) is CtmTransientError


def test_oci_conditions_in_a_2xx_key_object_are_ignored() -> None:
    assert kind(200, NOT_AUTHORIZED_OR_NOT_FOUND + VAULT_BUSY) is None


@pytest.mark.parametrize("status", [404, 500, 409, 503])
def test_not_authorized_or_not_found_fails_at_once_and_is_not_taken_for_a_missing_key(
    status: int,
) -> None:
    # Given CCKM passing OCI's NotAuthorizedOrNotFound through, under any status
    ctm = FakeCtm()
    body = error_body("NCERRInternalServerError", NOT_AUTHORIZED_OR_NOT_FOUND, code=1)
    ctm.always("POST", REFRESH_PATH, Reply(status, body))
    # When the key is refreshed
    with pytest.raises(CtmPermanentError) as caught:
        refresh(fake_client(ctm))
    # Then it is a permanent failure (a lost policy must not read as keys gone), not retried
    assert not isinstance(caught.value, CtmNotFoundError)
    assert caught.value.error_code == "NotAuthorizedOrNotFound"
    assert caught.value.http_status == status
    assert not caught.value.transient
    assert len(ctm.to("POST", REFRESH_PATH)) == 1


def test_a_busy_vault_is_retried_until_it_is_not() -> None:
    ctm = FakeCtm()
    busy = Reply(409, error_body("NCERRConflict", VAULT_BUSY, code=9))
    ctm.script("POST", REFRESH_PATH, busy, busy, Reply(200, key_object()))

    response = refresh(fake_client(ctm))

    assert response.attempts == 3


def test_a_vault_busy_throughout_fails_transiently() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(409, error_body("NCERRConflict", VAULT_BUSY)))
    with pytest.raises(CtmTransientError) as caught:
        refresh(fake_client(ctm, max_attempts=2))
    assert caught.value.error_code == "NCERRConflict"
    assert caught.value.attempts == 2


def test_a_2xx_body_over_the_cap_is_a_bad_response() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object(padding="x" * (2 << 20))))
    with pytest.raises(CtmBadResponseError) as caught:
        refresh(fake_client(ctm))
    assert caught.value.error_code == "BAD_RESPONSE"
    assert caught.value.attempts == 1


def test_answers_are_asked_for_uncompressed() -> None:
    ctm = FakeCtm()
    ctm.always("POST", REFRESH_PATH, Reply(200, key_object()))
    refresh(fake_client(ctm))
    assert ctm.to("POST", REFRESH_PATH)[0].headers["Accept-Encoding"] == "identity"


@pytest.mark.parametrize("pool_size", [1, 8, 64])
def test_the_pool_keeps_as_many_connections_to_ctm_as_calls_in_flight(pool_size: int) -> None:
    transport = Transport(pool_size=pool_size)
    adapter = transport.session.get_adapter("https://ctm.example.com")
    assert adapter._pool_maxsize == pool_size  # type: ignore[attr-defined]
    pool = adapter.poolmanager.connection_from_url("https://ctm.example.com")  # type: ignore[attr-defined]
    assert pool.pool.maxsize == pool_size
