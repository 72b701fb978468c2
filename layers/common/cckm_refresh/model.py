"""Domain types shared along the flow: request -> resolved keys -> outcomes -> store.

Everything here is a frozen dataclass: values, not objects with behaviour or I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    EVENT = "event"
    SQS = "sqs"
    CLI = "cli"


class Status(StrEnum):
    REFRESHED = "REFRESHED"
    NOT_FOUND = "NOT_FOUND"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    PENDING = "PENDING"

    @property
    def terminal(self) -> bool:
        return self is not Status.PENDING


TERMINAL_STATUSES = frozenset(s for s in Status if s.terminal)


@dataclass(frozen=True)
class KeyInfo:
    """What CCKM says about one OCI key (from the list call or a refresh response)."""

    key_id: str  # CCKM resource id (UUID, lower case)
    oci_key_id: str | None = None
    display_name: str | None = None
    tenancy: str | None = None
    region: str | None = None
    vault_name: str | None = None
    lifecycle_state: str | None = None
    current_key_version: str | None = None
    refreshed_at: str | None = None

    @classmethod
    def from_ctm(cls, resource: dict[str, Any]) -> KeyInfo:
        """Build from a CCKM key object (``GET``/``refresh``/list item)."""
        params = resource.get("oci_params") or {}
        return cls(
            key_id=str(resource["id"]).lower(),
            oci_key_id=params.get("key_id"),
            display_name=params.get("display_name"),
            tenancy=resource.get("tenancy"),
            region=resource.get("region"),
            vault_name=params.get("vault_name"),
            lifecycle_state=params.get("lifecycle_state"),
            current_key_version=params.get("current_key_version"),
            refreshed_at=resource.get("refreshed_at"),
        )

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> KeyInfo:
        """Build from one of our table items (a ``KEY`` item, or a run's ``RESULT`` item)."""
        return cls(
            key_id=str(item["key_id"]),
            oci_key_id=item.get("oci_key_id"),
            display_name=item.get("display_name"),
            tenancy=item.get("tenancy"),
            region=item.get("region"),
            vault_name=item.get("vault_name"),
            lifecycle_state=item.get("lifecycle_state"),
            current_key_version=item.get("current_key_version"),
            refreshed_at=item.get("last_refreshed_at") or item.get("refreshed_at"),
        )


@dataclass(frozen=True)
class RefreshOutcome:
    """The result of one key in one run (a ``RESULT`` item before it is stored)."""

    key_id: str  # CCKM id; for an OCID that matched nothing, the OCID itself
    status: Status
    attempts: int = 0
    duration_ms: int = 0
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    oci_key_id: str | None = None
    display_name: str | None = None
    tenancy: str | None = None
    region: str | None = None
    vault_name: str | None = None
    lifecycle_state: str | None = None
    current_key_version: str | None = None
    refreshed_at: str | None = None
    recorded_at: str | None = None  # when the outcome was known; orders results of one key


@dataclass(frozen=True)
class RunInfo:
    """Identity and metadata of a run (the ``RUN`` item's descriptive fields)."""

    run_id: str
    trigger: Trigger
    request_id: str | None = None
    reason: str | None = None
    dry_run: bool = False
