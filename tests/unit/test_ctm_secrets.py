"""No password, refresh token or JWT ever appears in an exception, a repr or a log line."""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

import pytest
import requests

from cckm_refresh.ctm.client import CtmClient
from cckm_refresh.ctm.errors import (
    MAX_MESSAGE,
    MAX_REGISTERED_SECRETS,
    CtmError,
    CtmPermanentError,
    register_secret,
    scrub,
)
from cckm_refresh.engine import RefreshEngine, WorkItem
from cckm_refresh.model import RefreshOutcome
from cckm_refresh.ratelimit import TenancyRateLimiter
from cckm_refresh.runtime import Deadline
from tests.unit.ctm_fakes import (
    EPOCH,
    TOKEN_PATH,
    FakeCtm,
    Reply,
    ctm_runtime,
    error_body,
    fake_client,
    far,
    make_jwt,
    refresh,
)

PASSWORD = "Pa55-w0rd-S3cret"
REFRESH_TOKEN = "RefreshT0ken-S3cret"
STATIC_JWT = make_jwt(exp=EPOCH - 5, sub="static-S3cret")
REFRESH_PATH = "/api/v1/cckm/oci/keys/90671f17-28ff-4f93-86dc-ff08983469e7/refresh"


def everything_said(error: BaseException, *objects: object) -> str:
    """Every string an operator could see: message, repr, args, chained causes, traceback."""
    shown = [str(error), repr(error), repr(error.args)]
    shown += traceback.format_exception(type(error), error, error.__traceback__)
    shown += [repr(o) + str(o) for o in objects]
    return "\n".join(shown)


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)

    def collected() -> str:
        captured = capsys.readouterr()
        records = "\n".join(repr(record.__dict__) for record in caplog.records)  # with extras
        return caplog.text + records + captured.out + captured.err

    return collected


def secret_of(client: CtmClient) -> list[object]:
    return [client, client.tokens, client.transport, client.tokens._credentials.get()]


def test_a_refused_password_is_never_shown(logs) -> None:  # type: ignore[no-untyped-def]
    # Given CTM refusing the password, echoing nothing but its standard message
    ctm = FakeCtm()
    ctm.always(
        "POST",
        TOKEN_PATH,
        Reply(401, error_body("NCERRUnauthorizedAccess", "Wrong username or password.")),
    )
    client = fake_client(ctm, json.dumps({"username": "svc", "password": PASSWORD}))
    # When a refresh fails on it
    with pytest.raises(CtmError) as caught:
        refresh(client)
    # Then neither the exception, the objects nor the logs show the password
    assert_no_secret(everything_said(caught.value, *secret_of(client)) + logs(), PASSWORD)


def test_a_refresh_token_and_its_jwts_are_never_shown_through_retries_and_a_401(logs) -> None:  # type: ignore[no-untyped-def]
    # Given a JWT refused once, then CTM failing transiently until the attempts run out
    ctm = FakeCtm()
    ctm.script("POST", REFRESH_PATH, Reply(401, ""))
    ctm.always("POST", REFRESH_PATH, Reply(raises=requests.exceptions.ConnectionError("reset")))
    client = fake_client(ctm, REFRESH_TOKEN)
    with pytest.raises(CtmError) as caught:
        refresh(client)
    # Then nothing shows the refresh token or either JWT
    said = everything_said(caught.value, *secret_of(client)) + logs()
    assert_no_secret(said, REFRESH_TOKEN, *ctm.jwts_issued)


def test_a_jwt_echoed_in_ctms_error_message_is_redacted(logs) -> None:  # type: ignore[no-untyped-def]
    ctm = FakeCtm()

    def echo(sent) -> Reply:  # type: ignore[no-untyped-def]
        return Reply(
            400,
            error_body("NCERRBadRequest", f"bad header {sent.headers['Authorization']}"),
        )

    ctm.always("POST", REFRESH_PATH, echo)
    client = fake_client(ctm, REFRESH_TOKEN)
    with pytest.raises(CtmError) as caught:
        refresh(client)
    assert_no_secret(everything_said(caught.value) + logs(), *ctm.jwts_issued)


def test_an_expired_static_jwt_is_never_shown(logs) -> None:  # type: ignore[no-untyped-def]
    # Given CTM refusing the secret's own JWT, quoting it back
    ctm = FakeCtm()
    ctm.always(
        "POST",
        REFRESH_PATH,
        Reply(401, error_body("NCERRUnauthorizedAccess", f"Token {STATIC_JWT} is expired")),
    )
    client = fake_client(ctm, json.dumps({"token": STATIC_JWT}))
    with pytest.raises(CtmError) as caught:
        refresh(client)
    assert caught.value.error_code == "TOKEN_EXPIRED"
    assert_no_secret(everything_said(caught.value, *secret_of(client)) + logs(), STATIC_JWT)


def test_a_malformed_secret_is_never_shown(logs) -> None:  # type: ignore[no-untyped-def]
    ctm = FakeCtm()
    client = fake_client(ctm, '{"password": "' + PASSWORD + '", ')
    with pytest.raises(CtmError) as caught:
        client.issue_token(far(ctm_runtime()))
    assert_no_secret(everything_said(caught.value, client) + logs(), PASSWORD)


def quoting(secret: str, status: int = 401) -> Reply:
    """CTM's error answer quoting ``secret`` in both its codeDesc and its message."""
    return Reply(
        status,
        error_body(f"NCERRUnauthorizedAccess: bad credential {secret}", f"'{secret}' is wrong", 5),
    )


def refresh_run(client: CtmClient, count: int = 5) -> tuple[list[CtmError], list[RefreshOutcome]]:
    """Refresh ``count`` keys through the refresh engine; the errors and the outcomes."""
    errors: list[CtmError] = []

    def refresh_one(key_id: str, *_: object) -> Any:
        try:
            return refresh(client, key_id)
        except CtmError as error:
            errors.append(error)
            raise

    runtime = ctm_runtime()
    engine = RefreshEngine(refresh_one, TenancyRateLimiter(1000.0, runtime=runtime), concurrency=2)
    keys = [WorkItem(f"{n:08d}-28ff-4f93-86dc-ff08983469e7") for n in range(count)]
    within = Deadline.within(600.0, runtime)
    return errors, engine.run(keys, within, within).outcomes


@pytest.mark.parametrize("status", [400, 401, 403])
def test_a_password_ctm_quotes_in_its_error_is_scrubbed_from_errors_logs_and_outcomes(
    logs,  # type: ignore[no-untyped-def]
    status: int,
) -> None:
    # Given CTM refusing the password and quoting it in its codeDesc and message
    ctm = FakeCtm()
    ctm.always("POST", TOKEN_PATH, quoting(PASSWORD, status))
    client = fake_client(ctm, json.dumps({"username": "svc", "password": PASSWORD}))
    # When a run refreshes keys
    errors, outcomes = refresh_run(client)
    # Then the error says CTM refused it, without the password, and so do the logs and every
    # outcome the run records
    assert errors
    assert "[redacted]" in errors[0].message
    said = [everything_said(e, *secret_of(client)) for e in errors]
    said += [repr(o) for o in outcomes] + [logs()]
    assert_no_secret("\n".join(said), PASSWORD)
    assert {o.error_code for o in outcomes} <= {"NCERRUnauthorizedAccess", "[redacted]"}


def test_refresh_tokens_and_jwts_ctm_quotes_on_a_key_call_are_scrubbed(logs) -> None:  # type: ignore[no-untyped-def]
    # Given a password login that returned a refresh token, and CTM quoting it and the JWT
    # in a key call's error
    ctm = FakeCtm()
    session_token = "Sess10n-RefreshT0ken"

    def issue(sent):  # type: ignore[no-untyped-def]
        return Reply(200, {**ctm.issue(sent).body, "refresh_token": session_token})

    def echo(sent):  # type: ignore[no-untyped-def]
        jwt = sent.headers["Authorization"].removeprefix("Bearer ")
        # Cut the JWT so that it no longer looks like one: only the registry can spot it.
        return Reply(400, error_body("NCERRBadRequest", f"{session_token} {jwt[:-3]}"))

    ctm.always("POST", TOKEN_PATH, issue)
    ctm.always("POST", REFRESH_PATH, echo)
    client = fake_client(ctm, json.dumps({"username": "svc", "password": PASSWORD}))
    with pytest.raises(CtmError) as caught:
        refresh(client)
    jwt = ctm.jwts_issued[0]
    assert_no_secret(everything_said(caught.value) + logs(), session_token, jwt[:-3])


# --- the registry of secrets scrubbed from CtmError messages -----------------------------------


def test_a_registered_secret_is_scrubbed_from_every_ctm_error() -> None:
    # Given a registered password
    register_secret(PASSWORD)
    # When CTM's words quoting it become an error
    error = CtmPermanentError(f"CTM said: bad password {PASSWORD}!", error_code="HTTP_400")
    # Then neither the message, the args nor the repr show it
    assert error.message == "CTM said: bad password [redacted]!"
    assert_no_secret(everything_said(error), PASSWORD)


def test_a_secret_cut_by_the_message_limit_loses_its_visible_start_too() -> None:
    register_secret(REFRESH_TOKEN)
    cut = "x" * (MAX_MESSAGE - 8) + REFRESH_TOKEN[:8]

    assert scrub(cut) == "x" * (MAX_MESSAGE - 8) + "[redacted]"
    assert REFRESH_TOKEN[:8] not in CtmPermanentError(cut, error_code="HTTP_400").message


def test_values_too_short_to_be_told_from_words_are_not_registered() -> None:
    register_secret("abc")
    assert CtmPermanentError("abc", error_code="E").message == "abc"


def test_the_registry_keeps_the_newest_values_and_re_registering_renews_one() -> None:
    # Given the password registered first, then more JWTs than the registry holds
    register_secret(PASSWORD)
    for n in range(MAX_REGISTERED_SECRETS):
        register_secret(f"jwt-{n:04d}")
        register_secret(PASSWORD)  # the credentials cache registers it at every read
    # Then the password is still scrubbed, and the oldest JWT no longer is
    assert scrub(f"{PASSWORD} jwt-0000 jwt-{MAX_REGISTERED_SECRETS - 1:04d}") == (
        "[redacted] jwt-0000 [redacted]"
    )
