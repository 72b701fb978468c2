"""Domain types shared along the flow: request -> resolved keys -> outcomes -> store.

Everything here is a frozen dataclass: values, not objects with behaviour or I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    EVENT = "event"
    SQS = "sqs"
    CLI = "cli"


class RunStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"


class Status(StrEnum):
    REFRESHED = "REFRESHED"
    NOT_FOUND = "NOT_FOUND"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    PENDING = "PENDING"


class MalformedKeyObjectError(ValueError):
    """CTM's answer is not a CCKM key object (the client reports it as ``BAD_RESPONSE``)."""


def _text(fields: Mapping[str, Any], name: str, where: str = "") -> str | None:
    """``fields[name]`` when it is a string, None when absent or null; otherwise malformed."""
    value = fields.get(name)
    if value is None or isinstance(value, str):
        return value
    raise MalformedKeyObjectError(f"the key object's {where}{name} is not a string")


# Where a key lives: what ``location`` keeps and ``filled_from`` completes.
LOCATION_FIELDS = ("oci_key_id", "display_name", "tenancy", "region", "vault_name")


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
    def from_ctm(cls, resource: Mapping[str, Any]) -> KeyInfo:
        """Build from a CCKM key object (``GET``/``refresh``/list item), or raise
        ``MalformedKeyObjectError`` (a ValueError) when it is not one."""
        if not isinstance(resource, Mapping):
            raise MalformedKeyObjectError("the key object is not a JSON object")
        key_id = resource.get("id")
        if not isinstance(key_id, str) or not key_id.strip():
            raise MalformedKeyObjectError("the key object has no string id")
        params = resource.get("oci_params")
        if params is None:
            params = {}
        elif not isinstance(params, Mapping):
            raise MalformedKeyObjectError("the key object's oci_params is not an object")
        return cls(
            key_id=key_id.lower(),
            oci_key_id=_text(params, "key_id", "oci_params."),
            display_name=_text(params, "display_name", "oci_params."),
            tenancy=_text(resource, "tenancy"),
            region=_text(resource, "region"),
            vault_name=_text(params, "vault_name", "oci_params."),
            lifecycle_state=_text(params, "lifecycle_state", "oci_params."),
            current_key_version=_text(params, "current_key_version", "oci_params."),
            refreshed_at=_text(resource, "refreshed_at"),
        )

    def location(self) -> KeyInfo:
        """Where the key lives, without what only a refresh tells (state, version, time)."""
        return replace(self, lifecycle_state=None, current_key_version=None, refreshed_at=None)

    def filled_from(self, other: KeyInfo | None) -> KeyInfo:
        """This key, with where it lives taken from ``other`` where this one does not say."""
        if other is None:
            return self
        return replace(
            self, **{name: getattr(self, name) or getattr(other, name) for name in LOCATION_FIELDS}
        )

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> KeyInfo:
        """Build from one of our table items (a ``KEY`` item, or a run's ``RESULT`` item)."""
        return cls(
            key_id=str(item["key_id"]),
            refreshed_at=item.get("last_refreshed_at") or item.get("refreshed_at"),
            **{
                name: item.get(name)
                for name in (*LOCATION_FIELDS, "lifecycle_state", "current_key_version")
            },
        )


@dataclass(frozen=True)
class RefreshOutcome:
    """The result of one key in one run (a ``RESULT`` item before it is stored): the key as
    it is known (after a refresh, as CCKM answered; otherwise where it lives) and what the
    refresh came to."""

    key: KeyInfo  # key_id: the CCKM id; for an OCID that matched nothing, the OCID itself
    status: Status
    attempts: int = 0
    duration_ms: int = 0
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    recorded_at: str | None = None  # when the outcome was known; orders results of one key

    @property
    def key_id(self) -> str:
        return self.key.key_id


@dataclass(frozen=True)
class RunInfo:
    """Identity and metadata of a run (the ``RUN`` item's descriptive fields)."""

    run_id: str
    trigger: Trigger
    request_id: str | None = None
    reason: str | None = None
    dry_run: bool = False
