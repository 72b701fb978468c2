"""The CTM credentials secret (docs/reference.md 3): parsing, choice of method, no disclosure."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest

from cckm_refresh.ctm.credentials import AuthMethod, CredentialsCache, CtmCredentials
from cckm_refresh.ctm.errors import CtmCredentialsError, CtmSecretUnavailableError, scrub
from tests.unit.ctm_fakes import SecretLoader, make_jwt

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_json_secret_with_every_field_prefers_the_refresh_token() -> None:
    # Given a secret holding all three ways to authenticate
    secret = json.dumps(
        {
            "refresh_token": "rt",
            "username": "u",
            "password": "p",
            "token": make_jwt(exp=1),
            "domain": "d",
            "auth_domain": "ad",
            "ca_bundle": PEM,
        }
    )
    # When it is parsed
    credentials = CtmCredentials.parse(secret)
    # Then the refresh token is the one way used, and every field is kept
    assert credentials.method is AuthMethod.REFRESH_TOKEN
    assert (credentials.domain, credentials.auth_domain) == ("d", "ad")
    assert credentials.ca_bundle == PEM.strip()


def test_username_and_password_come_before_a_token() -> None:
    credentials = CtmCredentials.parse(
        json.dumps({"username": "u", "password": "p", "token": make_jwt()})
    )
    assert credentials.method is AuthMethod.PASSWORD


def test_a_token_alone_is_a_static_token() -> None:
    assert CtmCredentials.parse(json.dumps({"token": make_jwt()})).method is AuthMethod.STATIC_TOKEN


def test_bare_string_with_three_base64url_parts_is_a_jwt() -> None:
    jwt = make_jwt(exp=10)
    credentials = CtmCredentials.parse(f"  {jwt}\n")
    assert credentials.method is AuthMethod.STATIC_TOKEN
    assert credentials.token == jwt


@pytest.mark.parametrize(
    "bare", ["UmOsCNMfWmlfV2xyZXR0", "a.b", "two.parts_only", "a.b.c.d", "rt-with-dash_underscore"]
)
def test_any_other_bare_string_is_a_refresh_token(bare: str) -> None:
    credentials = CtmCredentials.parse(bare)
    assert credentials.method is AuthMethod.REFRESH_TOKEN
    assert credentials.refresh_token == bare


def test_empty_strings_count_as_absent() -> None:
    credentials = CtmCredentials.parse(
        json.dumps({"refresh_token": "", "username": "u", "password": "p"})
    )
    assert credentials.method is AuthMethod.PASSWORD


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("{not json", "not valid JSON"),
        ('["rt"]', "not a JSON object"),
        ("{}", "holds no refresh_token"),
        ('{"username": "u"}', "password is missing"),
        ('{"password": "p"}', "username is missing"),
        ('{"refresh_token": 42}', "refresh_token must be a string"),
        ('{"token": "not-a-jwt"}', "token is not a JWT"),
        ('{"refresh_token": "rt", "ca_bundle": "nope"}', "ca_bundle is not a PEM"),
        ('{"refresh_token": "rt\\nx"}', "control characters"),
        ("has space", "whitespace"),
    ],
)
def test_unusable_secrets_are_rejected_naming_the_problem(secret: str, problem: str) -> None:
    with pytest.raises(CtmCredentialsError, match=problem) as caught:
        CtmCredentials.parse(secret)
    assert caught.value.error_code == "UNAUTHORIZED"


def test_malformed_json_error_neither_quotes_nor_chains_the_secret() -> None:
    with pytest.raises(CtmCredentialsError) as caught:
        CtmCredentials.parse('{"password": "hunter2-secret",')
    assert "hunter2-secret" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_repr_names_the_method_but_no_value() -> None:
    credentials = CtmCredentials.parse(
        json.dumps({"username": "svc-user", "password": "pa55-word", "domain": "dom-x"})
    )
    shown = repr(credentials) + str(credentials)
    assert "password" in shown
    for value in ("svc-user", "pa55-word", "dom-x"):
        assert value not in shown


def test_cache_reparses_only_when_the_secret_changes() -> None:
    # Given a cache over a loader
    loader = SecretLoader('{"refresh_token": "one"}')
    cache = CredentialsCache(loader)
    first = cache.get()
    # When the loader returns the same string, the same parsed object comes back
    assert cache.get() is first
    # And when the secret changes, the new one is parsed
    loader.value = '{"refresh_token": "two"}'
    assert cache.get(force=True).refresh_token == "two"
    assert loader.calls == [False, False, True]


def test_a_passing_loader_failure_is_transient_and_says_nothing_of_its_text() -> None:
    def failing(force: bool) -> str:
        raise RuntimeError("boom: contains whatever the loader put in it")

    with pytest.raises(CtmSecretUnavailableError, match=r"could not load.*RuntimeError") as caught:
        CredentialsCache(failing).get()
    assert caught.value.transient
    assert "whatever" not in str(caught.value)


def test_a_secret_we_may_not_read_is_a_permanent_credentials_error() -> None:
    class AccessDenied(Exception):
        response: ClassVar[dict[str, Any]] = {"Error": {"Code": "AccessDeniedException"}}

    def failing(force: bool) -> str:
        raise AccessDenied("User: arn:aws:iam::123:role/x is not authorized")

    with pytest.raises(CtmCredentialsError, match="AccessDeniedException") as caught:
        CredentialsCache(failing).get()
    assert not caught.value.transient
    assert "arn:aws" not in str(caught.value)


def test_no_aws_credentials_is_a_permanent_credentials_error() -> None:
    class NoCredentialsError(Exception):
        pass

    def failing(force: bool) -> str:
        raise NoCredentialsError("Unable to locate credentials")

    with pytest.raises(CtmCredentialsError, match="NoCredentialsError") as caught:
        CredentialsCache(failing).get()
    assert not caught.value.transient


def test_reading_the_secret_registers_its_credentials_for_scrubbing() -> None:
    # Given a secret with every credential (and a domain, which is a name, not a credential)
    token = make_jwt(exp=1)
    secret = {
        "refresh_token": "rt-value",
        "username": "svc-user",
        "password": "pa55-word",
        "token": token,
        "domain": "tenant-domain",
    }
    # When the cache reads it
    CredentialsCache(SecretLoader(json.dumps(secret))).get()
    # Then CTM's words quoting any credential lose it
    said = scrub(f"rt-value svc-user pa55-word {token} tenant-domain")
    assert said == "[redacted] [redacted] [redacted] [redacted] tenant-domain"
