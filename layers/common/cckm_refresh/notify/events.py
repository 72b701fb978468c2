"""Which table changes people hear about (docs/reference.md 6), and what they read: pure
functions of a stream record's images (a completed run's failed keys come from the caller).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
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
class FailureGroup:
    """The failed keys of a run that share a cause and a tenancy."""

    error_code: str
    tenancy: str
    count: int

    def hint(self) -> str | None:
        advice = _HINTS.get(self.error_code)
        return None if advice is None else advice.format(n=self.count, tenancy=self.tenancy)


@dataclass(frozen=True)
class FailedKeys:
    """A run's first 50 failed keys, how many failed, and all counted by cause and tenancy."""

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


def _notification(
    event_type: EventType,
    severity: Severity,
    headline: str,
    summary: str,
    *,
    about: str,
    details: Mapping[str, Any],
) -> Notification:
    """Subject ``[SEVERITY] <headline>``, dedupe key ``<event type>#<about>``."""
    return Notification(
        event_type,
        severity,
        subject(severity, headline),
        _shorten(_printable(summary), MAX_SUMMARY),
        f"{event_type}#{about}",
        details,
    )


_COUNTS = ("requested", *TALLY_FIELDS)
# The counts a completed run's summary mentions after "x of y refreshed", when not zero.
_SUMMARY_EXTRAS = (("failed", "failed"), ("not_found", "not found"), ("rotated", "rotated"))


def _run_completed(run: Mapping[str, Any], failed_keys: FailedKeysReader) -> Notification:
    """The summary adds the incomplete listing and the first hint."""
    run_id = str(run.get("run_id", ""))
    counts = {name: _int(run.get(name)) for name in _COUNTS}
    failed = failed_keys(run_id) if counts["failed"] else FailedKeys()
    listing_error = run.get("listing_error")
    severity, headline = _run_verdict(counts, listing_error)
    caveats = [hint for group in failed.groups if (hint := group.hint())][:1]
    if isinstance(listing_error, Mapping):
        caveats.insert(0, f"the listing was incomplete: {listing_error.get('error_message', '')}")
    return _notification(
        EventType.RUN_COMPLETED,
        severity,
        f"CCKM refresh run {run_id}: {headline}",
        "; ".join([_run_summary(run_id, counts, dry_run=bool(run.get("dry_run"))), *caveats]),
        about=run_id,
        details=_run_details(run, counts, failed),
    )


def _run_details(
    run: Mapping[str, Any], counts: Mapping[str, int], failed: FailedKeys
) -> dict[str, Any]:
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
            "failed_by_cause": [_present(asdict(g) | {"hint": g.hint()}) for g in failed.groups],
            "listing_error": dict(listing_error) if isinstance(listing_error, Mapping) else None,
        }
    )


def _run_summary(run_id: str, counts: Mapping[str, int], *, dry_run: bool) -> str:
    if dry_run:
        return f"Run {run_id} (dry run): {counts['skipped']} OCI keys resolved, none refreshed"
    summary = f"Run {run_id}: {counts['refreshed']} of {counts['requested']} OCI keys refreshed"
    extras = [f"{counts[name]} {label}" for name, label in _SUMMARY_EXTRAS if counts[name]]
    return summary + "".join(f", {e}" for e in extras)


def _run_verdict(counts: Mapping[str, int], listing_error: object) -> tuple[Severity, str]:
    """The severity (docs/reference.md 6: ERROR when keys failed or the listing was incomplete,
    WARNING when keys were not found) and the subject's few words that say why."""
    if counts["failed"]:
        return Severity.ERROR, f"{counts['failed']} of {counts['requested']} keys failed"
    if listing_error:
        return Severity.ERROR, f"listing incomplete, {counts['refreshed']} keys refreshed"
    if counts["not_found"]:
        return Severity.WARNING, f"{counts['not_found']} of {counts['requested']} keys not found"
    return Severity.INFO, f"{counts['refreshed']} keys refreshed, {counts['rotated']} rotated"


# A changed key's body fields, after its key_id.
_KEY_FIELDS = (
    "oci_key_id",
    "display_name",
    "tenancy",
    "region",
    "vault_name",
    "last_run_id",
    "updated_at",
)


def _key_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Notification]:
    """Each when its field changes from a previous non-empty value (docs/reference.md 6)."""
    key_id = str(new.get("key_id", ""))
    name = new.get("display_name") or key_id
    where = ", ".join(str(new[k]) for k in ("vault_name", "region") if new.get(k))
    known_as = f"{name} ({where})" if where else str(name)
    key = _present({"key_id": key_id} | {f: new.get(f) for f in _KEY_FIELDS})
    found = []
    if changed := _change(old, new, "current_key_version"):
        before, after = changed
        found.append(
            _notification(
                EventType.KEY_ROTATED,
                Severity.INFO,
                f"OCI key {name} rotated",
                f"OCI key {known_as} rotated: version {_tail(before)} -> {_tail(after)}",
                about=f"{key_id}#{after}",
                details=key | {"previous_key_version": before, "current_key_version": after},
            )
        )
    if changed := _change(old, new, "lifecycle_state"):
        before, after = changed
        found.append(
            _notification(
                EventType.KEY_STATE_CHANGED,
                Severity.ERROR if after in ALARMING_STATES else Severity.WARNING,
                f"OCI key {name} is now {after}",
                f"OCI key {known_as} changed state {before} -> {after}",
                about=f"{key_id}#{before}>{after}#{new.get('updated_at', '')}",
                details=key | {"previous_state": before, "lifecycle_state": after},
            )
        )
    return found


def _change(old: Mapping[str, Any], new: Mapping[str, Any], name: str) -> tuple[Any, Any] | None:
    before, after = old.get(name), new.get(name)
    return (before, after) if before and after and before != after else None


def _rejected(item: Mapping[str, Any]) -> Notification:
    source = str(item.get("pk", "")).removeprefix(REJECTED_PREFIX)
    error = str(item.get("error", ""))
    return _notification(
        EventType.REQUEST_REJECTED,
        Severity.ERROR,
        f"CCKM refresh request rejected: {error}",
        f"Rejected request {source}: {error}",
        about=source,
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


def _printable(text: str) -> str:
    return " ".join(printable(text, replacement=" ").split())


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tail(version: object) -> str:
    """A key version's distinguishing tail, for a summary (the body has the whole OCID)."""
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
