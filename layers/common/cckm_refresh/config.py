"""Configuration is data: environment variables read and validated once, at cold start.

A missing required variable or a malformed value raises ConfigError naming the variable;
the handler modules log it as one line and fail the cold start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """One environment variable is missing or malformed; the message names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"configuration error: {variable} {problem}")
        self.variable = variable


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(name, "is required but not set")
    return value


def _optional(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


N = TypeVar("N", int, float)


def _number(env: Mapping[str, str], name: str, default: N, low: N, high: N) -> N:
    """An integer or a number (as ``default`` is) between ``low`` and ``high``."""
    kind = type(default)
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        article = "an integer" if kind is int else "a number"
        raise ConfigError(name, f"must be {article}, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"true", "1", "yes"}:
        return True
    if raw in {"false", "0", "no"}:
        return False
    raise ConfigError(name, f"must be true or false, got {raw[:40]!r}")


def _https_url(env: Mapping[str, str], name: str) -> str:
    value = _required(env, name).rstrip("/")
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(name, "must be an https:// URL such as https://ctm.example.com")
    if parts.path.rstrip("/").endswith("/api") or "/api/" in parts.path:
        raise ConfigError(name, "must not include the /api suffix")
    if parts.query or parts.fragment or parts.username:
        raise ConfigError(name, "must be a plain https://host[:port] address")
    return value


def _fifo_queue_url(env: Mapping[str, str], name: str) -> str | None:
    value = _optional(env, name)
    if value is not None and not value.rstrip("/").endswith(".fifo"):
        raise ConfigError(name, "must be the URL of an SQS FIFO queue (its name ends in .fifo)")
    return value


@dataclass(frozen=True)
class RefreshSettings:
    """Everything the refresh function is configured with (docs/reference.md 2)."""

    ctm_base_url: str
    ctm_secret_id: str
    results_table: str
    work_queue_url: str | None = None
    dead_letter_queue_url: str | None = None
    tenancy_queue_url: str | None = None
    refresh_concurrency: int = 64
    tenancy_rate_limit: float = 4.0
    ctm_timeout_seconds: float = 20.0
    ctm_max_attempts: int = 4
    ctm_verify_tls: bool = True
    max_receive_count: int = 5
    fanout_chunk_size: int = 100
    result_retention_days: int = 90
    # Every CTM call, retries included, ends this long before the invocation does, so its
    # outcome is always recorded (the ``5 s`` of the margin).
    recording_reserve_seconds: ClassVar[float] = 5.0

    @property
    def deadline_margin_seconds(self) -> float:
        """No refresh starts when less than this remains (docs/reference.md 4.3)."""
        return 2 * self.ctm_timeout_seconds + self.recording_reserve_seconds

    @property
    def stuck_after_seconds(self) -> int:
        """A run without progress for longer than this is stuck: longer than its messages'
        deliveries can take (each at most a visibility timeout, 30 min, or a retry delay)."""
        return self.max_receive_count * 1800

    def check_time_for_one_call(self, invocation_seconds: float) -> None:
        """Refuse a function timeout that leaves no time for one CTM call after the margin:
        every invocation would hand its work on untouched (docs/reference.md 4.3)."""
        needed = self.deadline_margin_seconds + self.ctm_timeout_seconds
        if invocation_seconds < needed:
            raise ConfigError(
                "CTM_TIMEOUT_SECONDS",
                f"({self.ctm_timeout_seconds:g} s) leaves no time for one CTM call: an "
                f"invocation of {invocation_seconds:.0f} s needs more than 3 x "
                f"CTM_TIMEOUT_SECONDS + 5 s = {needed:g} s (the margin of 2 x "
                "CTM_TIMEOUT_SECONDS + 5 s, then one call); raise the function's Timeout "
                "or lower CTM_TIMEOUT_SECONDS",
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RefreshSettings:
        env = os.environ if env is None else env
        return cls(
            ctm_base_url=_https_url(env, "CTM_BASE_URL"),
            ctm_secret_id=_required(env, "CTM_SECRET_ID"),
            results_table=_required(env, "RESULTS_TABLE"),
            work_queue_url=_optional(env, "WORK_QUEUE_URL"),
            dead_letter_queue_url=_optional(env, "DEAD_LETTER_QUEUE_URL"),
            tenancy_queue_url=_fifo_queue_url(env, "TENANCY_QUEUE_URL"),
            refresh_concurrency=_number(env, "REFRESH_CONCURRENCY", 64, 1, 256),
            tenancy_rate_limit=_number(env, "TENANCY_RATE_LIMIT", 4.0, 0.1, 100.0),
            ctm_timeout_seconds=_number(env, "CTM_TIMEOUT_SECONDS", 20.0, 1.0, 300.0),
            ctm_max_attempts=_number(env, "CTM_MAX_ATTEMPTS", 4, 1, 10),
            ctm_verify_tls=_bool(env, "CTM_VERIFY_TLS", True),
            max_receive_count=_number(env, "MAX_RECEIVE_COUNT", 5, 1, 1000),
            fanout_chunk_size=_number(env, "FANOUT_CHUNK_SIZE", 100, 1, 1000),
            result_retention_days=_number(env, "RESULT_RETENTION_DAYS", 90, 1, 3650),
        )


@dataclass(frozen=True)
class NotifySettings:
    """Everything the notify function is configured with (docs/reference.md 2)."""

    results_table: str
    topic_arn: str
    webhook_secret_id: str | None = None
    result_retention_days: int = 90

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NotifySettings:
        env = os.environ if env is None else env
        topic_arn = _required(env, "TOPIC_ARN")
        if not topic_arn.startswith("arn:"):
            raise ConfigError("TOPIC_ARN", "must be an SNS topic ARN")
        return cls(
            results_table=_required(env, "RESULTS_TABLE"),
            topic_arn=topic_arn,
            webhook_secret_id=_optional(env, "WEBHOOK_SECRET_ID"),
            result_retention_days=_number(env, "RESULT_RETENTION_DAYS", 90, 1, 3650),
        )
