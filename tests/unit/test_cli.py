"""The operator CLI without AWS or CTM: arguments, input errors, progress.

Every expected failure is exactly one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import io
from typing import Any

import pytest

from cckm_refresh.cli import EXIT_ERROR, main
from cckm_refresh.cli.refresh import Progress
from cckm_refresh.model import KeyInfo, RefreshOutcome, Status

UUID = "90671f17-28ff-4f93-86dc-ff08983469e7"
CONFIGURED = {
    "CTM_BASE_URL": "https://ctm.invalid",
    "CTM_SECRET_ID": "ctm-credentials",
    "RESULTS_TABLE": "results",
}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert lines[0].startswith("error: ")
    return lines[0]


def test_refresh_without_keys_or_a_selector_says_what_to_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["refresh"], CONFIGURED)

    assert code == EXIT_ERROR
    assert "name keys, or a selector" in one_error_line(capsys)


def test_all_cannot_be_combined_with_selector_filters(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["refresh", "--all", "--tenancy", "prod"], CONFIGURED)

    assert code == EXIT_ERROR
    assert "--all cannot be combined" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["refresh", "../../auth/tokens"], "keys[0]"),
        (["refresh", UUID, "ocid1.key.oc1.iad.abc/../../x"], "keys[1]"),
        (["refresh", UUID, "--request-id", "has spaces"], "request_id"),
        (["refresh", UUID, "--reason", "x" * 257], "reason"),
    ],
)
def test_bad_input_is_refused_naming_the_field_before_any_aws_or_ctm_call(
    capsys: pytest.CaptureFixture[str], argv: list[str], field: str
) -> None:
    # Given no AWS or CTM configuration at all: bad input must not need them
    code = main(argv, {})

    assert code == EXIT_ERROR
    assert one_error_line(capsys).startswith(f"error: invalid request: {field}:")


def test_a_missing_ctm_address_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    env = {k: v for k, v in CONFIGURED.items() if k != "CTM_BASE_URL"}

    code = main(["refresh", UUID], env)

    assert code == EXIT_ERROR
    assert "CTM_BASE_URL is required" in one_error_line(capsys)


def test_a_malformed_flag_value_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["refresh", UUID, "--concurrency", "many"], CONFIGURED)

    assert code == EXIT_ERROR
    assert "REFRESH_CONCURRENCY must be an integer" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["results", "history"])
def test_reading_the_table_without_results_table_names_it(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    code = main([command, "some-id"], {})

    assert code == EXIT_ERROR
    assert "RESULTS_TABLE is not set" in one_error_line(capsys)


def test_the_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"], {})

    out = capsys.readouterr().out
    for command in ("refresh", "results", "history"):
        assert command in out
    # The CTM emulator is a development tool of the clone (python -m devkit.ctm_emulator):
    # the installed package never reaches into devkit.
    assert "emulator" not in out


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def outcome(status: Status) -> RefreshOutcome:
    return RefreshOutcome(KeyInfo(UUID), status)


def test_progress_on_a_terminal_counts_outcomes_on_one_line() -> None:
    terminal = FakeTerminal()
    progress = Progress(terminal, enabled=True)

    for status in (Status.REFRESHED, Status.FAILED, Status.REFRESHED):
        progress(outcome(status))
    progress.close()

    assert terminal.getvalue().endswith("\r3 keys: 1 failed, 2 refreshed   \n")


@pytest.mark.parametrize(("stream", "enabled"), [(io.StringIO(), True), (FakeTerminal(), False)])
def test_progress_is_silent_off_a_terminal_or_when_disabled(stream: Any, enabled: bool) -> None:
    progress = Progress(stream, enabled=enabled)

    progress(outcome(Status.REFRESHED))
    progress.close()

    assert stream.getvalue() == ""
