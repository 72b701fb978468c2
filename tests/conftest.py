"""Suite-wide settings. Fixtures that start the emulators live in tests/fixtures/."""

from __future__ import annotations

import os

import pytest

from cckm_refresh.ctm.errors import forget_secrets

pytest_plugins = ["tests.fixtures.ctm", "tests.fixtures.aws"]

# Never reach a real AWS account from the tests, whatever the machine has configured.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "POWERTOOLS_TRACE_DISABLED": "1",
        "POWERTOOLS_METRICS_NAMESPACE": "CckmOciRefreshTest",
        "POWERTOOLS_SERVICE_NAME": "cckm-oci-refresh-test",
    }
)
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture
def no_ca_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear the machine's CA overrides (Lambda sets none) for tests that check TLS behaviour."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _forget_ctm_secrets() -> None:
    """Each test starts with no registered secrets (a Lambda process only ever has its own)."""
    forget_secrets()
