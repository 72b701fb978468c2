"""``cckm-refresh doctor``'s verdicts, from what was seen to PASS, WARN, FAIL or SKIP, and its
arguments; no CTM, no AWS (tests/integration/test_doctor.py runs it against the emulators)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cckm_refresh.cli import EXIT_ERROR, main
from cckm_refresh.cli.doctor import (
    FUNCTION_TIMEOUT_SECONDS,
    Finding,
    Verdict,
    jwt_finding,
    order_finding,
    pages_finding,
    refresh_token_finding,
    secret_finding,
    selector_finding,
    summary,
    timeout_finding,
)
from cckm_refresh.config import RefreshSettings
from cckm_refresh.ctm.auth import LoginInfo
from cckm_refresh.ctm.client import KeyPage
from cckm_refresh.ctm.credentials import CtmCredentials
from devkit.template import load_template

PASS, WARN, FAIL, SKIP = Verdict.PASS, Verdict.WARN, Verdict.FAIL, Verdict.SKIP
CONFIGURED = {"CTM_BASE_URL": "https://ctm.invalid", "CTM_SECRET_ID": "ctm-credentials"}


def password_login(expires_in: float | None) -> LoginInfo:
    return LoginInfo("password", "password", 300.0, 300.0, expires_in)


def key(n: int, created: str | None = None) -> dict[str, Any]:
    created = created or f"2026-01-01T00:00:{n:02d}Z"
    return {"id": f"00000000-0000-4000-8000-{n:012d}", "createdAt": created, "oci_params": {}}


def page(*numbers: int, sort: str | None = "createdAt,id", **kwargs: Any) -> KeyPage:
    return KeyPage(tuple(key(n) for n in numbers), 0, None, sort, **kwargs)


# --- how a check is shown ----------------------------------------------------------------------


def test_a_check_is_one_line_and_its_json_has_the_same_parts() -> None:
    finding = Finding(FAIL, "the certificate did not verify: put the CA in the secret")

    assert (
        finding.line("tls") == "FAIL  tls: the certificate did not verify: put the CA in the secret"
    )
    assert json.loads(json.dumps(finding.to_json("tls"))) == {
        "check": "tls",
        "verdict": "FAIL",
        "detail": "the certificate did not verify: put the CA in the secret",
    }


def test_the_summary_counts_each_verdict_and_only_a_fail_is_not_ready() -> None:
    warned = [PASS, WARN]
    failed = [*warned, FAIL, SKIP]

    assert summary(warned) == "doctor: 1 PASS, 1 WARN, 0 FAIL, 0 SKIP: ready"
    assert summary(failed) == "doctor: 1 PASS, 1 WARN, 1 FAIL, 1 SKIP: fix the FAIL lines first"


# --- the secret and the login ------------------------------------------------------------------


def test_a_bare_token_in_the_secret_is_a_warning() -> None:
    finding = secret_finding(CtmCredentials(token="a.b.c"))

    assert finding.verdict is WARN
    assert "store a refresh_token" in finding.detail


def test_a_ca_bundle_that_does_not_load_fails() -> None:
    broken = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"

    finding = secret_finding(CtmCredentials(refresh_token="rt", ca_bundle=broken))

    assert finding.verdict is FAIL
    assert "ca_bundle does not load as PEM" in finding.detail


def test_the_secret_is_described_by_names_never_values() -> None:
    credentials = CtmCredentials(username="u-value", password="p-value", domain="d-value")

    finding = secret_finding(credentials)

    assert finding == Finding(
        PASS, "signs in with its password, domain, no ca_bundle (the trust store verifies CTM)"
    )


@pytest.mark.parametrize(
    ("duration", "claims", "verdict", "words"),
    [
        (300.0, 300.0, PASS, "JWT lifetime duration 300 s, exp - iat 300 s"),
        (300.0, 299.0, PASS, "JWT lifetime duration 300 s, exp - iat 299 s"),
        (30.0, 30.0, WARN, "JWTs live 30 s"),
        (300.0, 3600.0, WARN, "CTM states two JWT lifetimes"),
        (None, None, WARN, "CTM states no JWT lifetime"),
        (None, 900.0, PASS, "duration nothing, exp - iat 900 s"),
    ],
)
def test_the_jwts_lifetime_as_ctm_states_it(
    duration: float | None, claims: float | None, verdict: Verdict, words: str
) -> None:
    finding = jwt_finding(LoginInfo("refresh_token", "refresh_token", duration, claims, None))

    assert finding.verdict is verdict
    assert words in finding.detail


@pytest.mark.parametrize(
    ("expires_in", "verdict", "words"),
    [
        (600.0, PASS, "as asked"),  # the unused limit, from now
        (599.0, PASS, "as asked"),  # a second gone by
        (3600.0, PASS, "as asked"),  # the lifetime, when CTM states that one
        (10.0, WARN, "60 times less than asked (600 s or 3600 s): it read "),
        (60.0, WARN, "as seconds"),
        (36000.0, WARN, "60 times more than asked (600 s or 3600 s): it read "),
        (216000.0, WARN, "as hours"),
        (1799.0, WARN, "not what was asked (600 s or 3600 s): it may not apply"),
        (None, WARN, "CTM states nothing, not what was asked"),
    ],
)
def test_a_password_logins_refresh_token_is_what_the_login_asked_for(
    expires_in: float | None, verdict: Verdict, words: str
) -> None:
    finding = refresh_token_finding(password_login(expires_in))

    assert finding.verdict is verdict
    assert words in finding.detail
    if verdict is WARN:
        assert "refresh_token_revoke_unused_in 10 and refresh_token_lifetime 60" in finding.detail
        assert finding.detail.endswith(
            "store a refresh_token in the secret instead (docs/reference.md 3)"
        )


def test_the_secrets_own_refresh_token_is_reported_and_a_bare_token_has_none() -> None:
    stored = refresh_token_finding(LoginInfo("refresh_token", "refresh_token", 300, 300, 1799))
    bare = refresh_token_finding(LoginInfo("token", None, None, None, None))

    assert stored == Finding(PASS, "the secret's; CTM states it ends in 1799 s unused")
    assert bare.verdict is SKIP


# --- the listing -------------------------------------------------------------------------------


def test_the_sort_asked_first_passes_and_a_fallback_is_named() -> None:
    honoured = order_finding(page(1))
    fell_back = order_finding(
        page(1, sort=None, fallbacks=("createdAt,id refused", "createdAt ignored"))
    )

    assert honoured == Finding(PASS, "sort=createdAt,id honoured, the function's first choice")
    assert fell_back.verdict is WARN
    assert fell_back.detail.startswith(
        "createdAt,id refused; createdAt ignored: the function lists in CTM's own order"
    )


def test_two_pages_in_order_pass_with_the_page_cap_measured() -> None:
    finding = pages_finding(page(1, 2), page(3, 4, 5, page_cap=3))

    assert finding == Finding(
        PASS,
        "2 then 3 keys; CTM answers at most 3 keys per list call; none repeated, in "
        "sort=createdAt,id order",
    )


@pytest.mark.parametrize(("first", "second"), [((1, 3), (2, 4)), ((1, 2), (2, 3))])
def test_pages_out_of_the_order_asked_fail(first: tuple[int, ...], second: tuple[int, ...]) -> None:
    finding = pages_finding(page(*first), page(*second))

    assert finding.verdict is FAIL
    assert "not in sort=createdAt,id order" in finding.detail


def test_keys_of_the_same_instant_are_in_order_when_sorted_by_created_at_alone() -> None:
    same = "2026-01-01T00:00:00Z"
    first = KeyPage((key(2, same), key(1, same)), 0, None, "createdAt")

    assert pages_finding(first, KeyPage((key(3, same),), 0, None, "createdAt")).verdict is PASS


def test_a_key_on_both_pages_of_ctms_own_order_is_a_warning() -> None:
    finding = pages_finding(page(2, 1, sort=None), page(1, 3, sort=None))

    assert finding.verdict is WARN
    assert "1 listed twice (CTM's order changed between calls)" in finding.detail


def test_a_listing_of_one_page_has_no_order_to_check() -> None:
    assert pages_finding(page(1, 2), None) == Finding(
        PASS, "2 key(s), one page: no order between pages"
    )


# --- the selector and the function's timeout ----------------------------------------------------


def test_the_selector_table_shows_each_tenancy_then_its_vaults_largest_first() -> None:
    counts = {("t1", "v1"): 2, ("t2", "v3"): 1, ("t2", "v2"): 4}

    finding = selector_finding(counts, "--all", mismatched=0)

    assert finding.detail == "7 key(s) match --all: in 2 tenancies, 3 vaults"
    assert finding.table == (
        ("TENANCY", "VAULT", "KEYS"),
        ("t2", "(all)", "5"),
        ("", "v2", "4"),
        ("", "v3", "1"),
        ("t1", "(all)", "2"),
        ("", "v1", "2"),
    )


def test_the_selector_table_is_bounded() -> None:
    counts = {(f"t{n:02d}", "v"): 1 for n in range(30)}

    finding = selector_finding(counts, "--all", mismatched=0)

    assert len(finding.table) == 1 + 20 + 1
    assert finding.table[-1] == ("...", "40 more rows", "")


def test_a_selector_no_key_matches_is_a_warning() -> None:
    finding = selector_finding({}, "--vault-name payments", mismatched=3)

    assert finding.verdict is WARN
    assert finding.detail.startswith("no key matches --vault-name payments: check the values")
    assert "CTM also listed 3 that do not match (skipped)" in finding.detail


def test_the_function_timeout_against_the_margin() -> None:
    settings = RefreshSettings("https://ctm.invalid", "s", "t", tenancy_rate_limit=4.0)

    enough = timeout_finding(settings, 300)
    too_short = timeout_finding(settings, 60)

    assert enough.verdict is PASS
    assert enough.detail == (
        "300 s, less a margin of 45 s (2 x CTM_TIMEOUT_SECONDS + 5 s): 255 s, about 1020 "
        "refreshes per tenancy at 4/s"
    )
    assert too_short.verdict is FAIL
    assert "leaves no time for one CTM call" in too_short.detail


def test_the_default_function_timeout_is_the_templates() -> None:
    function = load_template()["Resources"]["RefreshFunction"]["Properties"]

    assert function["Timeout"] == FUNCTION_TIMEOUT_SECONDS


# --- arguments: refused before any call, in one line ---------------------------------------------


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--canary", "../x"], "--canary must be a CCKM key id (UUID) or an OCI key OCID"),
        (["--all", "--tenancy", "prod"], "--all cannot be combined with selector filters"),
        (["--vault-name", "x" * 300], "invalid selector: selector.vault_name"),
        (["--function-timeout", "0"], "--function-timeout must be a positive number"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], error: str
) -> None:
    code = main(["doctor", *argv], CONFIGURED)

    captured = capsys.readouterr()
    assert code == EXIT_ERROR
    assert captured.out == ""
    assert captured.err.startswith(f"error: {error}")
    assert len(captured.err.splitlines()) == 1
