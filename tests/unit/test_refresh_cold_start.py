"""The refresh function's cold start: configuration read once, a bad variable is one line."""

from __future__ import annotations

import pytest

from cckm_refresh.config import ConfigError
from devkit.lambda_runtime import load_handler

GOOD = {
    "CTM_BASE_URL": "https://ctm.example.com",
    "CTM_SECRET_ID": "ctm-credentials",
    "RESULTS_TABLE": "results",
}


def test_a_missing_variable_fails_the_import_with_one_line_naming_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CTM_BASE_URL", raising=False)
    with pytest.raises(ConfigError):
        load_handler("refresh", {k: v for k, v in GOOD.items() if k != "CTM_BASE_URL"})
    [line] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "CTM_BASE_URL" in line.message
    assert "\n" not in line.message


def test_turning_tls_verification_off_is_warned_at_every_cold_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for _ in range(2):
        load_handler("refresh", GOOD | {"CTM_VERIFY_TLS": "false"})
    warnings = [r for r in caplog.records if "NOT verified" in r.message]
    assert [w.levelname for w in warnings] == ["WARNING", "WARNING"]


def test_a_cold_start_makes_no_network_call(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cold start must not open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    module = load_handler("refresh", GOOD)
    assert module.function.settings.ctm_base_url == "https://ctm.example.com"
