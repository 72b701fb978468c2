"""Configuration is read once and validated; a bad variable is named."""

from __future__ import annotations

import pytest

from cckm_refresh.config import ConfigError, NotifySettings, RefreshSettings

BASE = {
    "CTM_BASE_URL": "https://ctm.example.com",
    "CTM_SECRET_ID": "ctm-credentials",
    "RESULTS_TABLE": "results",
}


CONTRACT_DEFAULTS = {
    "refresh_concurrency": 64,
    "tenancy_rate_limit": 4.0,
    "ctm_timeout_seconds": 20.0,
    "ctm_max_attempts": 4,
    "ctm_verify_tls": True,
    "max_receive_count": 5,
    "fanout_chunk_size": 100,
    "result_retention_days": 90,
    "work_queue_url": None,
    "tenancy_queue_url": None,
    "deadline_margin_seconds": 45.0,
}


def test_defaults_follow_the_contract() -> None:
    settings = RefreshSettings.from_env(BASE)
    assert {name: getattr(settings, name) for name in CONTRACT_DEFAULTS} == CONTRACT_DEFAULTS
    assert settings.ctm_verify_tls is True  # a bool, not merely a value equal to True


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"CTM_BASE_URL": ""}, "CTM_BASE_URL"),
        ({"CTM_BASE_URL": "http://ctm.example.com"}, "CTM_BASE_URL"),
        ({"CTM_BASE_URL": "https://ctm.example.com/api"}, "CTM_BASE_URL"),
        ({"CTM_SECRET_ID": " "}, "CTM_SECRET_ID"),
        ({"RESULTS_TABLE": ""}, "RESULTS_TABLE"),
        ({"REFRESH_CONCURRENCY": "eight"}, "REFRESH_CONCURRENCY"),
        ({"REFRESH_CONCURRENCY": "0"}, "REFRESH_CONCURRENCY"),
        ({"REFRESH_CONCURRENCY": "257"}, "REFRESH_CONCURRENCY"),
        ({"TENANCY_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/1/work"}, "TENANCY_QUEUE_URL"),
        ({"TENANCY_RATE_LIMIT": "-1"}, "TENANCY_RATE_LIMIT"),
        ({"CTM_VERIFY_TLS": "maybe"}, "CTM_VERIFY_TLS"),
        ({"FANOUT_CHUNK_SIZE": "1001"}, "FANOUT_CHUNK_SIZE"),
    ],
)
def test_a_missing_or_malformed_variable_is_named(overrides: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RefreshSettings.from_env(BASE | overrides)
    assert caught.value.variable == variable
    assert variable in str(caught.value)


def test_verify_tls_false_is_an_explicit_choice() -> None:
    assert RefreshSettings.from_env(BASE | {"CTM_VERIFY_TLS": "false"}).ctm_verify_tls is False


def test_notify_requires_a_topic_arn() -> None:
    with pytest.raises(ConfigError, match="TOPIC_ARN"):
        NotifySettings.from_env({"RESULTS_TABLE": "t"})
    settings = NotifySettings.from_env(
        {"RESULTS_TABLE": "t", "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:topic"}
    )
    assert settings.webhook_secret_id is None
