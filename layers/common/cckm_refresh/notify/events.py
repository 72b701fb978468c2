"""Which table changes people hear about (docs/reference.md 6), and what they read.

Pure functions of a stream record's images: no I/O except the failed-keys digest of a
completed run, which the caller supplies as a function.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from cckm_refresh.keyids import version_part
from cckm_refresh.model import RunStatus
from cckm_refresh.table.items import REJECTED_PREFIX, TALLY_FIELDS
from cckm_refresh.text import printable

MAX_SUBJECT = 99  # SNS: "less than 100 characters", no line breaks or control characters
MAX_SUMMARY = 500  # one line a person reads, whatever an error message or a name holds
MAX_BODY_EXCERPT = 500
MAX_FAILED_KEYS = 50


class EventType(StrEnum):
    RUN_COMPLETED = "RUN_COMPLETED"
    KEY_ROTATED = "KEY_ROTATED"
    KEY_STATE_CHANGED = "KEY_STATE_CHANGED"
    REQUEST_REJECTED = "REQUEST_REJECTED"


class Severity(StrEnum):
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


ALARMING_STATES = frozenset({"PENDING_DELETION", "DISABLED"})


@dataclass(frozen=True)
class FailureGroup:
    """The failed keys of a run that share a cause and a tenancy."""

    error_code: str
    tenancy: str
    count: int

    def hint(self) -> str | None:
        """What an operator should look at for this cause, when it says something."""
        advice = _HINTS.get(self.error_code)
        return None if advice is None else advice.format(n=self.count, tenancy=self.tenancy)

    def described(self) -> dict[str, Any]:
        """The group in a completed run's body (``hint`` only when there is one)."""
        fields = {"error_code": self.error_code, "tenancy": self.tenancy, "count": self.count}
        return _present(fields | {"hint": self.hint()})


# What a failure's error_code tells an operator to check (docs/reference.md 6).
_HINTS = {
    "NotAuthorizedOrNotFound": (
        "OCI refused {n} keys of tenancy {tenancy}: check the OCI connection's policy in CCKM"
    ),
    "DEADLINE": (
        "{n} keys of tenancy {tenancy} ran out of deliveries: check TENANCY_RATE_LIMIT and "
        "the function's timeout against the tenancy's keys"
    ),
    "UNAUTHORIZED": "CTM refused the credentials for {n} keys: check the CTM secret",
    "NCERRUnauthorizedAccess": "CTM refused the credentials for {n} keys: check the CTM secret",
    "TOKEN_EXPIRED": "the secret's JWT expired: store a refresh token in the CTM secret",
    "TLS": "CTM's certificate did not verify: check the secret's ca_bundle",
    "THROTTLED": "OCI kept throttling {n} keys of tenancy {tenancy}: lower TENANCY_RATE_LIMIT",
}


@dataclass(frozen=True)
class FailedKeys:
    """The failed keys of a run: at most 50 of them, how many there were, and all of them
    counted by cause and tenancy (largest first)."""

    keys: tuple[Mapping[str, Any], ...] = ()
    count: int = 0
    groups: tuple[FailureGroup, ...] = ()


FailedKeysReader = Callable[[str], FailedKeys]


@dataclass(frozen=True)
class Notification:
    """One message for people, and the key under which it is sent exactly once."""

    event_type: EventType
    severity: Severity
    subject: str
    summary: str
    dedupe_key: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {
            "event_type": str(self.event_type),
            "severity": str(self.severity),
            "summary": self.summary,
            **self.details,
        }

    def log_fields(self) -> dict[str, str]:
        """The fields every log line about it carries."""
        return {
            "event_type": str(self.event_type),
            "severity": str(self.severity),
            "dedupe_key": self.dedupe_key,
        }


def notifications_for(
    event_name: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    failed_keys: FailedKeysReader,
) -> list[Notification]:
    """The notifications one stream record gives (none for most records)."""
    old = old or {}
    if event_name == "REMOVE" or not new:
        return []
    item_type = new.get("item_type")
    if item_type == "RUN" and _became_completed(old, new):
        return [_run_completed(new, failed_keys)]
    if item_type == "KEY" and event_name == "MODIFY":
        return _key_changes(old, new)
    if item_type == "REJECTED" and event_name == "INSERT":
        return [_rejected(new)]
    return []


def _became_completed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """A run is notified once: on the record where it becomes COMPLETED."""
    completed = RunStatus.COMPLETED
    return new.get("status") == completed and old.get("status") != completed


def _run_completed(run: Mapping[str, Any], failed_keys: FailedKeysReader) -> Notification:
    run_id = str(run.get("run_id", ""))
    counts = {name: _int(run.get(name)) for name in _COUNTS}
    failed = failed_keys(run_id) if counts["failed"] else FailedKeys()
    listing_error = run.get("listing_error")
    severity = _run_severity(counts, listing_error)
    summary = _run_summary(run_id, counts, dry_run=bool(run.get("dry_run")))
    return Notification(
        event_type=EventType.RUN_COMPLETED,
        severity=severity,
        subject=subject(
            severity, f"CCKM refresh run {run_id}: {_run_headline(counts, listing_error)}"
        ),
        summary=one_line("; ".join([summary, *_run_caveats(listing_error, failed)])),
        dedupe_key=f"{EventType.RUN_COMPLETED}#{run_id}",
        details=_run_details(run, counts, failed),
    )


def _run_severity(counts: Mapping[str, int], listing_error: object) -> Severity:
    """ERROR when keys failed or the listing was incomplete, WARNING when keys were not
    found (docs/reference.md 6)."""
    if counts["failed"] or listing_error:
        return Severity.ERROR
    return Severity.WARNING if counts["not_found"] else Severity.INFO


def _run_caveats(listing_error: object, failed: FailedKeys) -> list[str]:
    """What a completed run's summary adds after its counts: that the listing was
    incomplete, and the first hint its failures give."""
    caveats: list[str] = []
    if isinstance(listing_error, Mapping):
        caveats.append(f"the listing was incomplete: {listing_error.get('error_message', '')}")
    hints = [hint for group in failed.groups if (hint := group.hint())]
    return caveats + hints[:1]


def _run_details(
    run: Mapping[str, Any], counts: Mapping[str, int], failed: FailedKeys
) -> dict[str, Any]:
    """A completed run's body fields: the run, its counts and its failed keys."""
    listing_error = run.get("listing_error")
    return _present(
        {
            "run_id": str(run.get("run_id", "")),
            "trigger": run.get("trigger"),
            "request_id": run.get("request_id"),
            "reason": run.get("reason"),
            "dry_run": bool(run.get("dry_run")),
            **counts,
            "started_at": run.get("started_at"),
            "finished_at": run.get("finished_at"),
            "failed_keys": [dict(k) for k in failed.keys],
            "failed_count": failed.count,
            "failed_by_cause": [group.described() for group in failed.groups],
            "listing_error": dict(listing_error) if isinstance(listing_error, Mapping) else None,
        }
    )


_COUNTS = ("requested", *TALLY_FIELDS)
# The counts a completed run's summary mentions after "x of y refreshed", when not zero.
_SUMMARY_EXTRAS = (("failed", "failed"), ("not_found", "not found"), ("rotated", "rotated"))


def _run_summary(run_id: str, counts: Mapping[str, int], *, dry_run: bool) -> str:
    if dry_run:
        return f"Run {run_id} (dry run): {counts['skipped']} OCI keys resolved, none refreshed"
    summary = f"Run {run_id}: {counts['refreshed']} of {counts['requested']} OCI keys refreshed"
    extras = [f"{counts[name]} {label}" for name, label in _SUMMARY_EXTRAS if counts[name]]
    return summary + "".join(f", {e}" for e in extras)


def _run_headline(counts: Mapping[str, int], listing_error: object) -> str:
    """The subject's few words: the failures if any, else what was refreshed."""
    if counts["failed"]:
        return f"{counts['failed']} of {counts['requested']} keys failed"
    if listing_error:
        return f"listing incomplete, {counts['refreshed']} keys refreshed"
    if counts["not_found"]:
        return f"{counts['not_found']} of {counts['requested']} keys not found"
    return f"{counts['refreshed']} keys refreshed, {counts['rotated']} rotated"


@dataclass(frozen=True)
class _ChangedKey:
    """How a changed key is named in notifications, and the body fields describing it."""

    key_id: str
    name: object
    known_as: str
    described: dict[str, Any]

    @classmethod
    def of(cls, item: Mapping[str, Any]) -> _ChangedKey:
        key_id = str(item.get("key_id", ""))
        name = item.get("display_name") or key_id
        where = ", ".join(str(item[k]) for k in ("vault_name", "region") if item.get(k))
        described = _present(
            {
                "key_id": key_id,
                "oci_key_id": item.get("oci_key_id"),
                "display_name": item.get("display_name"),
                "tenancy": item.get("tenancy"),
                "region": item.get("region"),
                "vault_name": item.get("vault_name"),
                "last_run_id": item.get("last_run_id"),
                "updated_at": item.get("updated_at"),
            }
        )
        known_as = f"{name} ({where})" if where else str(name)
        return cls(key_id=key_id, name=name, known_as=known_as, described=described)


def _key_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Notification]:
    key = _ChangedKey.of(new)
    changes = (_key_rotated(key, old, new), _key_state_changed(key, old, new))
    return [change for change in changes if change is not None]


def _key_rotated(
    key: _ChangedKey, old: Mapping[str, Any], new: Mapping[str, Any]
) -> Notification | None:
    before, after = old.get("current_key_version"), new.get("current_key_version")
    if not (before and after and before != after):
        return None
    return Notification(
        event_type=EventType.KEY_ROTATED,
        severity=Severity.INFO,
        subject=subject(Severity.INFO, f"OCI key {key.name} rotated"),
        summary=one_line(
            f"OCI key {key.known_as} rotated: version {_tail(before)} -> {_tail(after)}"
        ),
        dedupe_key=f"{EventType.KEY_ROTATED}#{key.key_id}#{after}",
        details=key.described | {"previous_key_version": before, "current_key_version": after},
    )


def _key_state_changed(
    key: _ChangedKey, old: Mapping[str, Any], new: Mapping[str, Any]
) -> Notification | None:
    before, after = old.get("lifecycle_state"), new.get("lifecycle_state")
    if not (before and after and before != after):
        return None
    severity = Severity.ERROR if after in ALARMING_STATES else Severity.WARNING
    return Notification(
        event_type=EventType.KEY_STATE_CHANGED,
        severity=severity,
        subject=subject(severity, f"OCI key {key.name} is now {after}"),
        summary=one_line(f"OCI key {key.known_as} changed state {before} -> {after}"),
        dedupe_key=(
            f"{EventType.KEY_STATE_CHANGED}#{key.key_id}#{before}>{after}"
            f"#{new.get('updated_at', '')}"
        ),
        details=key.described | {"previous_state": before, "lifecycle_state": after},
    )


def _rejected(item: Mapping[str, Any]) -> Notification:
    pk = str(item.get("pk", ""))
    source = pk.removeprefix(REJECTED_PREFIX)
    error = str(item.get("error", ""))
    return Notification(
        event_type=EventType.REQUEST_REJECTED,
        severity=Severity.ERROR,
        subject=subject(Severity.ERROR, f"CCKM refresh request rejected: {error}"),
        summary=one_line(f"Rejected request {source}: {error}"),
        dedupe_key=f"{EventType.REQUEST_REJECTED}#{source}",
        details=_present(
            {
                "source_id": source,
                "error": error,
                "received_at": item.get("received_at"),
                "body": str(item.get("body", ""))[:MAX_BODY_EXCERPT],
            }
        ),
    )


def subject(severity: Severity, text: str) -> str:
    """``[SEVERITY] text`` as every SNS endpoint accepts a subject: one line of printable
    ASCII (accents dropped, other characters "?"), at most ``MAX_SUBJECT`` characters."""
    # SNS once required ASCII subjects and email subscribers still get them as-is; the
    # summary and body keep every character.
    plain = unicodedata.normalize("NFKD", _printable(f"[{severity}] {text}"))
    ascii_line = "".join(c if c.isascii() else "?" for c in plain if not unicodedata.combining(c))
    return _shorten(ascii_line, MAX_SUBJECT)


def one_line(text: str) -> str:
    """``text`` on one printable line of at most ``MAX_SUMMARY`` characters."""
    return _shorten(_printable(text), MAX_SUMMARY)


def _printable(text: str) -> str:
    # Names and error messages come from CTM and from pipelines: any character may be in them.
    return " ".join(printable(text, replacement=" ").split())


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(version: object) -> str:
    """A short, distinguishing name of a key version for one-line summaries (the body carries
    the full OCIDs)."""
    text = str(version)
    part = version_part(text)
    if part is not None:
        return "..." + part[-12:]
    return text if len(text) <= 16 else "..." + text[-12:]


def _int(value: object) -> int:
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return int(value)
    return 0


def _present(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
