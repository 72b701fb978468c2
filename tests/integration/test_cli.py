"""The operator CLI against the CTM emulator (HTTPS) and the template's resources on moto.

``main(argv, env)`` runs in-process: ``env`` (tests/integration/conftest.py) carries the
function variables (CTM_BASE_URL, CTM_SECRET_ID, RESULTS_TABLE...), boto3 finds moto through
AWS_ENDPOINT_URL (the moto_server fixture) and the fake credentials of tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from cckm_refresh.cli import EXIT_ERROR, EXIT_FAILED_KEYS, EXIT_OK, main

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def keys_of(ctm: Any, count: int) -> list[dict[str, Any]]:
    return [k for k in ctm.keys if k["oci_params"]["lifecycle_state"] == "ENABLED"][:count]


def table_lines(out: str) -> list[str]:
    """The rows of the result table (header and summary excluded)."""
    return [line for line in out.splitlines()[1:] if line and not line.startswith("run ")]


def one_error_line(captured: Any) -> str:
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert lines[0].startswith("error: ")
    return str(lines[0])


# --- refresh ---------------------------------------------------------------------------------


def test_refresh_by_ids_prints_a_table_and_a_summary_and_exits_0(
    env: dict[str, str], ctm_emulator: Any, aws_stack: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = keys_of(ctm_emulator, 2)

    code = main(["refresh", first["id"], second["id"], "--request-id", "ops-1"], env)

    captured = capsys.readouterr()
    assert code == EXIT_OK
    assert captured.err == ""
    assert captured.out.splitlines()[0].split() == [
        "STATUS",
        "NAME",
        "KEY",
        "ID",
        "TENANCY",
        "VERSION",
        "ERROR",
    ]
    rows = table_lines(captured.out)
    assert len(rows) == 2
    for key in (first, second):
        assert any(key["oci_params"]["display_name"] in row for row in rows)
    assert "run ops-1: 2 keys: 2 refreshed" in captured.out
    run = aws_stack.table.get_item(Key={"pk": "RUN#ops-1", "sk": "RUN"})["Item"]
    assert (run["trigger"], run["status"], run["refreshed"]) == ("cli", "COMPLETED", 2)


def test_refresh_logs_nothing_on_stdout(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["refresh", keys_of(ctm_emulator, 1)[0]["id"]], env)

    assert '"level"' not in capsys.readouterr().out


def test_refresh_by_ocid_resolves_it_and_an_unknown_ocid_is_not_found(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys_of(ctm_emulator, 1)[0]
    unknown = "ocid1.key.oc1.iad.nosuchvault.nosuchkey"

    code = main(["refresh", key["oci_params"]["key_id"], unknown], env)

    rows = table_lines(capsys.readouterr().out)
    assert code == EXIT_OK
    assert any(row.startswith("REFRESHED") and key["id"] in row for row in rows)
    assert any(row.startswith("NOT_FOUND") and unknown in row for row in rows)
    assert ctm_emulator.refresh_count(key["id"]) == 1


def test_selector_flags_refresh_exactly_the_matching_keys(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    tenancy = ctm_emulator.keys[0]["tenancy"]
    matching = {
        k["id"]
        for k in ctm_emulator.keys
        if k["tenancy"] == tenancy and k["oci_params"]["lifecycle_state"] == "ENABLED"
    }

    code = main(["refresh", "--tenancy", tenancy, "--lifecycle-state", "ENABLED"], env)

    rows = table_lines(capsys.readouterr().out)
    assert code == EXIT_OK
    assert {row.split()[2] for row in rows} == matching
    assert ctm_emulator.refresh_count() == len(matching)


def test_a_dry_run_of_all_keys_records_them_skipped_and_refreshes_none(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["refresh", "--all", "--dry-run"], env)

    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert {row.split()[0] for row in table_lines(out)} == {"SKIPPED"}
    assert f"{len(ctm_emulator.keys)} keys: {len(ctm_emulator.keys)} skipped" in out
    assert ctm_emulator.refresh_count() == 0


def test_json_prints_one_object_per_key_and_nothing_else(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [k["id"] for k in keys_of(ctm_emulator, 3)]

    code = main(["refresh", *ids, "--json"], env)

    lines = capsys.readouterr().out.splitlines()
    results = [json.loads(line) for line in lines]
    assert code == EXIT_OK
    assert {r["key_id"] for r in results} == set(ids)
    assert {r["status"] for r in results} == {"REFRESHED"}


def test_a_failed_key_makes_the_exit_code_1(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ok, denied = (k["id"] for k in keys_of(ctm_emulator, 2))
    ctm_emulator.faults.fail_keys[denied] = 403

    code = main(["refresh", ok, denied], env)

    rows = table_lines(capsys.readouterr().out)
    assert code == EXIT_FAILED_KEYS
    assert any(row.startswith("FAILED") and denied in row for row in rows)
    assert any(row.startswith("REFRESHED") and ok in row for row in rows)


def test_a_rotation_shows_as_a_new_version_in_the_history(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key_id = keys_of(ctm_emulator, 1)[0]["id"]
    main(["refresh", key_id, "--request-id", "before"], env)
    new_version = ctm_emulator.rotate(key_id)
    main(["refresh", key_id, "--request-id", "after"], env)
    capsys.readouterr()

    code = main(["history", key_id], env)

    out = capsys.readouterr().out
    newest, oldest = out.splitlines()[2:4]
    assert code == EXIT_OK
    assert newest.split()[1:] == ["after", "REFRESHED", new_version.split(".")[-2], "yes"]
    assert oldest.split()[1:3] == ["before", "REFRESHED"]
    assert oldest.split()[3] != newest.split()[3]


# --- results and history ---------------------------------------------------------------------


def test_results_shows_the_run_and_each_of_its_keys(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [k["id"] for k in keys_of(ctm_emulator, 3)]
    main(["refresh", *ids, "--request-id", "nightly-7"], env)
    capsys.readouterr()

    code = main(["results", "nightly-7"], env)

    out = capsys.readouterr().out
    assert code == EXIT_OK
    assert out.startswith("run nightly-7 (cli) COMPLETED: 3 requested")
    rows = out.splitlines()[2:]
    assert {row.split()[2] for row in rows} == set(ids)


def test_results_as_json(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key_id = keys_of(ctm_emulator, 1)[0]["id"]
    main(["refresh", key_id, "--request-id", "j1"], env)
    capsys.readouterr()

    code = main(["results", "j1", "--json"], env)

    document = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK
    assert document["run"]["status"] == "COMPLETED"
    assert [r["key_id"] for r in document["results"]] == [key_id]


def test_history_shows_the_latest_state_and_past_results_newest_first(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys_of(ctm_emulator, 1)[0]
    for run in ("h1", "h2"):
        main(["refresh", key["id"], "--request-id", run], env)
    capsys.readouterr()

    code = main(["history", key["id"]], env)

    lines = capsys.readouterr().out.splitlines()
    assert code == EXIT_OK
    assert lines[0].startswith(f"key {key['id']} {key['oci_params']['display_name']}")
    assert "last REFRESHED in run h2" in lines[0]
    assert [line.split()[1] for line in lines[2:]] == ["h2", "h1"]


def test_an_unknown_run_is_one_line(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["results", "no-such-run"], env)

    assert code == EXIT_ERROR
    assert "no run 'no-such-run'" in one_error_line(capsys.readouterr())


def test_a_key_without_history_is_one_line(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["history", "90671f17-28ff-4f93-86dc-ff08983469e7"], env)

    assert code == EXIT_ERROR
    assert "no history for key" in one_error_line(capsys.readouterr())


# --- expected failures: one line each --------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["refresh", "--all"],
        ["refresh", "90671f17-28ff-4f93-86dc-ff08983469e7"],
        ["results", "r1"],
        ["history", "90671f17-28ff-4f93-86dc-ff08983469e7"],
    ],
)
def test_no_aws_credentials_is_one_line(
    env: dict[str, str],
    no_aws_credentials: None,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    code = main(argv, env)

    assert code == EXIT_ERROR
    assert "no AWS credentials found" in one_error_line(capsys.readouterr())


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_ctm_unreachable_with_a_selector_is_one_line(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env["CTM_BASE_URL"] = f"https://127.0.0.1:{closed_port()}"

    code = main(["refresh", "--all"], env)

    assert code == EXIT_ERROR
    assert one_error_line(capsys.readouterr()).startswith("error: CTM CONNECTION:")


def test_ctm_unreachable_with_key_ids_records_them_and_says_why_in_one_line(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [k["id"] for k in keys_of(ctm_emulator, 2)]
    env["CTM_BASE_URL"] = f"https://127.0.0.1:{closed_port()}"

    code = main(["refresh", *ids], env)

    captured = capsys.readouterr()
    assert code == EXIT_FAILED_KEYS
    assert one_error_line(captured).startswith("error: every key failed: CTM CONNECTION:")
    # A shell run is its own last delivery: nothing would try them again, so they fail.
    assert {row.split()[0] for row in table_lines(captured.out)} == {"FAILED"}


@pytest.fixture
def secret_without_ca(env: dict[str, str], aws_stack: Any, ctm_emulator: Any) -> None:
    aws_stack.put_secret({"username": ctm_emulator.username, "password": ctm_emulator.password})


@pytest.mark.usefixtures("secret_without_ca")
def test_a_certificate_that_does_not_verify_with_a_selector_is_one_line(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a secret without ca_bundle and no CA override: the emulator's own CA is unknown
    code = main(["refresh", "--all"], env)

    assert code == EXIT_ERROR
    assert one_error_line(capsys.readouterr()).startswith("error: CTM TLS:")
    assert ctm_emulator.request_log == []


@pytest.mark.usefixtures("secret_without_ca")
def test_a_certificate_that_does_not_verify_with_key_ids_fails_them_in_one_line(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [k["id"] for k in keys_of(ctm_emulator, 3)]

    code = main(["refresh", *ids], env)

    captured = capsys.readouterr()
    assert code == EXIT_FAILED_KEYS
    assert one_error_line(captured).startswith("error: every key failed: CTM TLS:")
    assert {row.split()[0] for row in table_lines(captured.out)} == {"FAILED"}
    assert ctm_emulator.request_log == []


def test_a_hostile_key_id_is_one_line_and_recorded_nowhere(
    env: dict[str, str], aws_stack: Any, ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["refresh", "../../auth/tokens"], env)

    assert code == EXIT_ERROR
    assert "invalid request: keys[0]:" in one_error_line(capsys.readouterr())
    assert aws_stack.table.scan()["Items"] == []
    assert ctm_emulator.request_log == []


def test_a_missing_results_table_is_one_line(
    env: dict[str, str], ctm_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    del env["RESULTS_TABLE"]

    code = main(["refresh", keys_of(ctm_emulator, 1)[0]["id"]], env)

    assert code == EXIT_ERROR
    assert "RESULTS_TABLE is required" in one_error_line(capsys.readouterr())


# --- the module entry point, as a process --------------------------------------------------


def process_env(extra: dict[str, str]) -> dict[str, str]:
    return extra | {"PYTHONPATH": f"{ROOT / 'layers' / 'common'}{os.pathsep}{ROOT}"}


def test_python_m_cckm_refresh_runs_a_refresh(env: dict[str, str], ctm_emulator: Any) -> None:
    key = keys_of(ctm_emulator, 1)[0]

    done = subprocess.run(
        [sys.executable, "-m", "cckm_refresh", "refresh", key["id"], "--request-id", "proc"],
        cwd=ROOT,
        env=process_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == EXIT_OK, done.stderr
    assert done.stderr == ""
    assert "run proc: 1 keys: 1 refreshed" in done.stdout


def test_the_emulator_for_the_cli_serves_until_terminated() -> None:
    # Given the emulator started from the clone (it is not part of the CLI) on a free port
    process = subprocess.Popen(
        [sys.executable, "-m", "devkit.ctm_emulator", "--port", "0", "--keys", "5", "--json"],
        cwd=ROOT,
        env=process_env(dict(os.environ)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        connection = json.loads(process.stdout.readline())

        # When a client logs in with what it printed
        answer = requests.post(
            f"{connection['base_url']}/api/v1/auth/tokens",
            json={
                "grant_type": "password",
                "username": connection["username"],
                "password": connection["password"],
            },
            verify=connection["ca_file"],
            timeout=10,
        )
        assert answer.status_code == 200
        assert connection["keys"] == 5
    finally:
        # Then SIGTERM stops it cleanly
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
