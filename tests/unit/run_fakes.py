"""In-memory stand-ins for what the run needs of the table and the queues (``run.ports``),
with the same rules as DynamoDB's conditional writes: a result turns terminal once, a chunk
registers and closes once, a run completes once."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, Status
from cckm_refresh.table.items import (
    FIRST_SEGMENT,
    ChunkTally,
    KeyEntry,
    RecordedResult,
    RunCounts,
    RunState,
    TenancyPace,
    described,
)
from cckm_refresh.workqueue import QueueMessage

COUNTS = ("refreshed", "not_found", "failed", "skipped", "rotated")


@dataclass
class FakeTable:
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    chunks: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    latest: dict[str, KeyInfo] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    paces: dict[str, TenancyPace] = field(default_factory=dict)
    completions: int = 0

    def start_run(self, run: RunInfo) -> bool:
        if run.run_id in self.runs:
            return False
        self.runs[run.run_id] = {
            "status": "RUNNING",
            "resolving": FIRST_SEGMENT,
            "requested": 0,
            "open_chunks": 0,
        } | dict.fromkeys(COUNTS, 0)
        return True

    def run_state(self, run_id: str) -> RunState | None:
        run = self.runs.get(run_id)
        if run is None:
            return None
        counts = RunCounts(run_id, run["requested"], *(run[name] for name in COUNTS))
        resolving = bool(run.get("resolving"))
        return RunState(run_id, run["status"], resolving, run["open_chunks"], counts)

    def register_chunk(
        self, run: RunInfo, chunk_id: str, tenancy: str | None, entries: Sequence[KeyEntry]
    ) -> tuple[KeyEntry, ...]:
        state = self.runs[run.run_id]
        if state["status"] != "RUNNING":
            return ()
        if (run.run_id, chunk_id) in self.chunks:
            keys = self.chunks[(run.run_id, chunk_id)]["keys"]
            return tuple(e for e in entries if e.key_id in keys)
        fresh = tuple(e for e in entries if (run.run_id, e.key_id) not in self.results)
        if not fresh:
            return ()
        self.chunks[(run.run_id, chunk_id)] = {
            "keys": [e.key_id for e in fresh],
            "status": "OPEN",
            "tenancy": tenancy,
        }
        for entry in fresh:
            pending = described(RefreshOutcome(KeyInfo(entry.key_id), Status.PENDING), entry.known)
            self.results[(run.run_id, entry.key_id)] = _item(pending) | {
                "previous_key_version": entry.version_before
            }
        state["requested"] += len(fresh)
        state["open_chunks"] += 1
        return fresh

    def record_found_nothing(self, run: RunInfo, outcomes: Sequence[RefreshOutcome]) -> int:
        state = self.runs[run.run_id]
        new = [o for o in outcomes if (run.run_id, o.key_id) not in self.results]
        if state["status"] != "RUNNING":
            return 0
        for outcome in new:
            self.results[(run.run_id, outcome.key_id)] = _item(outcome)
            state[{Status.NOT_FOUND: "not_found", Status.FAILED: "failed"}[outcome.status]] += 1
        state["requested"] += len(new)
        return len(new)

    def results_of(self, run_id: str, key_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {k: dict(self.results[(run_id, k)]) for k in key_ids if (run_id, k) in self.results}

    def results_and_pace(
        self, run_id: str, key_ids: Sequence[str], tenancy: str | None
    ) -> tuple[dict[str, dict[str, Any]], TenancyPace | None]:
        pace = self.paces.get(tenancy) if tenancy is not None else None
        return self.results_of(run_id, key_ids), pace

    def record_pace(self, pace: TenancyPace) -> None:
        self.paces[pace.tenancy] = pace

    def latest_of(self, key_ids: Sequence[str]) -> dict[str, KeyInfo]:
        return {k: self.latest[k] for k in key_ids if k in self.latest}

    def record(
        self, run: RunInfo, outcome: RefreshOutcome, before: KeyInfo | None
    ) -> RecordedResult | None:
        existing = self.results.get((run.run_id, outcome.key_id))
        if existing is not None and existing["status"] != Status.PENDING:
            return None
        old = self.latest.get(outcome.key_id)
        previous = (before.current_key_version if before else None) or (
            old.current_key_version if old else None
        )
        changed = bool(
            outcome.status is Status.REFRESHED
            and previous
            and previous != outcome.key.current_key_version
        )
        if outcome.status is Status.REFRESHED:
            self.latest[outcome.key_id] = KeyInfo(
                outcome.key_id,
                tenancy=outcome.key.tenancy,
                current_key_version=outcome.key.current_key_version,
            )
        self.results[(run.run_id, outcome.key_id)] = _item(outcome) | {"version_changed": changed}
        return RecordedResult(outcome, previous, changed)

    def finish_chunk(
        self, run_id: str, chunk_id: str, tally: ChunkTally, pace: TenancyPace | None = None
    ) -> bool:
        chunk = self.chunks[(run_id, chunk_id)]
        if chunk["status"] != "OPEN":
            return False
        chunk["status"] = "DONE"
        if pace is not None:
            self.record_pace(pace)
        state = self.runs[run_id]
        state["open_chunks"] -= 1
        for name in COUNTS:
            state[name] += getattr(tally, name)
        return True

    def hand_on_resolution(self, run_id: str, segment: str, next_segment: str) -> bool:
        if self.runs[run_id].get("resolving") != segment:
            return False
        self.runs[run_id]["resolving"] = next_segment
        return True

    def finish_resolution(self, run_id: str, segment: str = FIRST_SEGMENT) -> bool:
        if self.runs[run_id].get("resolving") != segment:
            return False
        self.runs[run_id]["resolving"] = None
        return True

    def complete_if_done(self, run_id: str) -> RunCounts | None:
        state = self.run_state(run_id)
        if state is None or state.completed or state.resolving or state.open_chunks:
            return None
        self.runs[run_id]["status"] = "COMPLETED"
        self.completions += 1
        return state.counts

    def record_rejected(self, source_id: str, error: str, body: str) -> bool:
        new = source_id not in self.rejected
        self.rejected.setdefault(source_id, error)
        return new


@dataclass
class FakeQueues:
    queue_url: str | None = "https://sqs/work"
    tenancy_queue_url: str | None = "https://sqs/tenancy.fifo"
    sent: list[QueueMessage] = field(default_factory=list)
    send_calls: list[list[str]] = field(default_factory=list)  # each call's message groups
    dead_letters: list[tuple[str, str]] = field(default_factory=list)
    visibility: list[tuple[str | None, str, int]] = field(default_factory=list)

    @property
    def can_hand_on(self) -> bool:
        return bool(self.queue_url or self.tenancy_queue_url)

    def send(self, messages: Sequence[QueueMessage]) -> int:
        self.sent += messages
        self.send_calls.append([m.group for m in messages])
        return len(messages)

    def retry_later(self, queue_url: str | None, receipt_handle: str, seconds: int) -> bool:
        self.visibility.append((queue_url, receipt_handle, seconds))
        return True

    def url_of(self, queue_arn: str) -> str | None:
        return self.tenancy_queue_url if queue_arn.endswith(".fifo") else self.queue_url

    def dead_letter(self, body: str, error: str) -> bool:
        self.dead_letters.append((body, error))
        return True

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(json.dumps(m.body)) for m in self.sent]


def _item(outcome: RefreshOutcome) -> dict[str, Any]:
    fields = outcome.key.__dict__ | outcome.__dict__
    item = {k: v for k, v in fields.items() if v is not None and k != "key"}
    return item | {"status": str(outcome.status)}


def with_version(info: KeyInfo, version: str) -> KeyInfo:
    return replace(info, current_key_version=version)
