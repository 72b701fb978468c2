"""Fixtures of the resilience suite: a fresh stack with a short redelivery cycle, an emulator
whose user has a unique password, and the captured logs every scenario checks for secrets."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devkit.aws_local import LocalAwsStack
from devkit.ctm_emulator import CtmEmulator
from devkit.moto_server import MotoServer
from tests.integration.refresh_world import RefreshWorld
from tests.resilience.dynamodb_faults import DynamoDbFaults
from tests.resilience.lambda_kills import KillSwitch
from tests.resilience.promises import CapturedLogs, capturing_logs
from tests.resilience.scenario import Scenario

# Three deliveries before the dead-letter queue (the template allows 2 to 100, default 5):
# the same last-delivery rule, in fewer rounds.
MAX_RECEIVE_COUNT = 3
EMULATOR_SEED = 7
USERNAME = "svc-key-refresh"

MakeScenario = Callable[..., Scenario]


@pytest.fixture
def resilience_stack(moto_server: MotoServer) -> LocalAwsStack:
    return LocalAwsStack.create(
        moto_server.endpoint_url,
        prefix=f"r{uuid.uuid4().hex[:12]}",
        max_receive_count=MAX_RECEIVE_COUNT,
    )


@pytest.fixture
def logs(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Iterator[CapturedLogs]:
    with capturing_logs(capsys, caplog) as captured:
        yield captured


@pytest.fixture
def make_scenario(
    make_ctm_emulator: Callable[..., CtmEmulator],
    resilience_stack: LocalAwsStack,
    logs: CapturedLogs,
    no_ca_env: None,
) -> MakeScenario:
    """``make_scenario(auth="refresh_token" | "password", **emulator_kwargs)``."""

    def make(auth: str = "refresh_token", **emulator_kwargs: Any) -> Scenario:
        password = f"pw-{uuid.uuid4().hex}"
        emulator_kwargs.setdefault("seed", EMULATOR_SEED)
        ctm = make_ctm_emulator(users={USERNAME: password}, **emulator_kwargs)
        refresh_token = ctm.issue_refresh_token()
        secret: dict[str, str] = {"ca_bundle": ctm.ca_pem}
        if auth == "refresh_token":
            secret["refresh_token"] = refresh_token
        else:
            secret |= {"username": USERNAME, "password": password}
        resilience_stack.put_secret(secret)
        return Scenario(RefreshWorld(resilience_stack, ctm), logs, (password, refresh_token))

    return make


@pytest.fixture
def scenario(make_scenario: MakeScenario) -> Scenario:
    """30 keys over 3 tenancies, a refresh-token secret, a healthy CTM to begin with."""
    return make_scenario()


@pytest.fixture
def dynamodb_faults(monkeypatch: pytest.MonkeyPatch) -> DynamoDbFaults:
    """Hooks in every DynamoDB client the handler creates during the test."""
    faults = DynamoDbFaults()
    faults.install(monkeypatch)
    return faults


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> KillSwitch:
    """Kill points in the AWS clients of every container the test starts (see lambda_kills)."""
    switch = KillSwitch()
    switch.install(monkeypatch)
    return switch
