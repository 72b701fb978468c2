"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.integration.refresh_world import CTM_TIMEOUT_SECONDS, RefreshWorld


@pytest.fixture
def world(aws_stack: Any, ctm_emulator: Any, no_ca_env: None) -> RefreshWorld:
    """The real refresh handler's world: moto stack, CTM emulator, a password secret with
    the emulator's CA, and no machine CA overrides (Lambda sets none)."""
    aws_stack.put_secret(
        {
            "username": ctm_emulator.username,
            "password": ctm_emulator.password,
            "ca_bundle": ctm_emulator.ca_pem,
        }
    )
    return RefreshWorld(aws_stack, ctm_emulator)


@pytest.fixture
def env(aws_stack: Any, ctm_emulator: Any, no_ca_env: None) -> dict[str, str]:
    """The operator CLI's environment: the function's variables for the moto stack and the CTM
    emulator (a password secret with its CA). A shell run is a new process: no secret (or
    client) cached by an earlier test."""
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    aws_stack.put_secret(
        {
            "username": ctm_emulator.username,
            "password": ctm_emulator.password,
            "ca_bundle": ctm_emulator.ca_pem,
        }
    )
    return dict(os.environ) | {
        "CTM_BASE_URL": ctm_emulator.base_url,
        "CTM_SECRET_ID": aws_stack.secret_id,
        "RESULTS_TABLE": aws_stack.table_name,
        "TENANCY_RATE_LIMIT": "50",
        "CTM_TIMEOUT_SECONDS": CTM_TIMEOUT_SECONDS,  # long enough for a busy machine
        "CTM_MAX_ATTEMPTS": "2",
    }


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata lookups
    # boto3's default session caches the credentials it found for earlier tests.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
