"""Fixtures shared by the integration tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.refresh_world import RefreshWorld


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
