"""``cckm-refresh doctor`` against the CTM emulator (HTTPS) and the secret on moto.

``env`` (tests/integration/conftest.py) is the function's configuration: a password secret
with the emulator's CA in Secrets Manager. Each emulator mode gives the verdict it should.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from cckm_refresh.cli import EXIT_ERROR, main
from cckm_refresh.cli.common import EXIT_CHECK_FAILED, EXIT_OK

pytestmark = pytest.mark.integration

CHECKS = ["settings", "secret", "tls", "login", "refresh token", "list order", "list pages"]


def run(
    capsys: pytest.CaptureFixture[str], env: dict[str, str], *argv: str
) -> tuple[int, dict[str, str], str]:
    """doctor's exit code, each check's line by its name, and everything it printed."""
    code = main(["doctor", *argv], env)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    checks = {
        line.split(": ", 1)[0][6:]: line
        for line in lines
        if line[:4] in {"PASS", "WARN", "FAIL", "SKIP"}
    }
    assert "Traceback" not in captured.out + captured.err
    return code, checks, captured.out + captured.err


def verdicts(checks: dict[str, str]) -> dict[str, str]:
    return {name: line[:4] for name, line in checks.items()}


def enabled_key(ctm: Any, tenancy: str | None = None) -> dict[str, Any]:
    return next(
        k
        for k in ctm.keys
        if k["oci_params"]["lifecycle_state"] == "ENABLED" and tenancy in (None, k["tenancy"])
    )


# --- a healthy setup ---------------------------------------------------------------------------


def test_a_healthy_setup_passes_every_check_in_order_and_exits_0(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key = enabled_key(ctm_emulator)

    code, checks, out = run(capsys, env, "--all", "--canary", key["id"])

    assert code == EXIT_OK
    assert list(checks) == [*CHECKS, "selector", "function timeout", "canary"]
    assert set(verdicts(checks).values()) == {"PASS"}
    assert out.splitlines()[-1] == "doctor: 10 PASS, 0 WARN, 0 FAIL, 0 SKIP: ready"
    assert "duration 300 s, exp - iat 300 s" in checks["login"]
    assert "as asked" in checks["refresh token"]
    assert "sort=createdAt,id honoured" in checks["list order"]
    assert f"{len(ctm_emulator.keys)} key(s) match --all" in checks["selector"]
    assert ctm_emulator.refresh_count(key["id"]) == 1


def test_nothing_is_refreshed_without_a_canary(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code, checks, _ = run(capsys, env, "--tenancy", ctm_emulator.keys[0]["tenancy"])

    assert code == EXIT_OK
    assert "canary" not in checks
    assert ctm_emulator.refresh_count() == 0


def test_a_canary_named_by_its_ocid_is_found_then_refreshed(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key = enabled_key(ctm_emulator)

    code, checks, _ = run(capsys, env, "--canary", key["oci_params"]["key_id"])

    assert code == EXIT_OK
    assert checks["canary"].startswith(f"PASS  canary: {key['oci_params']['display_name']} (")
    assert "refreshed: ENABLED, version " in checks["canary"]
    assert ctm_emulator.refresh_count(key["id"]) == 1


def test_the_selector_counts_its_keys_by_tenancy_and_vault(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    tenancy = ctm_emulator.keys[0]["tenancy"]
    mine = [k for k in ctm_emulator.keys if k["tenancy"] == tenancy]
    vaults = {k["oci_params"]["vault_name"] for k in mine}

    code, checks, out = run(capsys, env, "--tenancy", tenancy)

    assert code == EXIT_OK
    assert (
        f"{len(mine)} key(s) match --tenancy {tenancy}: in 1 tenancy, {len(vaults)} vaults"
        in (checks["selector"])
    )
    table = out.split(checks["selector"], 1)[1].splitlines()[1 : 2 + len(vaults) + 1]
    assert table[1].split() == [tenancy, "(all)", str(len(mine))]
    assert {row.split()[0] for row in table[2:]} == vaults


def test_the_secret_may_come_from_a_file_and_no_table_is_needed(
    env: dict[str, str],
    ctm_emulator: Any,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a refresh token in a file, and CTM's CA trusted the way a machine can (the client
    # reads the process's environment for it, as requests does)
    secret = tmp_path / "ctm-secret.json"
    secret.write_text(json.dumps({"refresh_token": ctm_emulator.issue_refresh_token()}))
    for name in ("CTM_SECRET_ID", "RESULTS_TABLE"):
        del env[name]
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ctm_emulator.ca_file))

    code, checks, _ = run(capsys, env, "--secret-file", str(secret))

    assert code == EXIT_OK
    assert f"file {secret}" in checks["settings"]
    assert checks["secret"].startswith(
        "PASS  secret: signs in with its refresh_token, no ca_bundle"
    )
    assert "verified against the trust store of REQUESTS_CA_BUNDLE" in checks["tls"]
    assert "the secret's; CTM states it ends in" in checks["refresh token"]


def test_json_prints_one_object_per_check(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["doctor", "--json"], env)

    lines = capsys.readouterr().out.splitlines()
    checks = [json.loads(line) for line in lines]
    assert code == EXIT_OK
    assert [c["check"] for c in checks] == [*CHECKS, "function timeout"]
    assert {c["verdict"] for c in checks} == {"PASS"}


# --- what CTM does differently: WARN, and what the function does about it -----------------------


@pytest.mark.parametrize(
    ("faults", "line"),
    [
        (
            {"ignore_sort": True, "default_sort": "id"},
            "WARN  list order: createdAt,id ignored; createdAt ignored: the function lists in "
            "CTM's own order",
        ),
        (
            {"accepted_sort_fields": set()},
            "WARN  list order: createdAt,id refused; createdAt refused: the function lists in "
            "CTM's own order",
        ),
        (
            {"accepted_sort_fields": {"createdAt"}},
            "WARN  list order: createdAt,id refused: the function lists in sort=createdAt;",
        ),
        (
            {"max_page_size": 7},
            "PASS  list pages: 5 then 2 keys; CTM answers at most 7 keys per list call; none "
            "repeated, in sort=createdAt,id order",
        ),
        (
            {"max_page_size": 1},  # no page can be placed against the one before
            "FAIL  list order: LISTING_INCOMPLETE: CTM answers one key per list call",
        ),
        (
            {"token_lifetime": 30},
            "WARN  login: password accepted (password grant); JWTs live 30 s",
        ),
    ],
)
def test_each_way_ctm_may_behave_gives_its_verdict(
    env: dict[str, str],
    ctm_emulator: Any,
    capsys: pytest.CaptureFixture[str],
    faults: dict[str, Any],
    line: str,
) -> None:
    for name, value in faults.items():
        setattr(ctm_emulator.faults, name, value)

    code, checks, _ = run(capsys, env)

    assert checks[line[6:].partition(":")[0]].startswith(line)
    assert code == (EXIT_CHECK_FAILED if line.startswith("FAIL") else EXIT_OK)
    assert verdicts(checks)["list pages"] == ("SKIP" if line.startswith("FAIL") else "PASS")


def test_an_order_that_changes_between_calls_is_seen_on_two_pages_and_fails_the_whole_listing(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a CTM that ignores sort, with an order of its own that changes at every call
    ctm_emulator.faults.ignore_sort = True
    ctm_emulator.faults.unstable_order = True
    ctm_emulator.faults.max_page_size = 10

    code, checks, _ = run(capsys, env, "--all")

    assert code == EXIT_CHECK_FAILED
    assert checks["list pages"].startswith("WARN  list pages: 5 then 10 keys; CTM answers at")
    assert "listed twice (CTM's order changed between calls)" in checks["list pages"]
    assert checks["selector"].startswith("FAIL  selector: LISTING_INCOMPLETE: CTM lists keys")
    assert checks["selector"].endswith("name keys instead (docs/reference.md 4.3)")


def test_a_bare_token_is_a_warning_and_has_no_refresh_token(
    env: dict[str, str], ctm_emulator: Any, aws_stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    aws_stack.put_secret({"token": ctm_emulator.mint_jwt(), "ca_bundle": ctm_emulator.ca_pem})

    code, checks, _ = run(capsys, env)

    assert code == EXIT_OK
    assert checks["secret"].startswith("WARN  secret: ")
    assert "store a refresh_token" in checks["secret"]
    assert verdicts(checks)["refresh token"] == "SKIP"
    assert verdicts(checks)["list pages"] == "PASS"


def test_an_unverified_certificate_is_a_warning(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, checks, _ = run(capsys, env, "--insecure")

    assert code == EXIT_OK
    assert checks["tls"].startswith("WARN  tls: not verified (CTM_VERIFY_TLS=false)")


# --- failures: FAIL, what to do, and SKIP for what depends on them --------------------------------


def test_a_wrong_password_fails_the_login_and_skips_what_needs_it(
    env: dict[str, str], ctm_emulator: Any, aws_stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    aws_stack.put_secret(
        {"username": ctm_emulator.username, "password": "wrong", "ca_bundle": ctm_emulator.ca_pem}
    )

    code, checks, out = run(capsys, env, "--all", "--canary", enabled_key(ctm_emulator)["id"])

    assert code == EXIT_CHECK_FAILED
    assert checks["login"].startswith("FAIL  login: CTM refused the secret's password")
    assert "check the secret's credentials" in checks["login"]
    assert checks["refresh token"] == "SKIP  refresh token: needs login, which failed"
    assert checks["list pages"] == "SKIP  list pages: needs list order, which was skipped"
    assert verdicts(checks) == dict.fromkeys(checks, "SKIP") | {
        "settings": "PASS",
        "secret": "PASS",
        "tls": "PASS",
        "login": "FAIL",
        "function timeout": "PASS",
    }
    assert (
        out.splitlines()[-1] == "doctor: 4 PASS, 0 WARN, 1 FAIL, 5 SKIP: fix the FAIL lines first"
    )
    assert ctm_emulator.refresh_count() == 0


def test_a_certificate_that_does_not_verify_fails_tls_before_any_request_reaches_ctm(
    env: dict[str, str], ctm_emulator: Any, aws_stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    aws_stack.put_secret({"username": ctm_emulator.username, "password": ctm_emulator.password})

    code, checks, _ = run(capsys, env)

    assert code == EXIT_CHECK_FAILED
    assert checks["secret"].endswith("no ca_bundle (the trust store verifies CTM)")
    assert checks["tls"].startswith(
        "FAIL  tls: GET /api/v1/cckm/oci/keys: [SSL: CERTIFICATE_VERIFY"
    )
    assert "put the PEM of the CA that signed CTM's web certificate" in checks["tls"]
    assert verdicts(checks)["login"] == "SKIP"
    assert ctm_emulator.request_log == []


def test_not_authorized_or_not_found_on_the_canary_fails_naming_the_oci_policy(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key = enabled_key(ctm_emulator)
    ctm_emulator.faults.not_authorized_tenancies[key["tenancy"]] = 404

    code, checks, _ = run(capsys, env, "--canary", key["id"])

    assert code == EXIT_CHECK_FAILED
    assert checks["canary"] == (
        f"FAIL  canary: OCI answered NotAuthorizedOrNotFound for "
        f"{key['oci_params']['display_name']} ({key['tenancy']}): deleted in OCI, or the OCI "
        f"policy of tenancy {key['tenancy']} no longer lets CCKM read it: check that policy "
        "before treating the key as gone"
    )


def test_a_canary_ctm_does_not_know_fails(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, checks, _ = run(capsys, env, "--canary", "90671f17-28ff-4f93-86dc-ff08983469e7")

    assert code == EXIT_CHECK_FAILED
    assert checks["canary"].startswith("FAIL  canary: 90671f17-28ff-4f93-86dc-ff08983469e7: ")
    assert checks["canary"].endswith("name a key CCKM manages")


def test_a_timeout_that_leaves_no_time_for_a_call_fails(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given CTM_TIMEOUT_SECONDS 2: an invocation needs more than 3 x 2 + 5 = 11 s
    code, checks, _ = run(capsys, env, "--function-timeout", "10")

    assert code == EXIT_CHECK_FAILED
    assert checks["function timeout"].startswith("FAIL  function timeout: configuration error: ")
    assert "raise the function's Timeout" in checks["function timeout"]
    assert verdicts(checks)["list pages"] == "PASS"


def test_a_missing_setting_fails_and_skips_everything_else(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    del env["CTM_BASE_URL"]

    code, checks, _ = run(capsys, env)

    assert code == EXIT_CHECK_FAILED
    assert checks["settings"].startswith("FAIL  settings: configuration error: CTM_BASE_URL is")
    assert {v for name, v in verdicts(checks).items() if name != "settings"} == {"SKIP"}


def test_a_secret_that_does_not_exist_fails_naming_the_aws_error(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env["CTM_SECRET_ID"] += "-missing"

    code, checks, _ = run(capsys, env)

    assert code == EXIT_CHECK_FAILED
    assert "ResourceNotFoundException" in checks["secret"]
    assert checks["secret"].endswith(
        "check CTM_SECRET_ID and the right to read it, or pass --secret-file"
    )


def test_no_aws_credentials_fail_the_secret_saying_so(
    env: dict[str, str], no_aws_credentials: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, checks, _ = run(capsys, env)

    assert code == EXIT_CHECK_FAILED
    assert "(NoCredentialsError): set AWS credentials" in checks["secret"]
    assert verdicts(checks)["tls"] == "SKIP"


def test_an_unreachable_ctm_fails_tls_as_a_connection_error(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        env["CTM_BASE_URL"] = f"https://127.0.0.1:{probe.getsockname()[1]}"

    code, checks, _ = run(capsys, env)

    assert code == EXIT_CHECK_FAILED
    assert checks["tls"].startswith("FAIL  tls: CONNECTION: ")
    assert "check CTM_BASE_URL" in checks["tls"]


def test_bad_input_is_one_line_before_any_call(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["doctor", "--canary", "../../auth/tokens"], env)

    captured = capsys.readouterr()
    assert code == EXIT_ERROR
    assert captured.err == "error: --canary must be a CCKM key id (UUID) or an OCI key OCID\n"
    assert captured.out == ""
    assert ctm_emulator.request_log == []


# --- nothing secret is ever printed ------------------------------------------------------------


@pytest.mark.parametrize("signs_in_with", ["password", "wrong password", "refresh_token"])
def test_no_value_of_the_secret_and_no_token_is_printed(
    make_ctm_emulator: Any,
    aws_stack: Any,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    signs_in_with: str,
) -> None:
    # Given a CTM whose user and password are unique markers, and a secret holding them
    user, password, wrong = "marker-user-5d1f0c", "marker-password-9a7e42", "marker-wrong-3c8b"
    ctm = make_ctm_emulator(users={user: password})
    refresh_token = ctm.issue_refresh_token(user)
    secret = {
        "password": {"username": user, "password": password},
        "wrong password": {"username": user, "password": wrong},
        "refresh_token": {"refresh_token": refresh_token},
    }[signs_in_with]
    aws_stack.put_secret(secret | {"ca_bundle": ctm.ca_pem})
    env["CTM_BASE_URL"] = ctm.base_url
    refused = signs_in_with == "wrong password"

    for output in ([], ["--json"]):
        # When doctor runs every check, a canary included, as lines or as JSON
        canary = enabled_key(ctm)["id"]
        code, _, shown = run(capsys, env, "--all", "--canary", canary, *output)

        # Then nothing it printed holds a value of the secret, a refresh token or a JWT
        assert code == (EXIT_CHECK_FAILED if refused else EXIT_OK)
        for value in (user, password, wrong, refresh_token, "eyJ"):
            assert value not in shown
    assert (ctm.refresh_count() == 0) == refused
