"""What ``make demo`` prints, and the checks that decide its exit code.

``check(observed, expected)`` is pure: it compares what the table, the queues and the topic
hold after the demo, and what the queues carried, with what the demo set out to cause, and
returns the misses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

_STATUS_ORDER = ("FAILED", "PENDING", "NOT_FOUND", "REFRESHED", "SKIPPED")
_SEVERITY_ORDER = {"ERROR": 0, "WARNING": 1, "INFO": 2}


@dataclass(frozen=True)
class Expected:
    """What the demo's scenario must produce."""

    run_id: str
    requested: int
    not_found: int
    failed: int
    rotated: frozenset[str]
    disabled: str
    deleted: str
    flaky: str
    rejected_field: str

    @property
    def refreshed(self) -> int:
        return self.requested - self.not_found - self.failed


@dataclass(frozen=True)
class QueueTraffic:
    """What one queue carried to the refresh function during today's run."""

    messages: int = 0  # distinct messages delivered
    deliveries: int = 0  # a message delivered again counts again
    invocations: int = 0  # invocations of the function by the queue's mapping

    def describe(self) -> str:
        again = self.deliveries - self.messages
        return f"{self.messages} message(s) in {self.invocations} invocation(s)" + (
            f", {again} delivered again" if again else ""
        )


@dataclass(frozen=True)
class Observed:
    """What the local AWS resources hold once the queue and the stream are drained."""

    baseline: Mapping[str, Any]  # yesterday's RUN item
    run: Mapping[str, Any]  # today's RUN item
    before: Mapping[str, Mapping[str, Any]]  # yesterday's RESULT items by key id
    results: Mapping[str, Mapping[str, Any]]  # today's RESULT items by key id
    rejected: Mapping[str, Any] | None  # the REJECTED item of the invalid message
    dead_letters: Sequence[Mapping[str, Any]]  # messages in the dead-letter queue
    notifications: Sequence[Mapping[str, Any]]  # {Subject, Message, MessageAttributes}
    flaky_receive_counts: Sequence[int]  # receive counts of deliveries carrying the flaky key
    notify_errors: Sequence[str] = field(default_factory=tuple)
    queue_left: int = 0  # messages still in the work queue and the tenancy queue at the end
    work_queue: QueueTraffic = QueueTraffic()
    tenancy_queue: QueueTraffic = QueueTraffic()
    drained: bool = True  # the queues emptied before the demo's timeout
    crashes: Sequence[str] = field(default_factory=tuple)  # invocations that raised


def check(observed: Observed, expected: Expected) -> list[str]:
    """Every expectation that did not hold, as one readable line each (empty: all held)."""
    return [
        *_check_run(observed, expected),
        *_check_results(observed, expected),
        *_check_queues(observed),
        *_check_rejection(observed, expected),
        *_check_notifications(observed, expected),
    ]


def _unmet(*expectations: tuple[bool, str]) -> list[str]:
    """The description of each ``(held, description)`` that did not hold, in order."""
    return [what for held, what in expectations if not held]


def _check_run(observed: Observed, expected: Expected) -> list[str]:
    """Yesterday's and today's RUN items: both COMPLETED, today's with the expected counts."""
    run = observed.run
    misses = _unmet(
        (observed.baseline.get("status") == "COMPLETED", "yesterday's run COMPLETED"),
        (
            run.get("status") == "COMPLETED",
            f"run {expected.run_id} COMPLETED, got {run.get('status')}",
        ),
    )
    counts = {
        name: _int(run.get(name)) for name in ("requested", "refreshed", "not_found", "failed")
    }
    wanted = {
        "requested": expected.requested,
        "refreshed": expected.refreshed,
        "not_found": expected.not_found,
        "failed": expected.failed,
    }
    return misses + _unmet(
        (counts == wanted, f"run counts {wanted}, got {counts}"),
        (
            _int(run.get("rotated")) == len(expected.rotated),
            f"run counts {len(expected.rotated)} rotated, got {run.get('rotated')}",
        ),
    )


def _check_results(observed: Observed, expected: Expected) -> list[str]:
    """Today's RESULT items: one per key, and each key the scenario touched as it should be."""
    results = observed.results
    misses = _unmet(
        (len(results) == expected.requested, f"{expected.requested} results, got {len(results)}")
    )
    changed = {key for key, r in results.items() if r.get("version_changed")}
    misses += _unmet(
        (
            changed == set(expected.rotated),
            f"rotations detected for {sorted(expected.rotated)}, got {sorted(changed)}",
        )
    )
    disabled = results.get(expected.disabled, {})
    deleted = results.get(expected.deleted, {})
    flaky = results.get(expected.flaky, {})
    return misses + _unmet(
        (
            disabled.get("lifecycle_state") == "DISABLED",
            f"the disabled key recorded DISABLED, got {disabled.get('lifecycle_state')}",
        ),
        (
            deleted.get("status") == "NOT_FOUND",
            f"the deleted key NOT_FOUND, got {deleted.get('status')}",
        ),
        (flaky.get("status") == "REFRESHED", f"the flaky key REFRESHED, got {flaky.get('status')}"),
        (
            max(observed.flaky_receive_counts, default=0) >= 2,
            "the flaky key finished by a redelivery (ApproximateReceiveCount >= 2), "
            f"got counts {list(observed.flaky_receive_counts)}",
        ),
    )


def _check_queues(observed: Observed) -> list[str]:
    """Both queues carried messages and drained, and no invocation raised."""
    return [
        *_unmet(
            (
                observed.drained and observed.queue_left == 0,
                "the work queue and the tenancy queue drained, "
                f"{observed.queue_left} message(s) left",
            ),
            (
                observed.tenancy_queue.messages >= 1,
                "the run's keys went through the tenancy queue, got no tenancy-queue message",
            ),
            (
                observed.work_queue.messages >= 1,
                "the pipeline's message was delivered from the work queue, got none",
            ),
        ),
        *(f"no invocation raised: {crash}" for crash in observed.crashes),
    ]


def _check_rejection(observed: Observed, expected: Expected) -> list[str]:
    """The invalid message: recorded REJECTED naming its bad field, and dead-lettered once."""
    rejected = observed.rejected or {}
    misses = _unmet(
        (
            str(rejected.get("error", "")).startswith(f"{expected.rejected_field}:"),
            f"the invalid message recorded REJECTED naming {expected.rejected_field}",
        )
    )
    copies = [m for m in observed.dead_letters if "error" in m.get("MessageAttributes", {})]
    return misses + _unmet(
        (len(copies) == 1, f"one dead-letter copy with an error attribute, got {len(copies)}")
    )


def _check_notifications(observed: Observed, expected: Expected) -> list[str]:
    by_type: dict[str, list[Mapping[str, Any]]] = {}
    for note in observed.notifications:
        by_type.setdefault(_event_type(note), []).append(note)
    return [
        *observed.notify_errors,
        *_check_run_completed(by_type.get("RUN_COMPLETED", []), expected.run_id),
        *_check_rotations(by_type.get("KEY_ROTATED", []), expected.rotated),
        *_check_state_change(by_type.get("KEY_STATE_CHANGED", []), expected.disabled),
        *_check_one_error(
            by_type.get("REQUEST_REJECTED", []),
            "one REQUEST_REJECTED (ERROR) for the invalid message",
        ),
        *_check_subjects(observed.notifications),
    ]


def _check_run_completed(notes: Sequence[Mapping[str, Any]], run_id: str) -> list[str]:
    runs = [n for n in notes if _body(n).get("run_id") == run_id]
    if len(runs) != 1:
        return [f"one RUN_COMPLETED for {run_id}, got {len(runs)}"]
    # The demo's run has one key not found (deleted in CCKM) and none failed: a WARNING.
    if _severity(runs[0]) != "WARNING":
        return [f"RUN_COMPLETED severity WARNING, got {_severity(runs[0])}"]
    return []


def _check_rotations(notes: Sequence[Mapping[str, Any]], expected: frozenset[str]) -> list[str]:
    rotated = {_body(n).get("key_id") for n in notes}
    if rotated != set(expected):
        return [f"KEY_ROTATED for {sorted(expected)}, got {sorted(map(str, rotated))}"]
    return []


def _check_state_change(notes: Sequence[Mapping[str, Any]], disabled: str) -> list[str]:
    changes = [n for n in notes if _body(n).get("key_id") == disabled]
    return _check_one_error(changes, "one KEY_STATE_CHANGED (ERROR) for the disabled key")


def _check_one_error(notes: Sequence[Mapping[str, Any]], miss: str) -> list[str]:
    """``[miss]`` unless ``notes`` is exactly one notification, of severity ERROR."""
    if len(notes) != 1 or _severity(notes[0]) != "ERROR":
        return [miss]
    return []


def _check_subjects(notifications: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        f"a Subject of at most 100 characters and a summary: {note.get('Subject')!r}"
        for note in notifications
        if len(str(note.get("Subject") or "")) > 100 or not _body(note).get("summary")
    ]


# --- printing --------------------------------------------------------------------------------


def print_results(
    out: TextIO, observed: Observed, expected: Expected, notes: Mapping[str, str]
) -> None:
    """Today's results: the keys the scenario touched first (with ``notes``), then the rest."""
    rows = []
    ordered = sorted(observed.results.items(), key=lambda kv: _row_order(kv[1], kv[0] not in notes))
    for key_id, result in ordered:
        before = observed.before.get(key_id, {})
        rows.append(
            (
                str(result.get("status", "")),
                str(result.get("display_name") or key_id),
                str(result.get("tenancy", "")),
                _version_change(result),
                _state_change(before.get("lifecycle_state"), result.get("lifecycle_state")),
                str(result.get("error_code") or ""),
                notes.get(key_id, ""),
            )
        )
    _say(out, f"Results of run {expected.run_id} ({len(rows)} keys):")
    _table(out, ("STATUS", "NAME", "TENANCY", "KEY VERSION", "STATE", "ERROR", "WHY"), rows)


def print_summary(out: TextIO, observed: Observed) -> None:
    """The RUN item and the rejected request, as an operator would read them."""
    run = observed.run
    _say(
        out,
        f"\nRun {run.get('run_id')} ({run.get('trigger')}, reason {run.get('reason')!r}): "
        f"{run.get('status')}; {_int(run.get('requested'))} requested, "
        f"{_int(run.get('refreshed'))} refreshed, {_int(run.get('not_found'))} not found, "
        f"{_int(run.get('failed'))} failed, {_int(run.get('rotated'))} rotated; "
        f"{run.get('started_at')} -> {run.get('finished_at')}",
    )
    _say(
        out,
        f"Queues: tenancy queue {observed.tenancy_queue.describe()}; "
        f"work queue {observed.work_queue.describe()}",
    )
    rejected = observed.rejected
    if rejected:
        _say(out, f"Rejected request {rejected.get('pk')}: {rejected.get('error')}")
    for message in observed.dead_letters:
        error = message.get("MessageAttributes", {}).get("error", {}).get("StringValue")
        _say(out, f"Dead-letter queue: {message.get('Body')} (error: {error})")


def print_notifications(out: TextIO, notifications: Sequence[Mapping[str, Any]]) -> None:
    """The notifications as a subscriber receives them: subject, then type, severity, summary."""
    _say(out, f"\nNotifications published to the topic ({len(notifications)}):")
    ordered = sorted(
        notifications, key=lambda n: (_SEVERITY_ORDER.get(_severity(n), 3), _event_type(n))
    )
    for note in ordered:
        _say(out, f"  {note.get('Subject')}")
        _say(out, f"      {_event_type(note)}, {_severity(note)}: {_body(note).get('summary')}")


def _say(out: TextIO, line: str) -> None:
    print(line, file=out, flush=True)


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    cells = [list(header), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        _say(out, "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _row_order(result: Mapping[str, Any], plain: bool) -> tuple[bool, int, str]:
    status = str(result.get("status", ""))
    rank = _STATUS_ORDER.index(status) if status in _STATUS_ORDER else len(_STATUS_ORDER)
    return plain, rank, str(result.get("display_name", ""))


def _short(version: object) -> str:
    """The part of a key-version OCID that tells versions apart.

    ``ocid1.keyversion.oc1.iad.<vault>.<version>.<key>``: the last part names the key and is
    the same in every version, the one before it names the version.
    """
    if not version:
        return "-"
    parts = str(version).split(".")
    label = parts[-2] if len(parts) >= 7 and parts[1] == "keyversion" else str(version)
    return label[-8:]


def _version_change(result: Mapping[str, Any]) -> str:
    current = result.get("current_key_version")
    if result.get("version_changed"):
        return f"{_short(result.get('previous_key_version'))} -> {_short(current)}"
    return _short(current) if current else ""


def _state_change(before: object, after: object) -> str:
    if before and after and before != after:
        return f"{before} -> {after}"
    return str(after or "")


def _event_type(note: Mapping[str, Any]) -> str:
    attribute = note.get("MessageAttributes", {}).get("event_type", {})
    return str(attribute.get("Value") or _body(note).get("event_type") or "?")


def _severity(note: Mapping[str, Any]) -> str:
    attribute = note.get("MessageAttributes", {}).get("severity", {})
    return str(attribute.get("Value") or _body(note).get("severity") or "?")


def _body(note: Mapping[str, Any]) -> Mapping[str, Any]:
    message = note.get("Message")
    return message if isinstance(message, Mapping) else {}


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return 0
