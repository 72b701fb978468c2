"""The results table's items (docs/reference.md 5): their keys, TTL and serialisation, and the
values the run keeps in them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from cckm_refresh.keyids import KeyIdKind, classify_key_id
from cckm_refresh.model import LOCATION_FIELDS, KeyInfo, RefreshOutcome, RunStatus, Status
from cckm_refresh.text import MAX_MESSAGE

RUN = "RUN"  # the sort key of a run's item
LATEST = "LATEST"  # the sort key of a key's latest state
REQUEST = "REQUEST"  # the sort key of a rejected request, and of the one a run started from
NOTIFICATION = "NOTIFICATION"  # the sort key of a notification sent
KEY_PREFIX = "KEY#"
CHUNK_PREFIX = "CHUNK#"
REJECTED_PREFIX = "REJECTED#"
PACE = "PACE"  # the sort key of a tenancy's pace
PACE_RETENTION = timedelta(days=1)  # a pace is useful for a second; the TTL keeps no clutter
BY_KEY_INDEX = "by-key"
# The by-key index's partition of the runs still RUNNING (a RUN item leaves it at completion):
# what the sweep reads to find stuck runs without scanning the table.
OPEN_RUNS = "RUNS#OPEN"
FIRST_SEGMENT = "start"
SEGMENT_PREFIX = "at:"  # a resolution segment that starts at a listing position
# A transaction holds at most 100 items: the CHUNK item, the RUN update and 98 results.
MAX_CHUNK_KEYS = 98
MAX_REJECTED_BODY = 4000
MAX_KEPT_REQUEST = 100_000  # a run's request as received (1,000 OCIDs are about 60 KB)
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def run_pk(run_id: str) -> str:
    return f"RUN#{run_id}"


def key_pk(key_id: str) -> str:
    """A key's partition (its ``LATEST`` item), its results' sort key in a run, and their
    ``by-key`` index key."""
    return f"{KEY_PREFIX}{key_id}"


def chunk_sk(chunk_id: str) -> str:
    return f"{CHUNK_PREFIX}{chunk_id}"


def rejected_pk(source_id: str) -> str:
    return f"{REJECTED_PREFIX}{source_id}"


def notified_pk(dedupe_key: str) -> str:
    return f"NOTIFIED#{dedupe_key}"


def tenancy_pk(tenancy: str) -> str:
    return f"TENANCY#{tenancy}"


def key(pk: str, sk: str) -> dict[str, Any]:
    """An item's key as the low-level client takes it."""
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def to_item(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes (None left out) as the low-level client takes them."""
    return {k: _serializer.serialize(v) for k, v in attributes.items() if v is not None}


def plain(item: Mapping[str, Any]) -> dict[str, Any]:
    """An item as the low-level client returns it, as plain values (numbers as Decimal)."""
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def expires_at(now: datetime, retention: timedelta) -> int:
    """The TTL attribute: epoch seconds after which DynamoDB removes the item."""
    return int((now + retention).timestamp())


def is_cckm_id(key_id: str) -> bool:
    try:
        return classify_key_id(key_id)[0] is KeyIdKind.CCKM
    except ValueError:
        return False


@dataclass(frozen=True)
class RecordedResult:
    """An outcome as stored, with what comparing it to the version before the run revealed."""

    outcome: RefreshOutcome
    previous_key_version: str | None
    version_changed: bool


@dataclass(frozen=True)
class RunState:
    """The ``RUN`` item as the run rules and the sweep need it."""

    run_id: str
    status: RunStatus
    resolving: str | None  # the resolution segment that owns the run; None once resolved
    open_chunks: int
    counts: RunCounts
    progress_at: int | None = None  # epoch seconds of its last registration, close or hand-on
    reason: str | None = None
    dry_run: bool = False
    sweeps: int = 0  # times the sweep re-queued its work

    @property
    def completed(self) -> bool:
        return self.status == RunStatus.COMPLETED

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> RunState:
        resolving = item.get("resolving")
        progress = item.get("progress_at")
        return cls(
            run_id=str(item["run_id"]),
            status=RunStatus(str(item.get("status", RunStatus.RUNNING))),
            resolving=str(resolving) if resolving else None,
            open_chunks=int(item.get("open_chunks", 0)),
            counts=RunCounts.from_item(item),
            progress_at=int(progress) if progress is not None else None,
            reason=item.get("reason"),
            dry_run=bool(item.get("dry_run")),
            sweeps=int(item.get("sweeps", 0)),
        )


@dataclass(frozen=True)
class OpenChunk:
    """A chunk registered and not closed: what the sweep needs to queue it again."""

    chunk_id: str
    tenancy: str | None
    key_ids: tuple[str, ...]


@dataclass(frozen=True)
class KeyEntry:
    """A key as registered in a chunk: its id and what was known of it before the run."""

    key_id: str
    known: KeyInfo | None = None


@dataclass(frozen=True)
class ChunkTally:
    """The counts of terminal results: what a finished chunk adds to its run."""

    refreshed: int = 0
    not_found: int = 0
    failed: int = 0
    skipped: int = 0
    rotated: int = 0

    @classmethod
    def of(cls, results: Iterable[tuple[Status, bool]]) -> ChunkTally:
        """The counts of terminal results, each a status and whether its key rotated."""
        counts = dict.fromkeys(TALLY_FIELDS, 0)
        for status, rotated in results:
            counts[status.lower()] += 1  # ``NOT_FOUND``: ``not_found``
            counts["rotated"] += int(rotated)
        return cls(**counts)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in TALLY_FIELDS}


# The counts a run's results add up to, in the order the RUN item lists them (docs/reference.md
# 5): ``ChunkTally`` and ``RunCounts`` hold them, the table writes and the notifier reads them.
TALLY_FIELDS = tuple(field.name for field in fields(ChunkTally))


@dataclass(frozen=True, kw_only=True)
class RunCounts(ChunkTally):
    """A run's counts as its ``RUN`` item holds them."""

    run_id: str
    requested: int

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> RunCounts:
        tally = {name: int(item.get(name, 0)) for name in TALLY_FIELDS}
        return cls(run_id=str(item["run_id"]), requested=int(item.get("requested", 0)), **tally)


def result_item(run_id: str, result: RecordedResult, at: str, expires: int) -> dict[str, Any]:
    """A ``RESULT`` item (docs/reference.md 5)."""
    o = result.outcome
    k = o.key
    return {
        "pk": run_pk(run_id),
        "sk": key_pk(o.key_id),
        "item_type": "RESULT",
        "run_id": run_id,
        "key_id": o.key_id,
        **{name: getattr(k, name) for name in LOCATION_FIELDS},
        "status": str(o.status),
        "attempts": o.attempts,
        "duration_ms": o.duration_ms,
        "http_status": o.http_status,
        "error_code": o.error_code,
        "error_message": o.error_message[:MAX_MESSAGE] if o.error_message else None,
        "lifecycle_state": k.lifecycle_state,
        "current_key_version": k.current_key_version,
        "previous_key_version": result.previous_key_version,
        "version_changed": result.version_changed,
        "refreshed_at": k.refreshed_at,
        "recorded_at": o.recorded_at or at,
        "gsi1pk": key_pk(o.key_id),
        "gsi1sk": o.recorded_at or at,
        "expires_at": expires,
    }


@dataclass(frozen=True)
class TenancyPace:
    """When a tenancy's latest refresh attempt left (epoch milliseconds): what the invocation
    that worked on it hands to the next one, which may run in another container."""

    tenancy: str  # the pacing group: the tenancy, or ``~unknown``
    last_sent_ms: int

    def item(self, at: str, expires: int) -> dict[str, Any]:
        return {
            "pk": tenancy_pk(self.tenancy),
            "sk": PACE,
            "item_type": "PACE",
            "tenancy": self.tenancy,
            "last_sent_ms": self.last_sent_ms,
            "updated_at": at,
            "expires_at": expires,
        }


def status_of(item: Mapping[str, Any] | None) -> Status | None:
    """The status of a result item, if it has a valid one."""
    try:
        return Status(str(item["status"])) if item else None
    except (KeyError, ValueError):
        return None


def known_before(item: Mapping[str, Any]) -> KeyInfo:
    """What the run knew of a key before touching it, from its ``PENDING`` result item: where
    it lives, and the version it had (``previous_key_version``)."""
    before = item.get("previous_key_version")
    return replace(KeyInfo.from_item(item).location(), current_key_version=before)


def segment_of(resume: Mapping[str, object] | None) -> str:
    """The name of a resolution segment: where its listing starts (``resume_of`` reads it)."""
    if resume is None:
        return FIRST_SEGMENT
    return SEGMENT_PREFIX + json.dumps(resume, sort_keys=True, separators=(",", ":"), default=str)


def resume_of(segment: str) -> dict[str, Any] | None:
    """The listing position a segment starts at (None: the first segment)."""
    if segment == FIRST_SEGMENT:
        return None
    resume: dict[str, Any] = json.loads(segment.removeprefix(SEGMENT_PREFIX))
    return resume
