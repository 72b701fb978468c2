"""Run and chunk bookkeeping: each run's keys registered, counted and its completion made
exactly once, at a cost per key that does not grow with the run (docs/architecture.md,
"Exactly-once bookkeeping"); and what every writer of the table shares."""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from cckm_refresh import backoff
from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, RunStatus, Status
from cckm_refresh.runtime import iso, utc_now
from cckm_refresh.table.items import (
    BY_KEY_INDEX,
    CHUNK_PREFIX,
    FIRST_SEGMENT,
    MAX_CHUNK_KEYS,
    MAX_KEPT_REQUEST,
    OPEN_RUNS,
    PACE_RETENTION,
    REQUEST,
    RUN,
    TALLY_FIELDS,
    ChunkTally,
    KeyEntry,
    OpenChunk,
    RecordedResult,
    RunCounts,
    RunState,
    TenancyPace,
    chunk_sk,
    expires_at,
    key,
    result_item,
    run_pk,
    to_item,
)
from cckm_refresh.table.reads import TableClient
from cckm_refresh.text import MAX_MESSAGE

_TRANSACTION_ATTEMPTS = 8


class TransactionFailedError(RuntimeError):
    """DynamoDB kept cancelling a transaction for reasons other than our conditions."""


@dataclass(eq=False)
class RunBook(TableClient):
    """The ``RUN`` and ``CHUNK`` items: a run's keys registered, counted and completed once.
    Clock, sleep and randomness are injectable for tests."""

    retention_days: int
    _: KW_ONLY
    now: Callable[[], datetime] = utc_now
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = random.random

    def _expires_at(self) -> int:
        return expires_at(self.now(), timedelta(days=self.retention_days))

    def _backoff(self, attempt: int) -> None:
        self.sleep(backoff.full_jitter(attempt, 0.05, 2.0, self.rng))

    def _if_new(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """A put of ``item`` only if its key is new (``put_item``'s arguments, or a ``Put``)."""
        return {
            "TableName": self.table_name,
            "Item": to_item(item),
            "ConditionExpression": "attribute_not_exists(pk)",
        }

    def _put_new(self, item: Mapping[str, Any]) -> bool:
        """Put ``item`` unless its key exists; True when this call created it."""
        try:
            self._db.put_item(**self._if_new(item))
        except self._db.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def _update(
        self, pk: str, sk: str, update: str, values: Mapping[str, Any], condition: str = ""
    ) -> dict[str, Any]:
        """An update of one item (``update_item``'s arguments, or an ``Update``); each ``#name``
        stands for the attribute ``name`` (DynamoDB reserves ``status``, ``region``...)."""
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "Key": key(pk, sk),
            "UpdateExpression": update,
            "ExpressionAttributeValues": to_item(values),
        }
        if condition:
            request["ConditionExpression"] = condition
        names = re.findall(r"#(\w+)", f"{update} {condition}")
        if names:
            request["ExpressionAttributeNames"] = {f"#{name}": name for name in names}
        return request

    def _updated(self, request: Mapping[str, Any]) -> dict[str, Any] | None:
        """``update_item``'s answer to ``request``; None when its condition refused."""
        try:
            answer: dict[str, Any] = self._db.update_item(**request)
        except self._db.exceptions.ConditionalCheckFailedException:
            return None
        return answer

    def _while_running(
        self, run_id: str, update: str, values: Mapping[str, Any], also: str = ""
    ) -> dict[str, Any]:
        """An update of the ``RUN`` item that applies only while it runs (a completed run keeps
        its counts, and nothing joins it)."""
        values = {**values, ":running": RunStatus.RUNNING}
        return self._update(run_pk(run_id), RUN, update, values, "#status = :running" + also)

    # --- runs -------------------------------------------------------------------------------

    def start_run(self, run: RunInfo, request: str | None = None) -> bool:
        """Create the ``RUN`` item (``RUNNING``, ``resolving``) unless it exists; True when
        this call made it. ``request`` (the request as received) is kept beside it, in a
        ``REQUEST`` item, for the sweep to start the resolution again if every delivery of
        it was lost (a schedule whose invocations all failed)."""
        now = self.now()
        item = {
            "pk": run_pk(run.run_id),
            "sk": RUN,
            "item_type": "RUN",
            "run_id": run.run_id,
            "trigger": str(run.trigger),
            "request_id": run.request_id,
            "reason": run.reason,
            "dry_run": run.dry_run,
            "requested": 0,
            "open_chunks": 0,
            "resolving": FIRST_SEGMENT,
            "status": str(RunStatus.RUNNING),
            "started_at": iso(now),
            "progress_at": _epoch(now),
            "gsi1pk": OPEN_RUNS,
            "gsi1sk": iso(now),
            "expires_at": self._expires_at(),
        }
        if request is None:
            return self._put_new(item)
        kept = {
            "pk": run_pk(run.run_id),
            "sk": REQUEST,
            "item_type": "RUN_REQUEST",
            "body": request[:MAX_KEPT_REQUEST],
            "expires_at": self._expires_at(),
        }
        return self._transact([{"Put": self._if_new(item)}, {"Put": self._if_new(kept)}]) is None

    def kept_request(self, run_id: str) -> str | None:
        """The request a run started from, as ``start_run`` kept it."""
        kept = self.item(run_pk(run_id), REQUEST)
        return str(kept["body"]) if kept is not None else None

    def run_state(self, run_id: str) -> RunState | None:
        """The ``RUN`` item, strongly consistent; None when the run does not exist."""
        item = self.item(run_pk(run_id), RUN)
        return RunState.from_item(item) if item is not None else None

    def open_runs(self) -> list[RunState]:
        """Every run still RUNNING (the by-key index's ``RUNS#OPEN`` partition)."""
        items = self._query(
            IndexName=BY_KEY_INDEX,
            KeyConditionExpression="gsi1pk = :open",
            ExpressionAttributeValues={":open": {"S": OPEN_RUNS}},
        )
        return [RunState.from_item(item) for item in items]

    def open_chunks(self, run_id: str) -> list[OpenChunk]:
        """The run's chunks registered and not closed."""
        chunks = self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :chunk)",
            FilterExpression="chunk_status = :open",
            ExpressionAttributeValues=to_item(
                {":pk": run_pk(run_id), ":chunk": CHUNK_PREFIX, ":open": "OPEN"}
            ),
            ConsistentRead=True,
        )
        return [OpenChunk(str(c["chunk_id"]), c.get("tenancy"), tuple(c["keys"])) for c in chunks]

    def swept(self, run_id: str, sweeps: int) -> None:
        """The sweep queued the run's work again: its ``sweeps``-th time, counted as progress."""
        values = {":n": sweeps, ":now": _epoch(self.now())}
        self._updated(self._while_running(run_id, "SET sweeps = :n, progress_at = :now", values))

    def record_listing_failure(self, run_id: str, error_code: str, message: str) -> None:
        """The run's listing could not be read completely: said on the ``RUN`` item (its
        completion is notified as an ERROR); the keys listed so far are refreshed."""
        failure = {"error_code": error_code, "error_message": message[:MAX_MESSAGE]}
        update = "SET listing_error = :failure"
        self._updated(self._while_running(run_id, update, {":failure": failure}))

    def hand_on_resolution(self, run_id: str, segment: str, next_segment: str) -> bool:
        """Pass the resolution from ``segment`` to the continuation that starts at
        ``next_segment``; False when ``segment`` no longer owns it (a stale delivery)."""
        update = "SET resolving = :next, progress_at = :now"
        return self._move_resolution(run_id, segment, update, {":next": next_segment})

    def finish_resolution(self, run_id: str, segment: str) -> bool:
        """Every key of the run is registered: completion may now happen. False when
        ``segment`` does not own the resolution (another delivery does, or it is done)."""
        return self._move_resolution(run_id, segment, "REMOVE resolving SET progress_at = :now")

    def _move_resolution(
        self, run_id: str, segment: str, update: str, values: Mapping[str, Any] | None = None
    ) -> bool:
        values = {**(values or {}), ":segment": segment, ":now": _epoch(self.now())}
        request = self._update(run_pk(run_id), RUN, update, values, "resolving = :segment")
        return self._updated(request) is not None

    def complete_if_done(self, run_id: str) -> RunCounts | None:
        """Turn the run ``COMPLETED`` when no chunk is open and resolution has finished; its
        counts when this call completed it (the condition makes that happen exactly once)."""
        state = self.run_state(run_id)
        if state is None or state.completed or state.resolving or state.open_chunks > 0:
            return None
        # A run with no chunk (a selector matching nothing) has no counts yet: the contract's
        # RUN item carries them at completion, zeros included.
        update = (
            "SET #status = :done, finished_at = :now"
            + "".join(f", {n} = if_not_exists({n}, :zero)" for n in TALLY_FIELDS)
            + " REMOVE gsi1pk, gsi1sk"
        )
        values = {":done": RunStatus.COMPLETED, ":zero": 0, ":now": iso(self.now())}
        done = " AND open_chunks = :zero AND attribute_not_exists(resolving)"
        if self._updated(self._while_running(run_id, update, values, also=done)) is None:
            return None
        return state.counts

    # --- chunks -----------------------------------------------------------------------------

    def register_chunk(
        self, run: RunInfo, chunk_id: str, tenancy: str | None, entries: Sequence[KeyEntry]
    ) -> tuple[KeyEntry, ...]:
        """Register a chunk of keys with the run (one transaction); return its keys (none:
        nothing left to send). Keys with a result in the run already are left out; a chunk
        registered before (a retried fan-out) is returned as it was, counted nothing again."""
        if len(entries) > MAX_CHUNK_KEYS:
            raise ValueError(f"a chunk holds at most {MAX_CHUNK_KEYS} keys")
        registration = partial(self._registration, run, chunk_id, tenancy)
        registered, refused = self._transact_keys(registration, list(entries), first=2)
        if 1 in refused:
            return ()  # the run completed before this chunk came: nothing joins it
        if 0 in refused:  # registered before (a retried fan-out): its keys as they were then
            chunk = self.item(run_pk(run.run_id), chunk_sk(chunk_id)) or {}
            kept = set(chunk.get("keys", []))
            return tuple(entry for entry in entries if entry.key_id in kept)
        return tuple(registered)

    def _registration(
        self, run: RunInfo, chunk_id: str, tenancy: str | None, entries: Sequence[KeyEntry]
    ) -> list[dict[str, Any]]:
        """The ``CHUNK`` item (index 0), the run's counts (1), a ``PENDING`` result per key."""
        now, expires = iso(self.now()), self._expires_at()
        chunk = {
            "pk": run_pk(run.run_id),
            "sk": chunk_sk(chunk_id),
            "item_type": "CHUNK",
            "run_id": run.run_id,
            "chunk_id": chunk_id,
            "tenancy": tenancy,
            "keys": [entry.key_id for entry in entries],
            "chunk_status": "OPEN",
            "registered_at": now,
            "expires_at": expires,
        }
        count = self._while_running(
            run.run_id,
            "ADD requested :n, open_chunks :one SET progress_at = :now",
            {":n": len(entries), ":one": 1, ":now": _epoch(self.now())},
        )
        results = []
        for entry in entries:
            known = entry.known
            pending = RefreshOutcome(KeyInfo(entry.key_id).filled_from(known), Status.PENDING)
            before = known.current_key_version if known else None
            item = result_item(run.run_id, RecordedResult(pending, before, False), now, expires)
            results.append({"Put": self._if_new(item | {"chunk_id": chunk_id})})
        return [{"Put": self._if_new(chunk)}, {"Update": count}, *results]

    def record_found_nothing(self, run: RunInfo, outcomes: Sequence[RefreshOutcome]) -> int:
        """Record terminal outcomes known before any refresh (an OCID that matches no key, a
        last delivery out of time): each result once, counted once. How many were new."""
        recorded = 0
        terminal_results = partial(self._terminal_results, run)
        for start in range(0, len(outcomes), MAX_CHUNK_KEYS):
            batch = list(outcomes[start : start + MAX_CHUNK_KEYS])
            new, refused = self._transact_keys(terminal_results, batch, first=1)
            if refused:
                break  # the run completed: it keeps its counts
            recorded += len(new)
        return recorded

    def _transact_keys(
        self, transaction: Callable[[list[K]], list[dict[str, Any]]], keys: list[K], first: int
    ) -> tuple[list[K], set[int]]:
        """Commit ``transaction(keys)``, whose items from index ``first`` on put one new result
        per key, leaving out of the next try each key whose put was refused. Returns the keys
        committed, or nothing and the refused indexes before ``first`` (the run's, the chunk's)."""
        for _ in range(_TRANSACTION_ATTEMPTS + len(keys)):
            if not keys:
                return [], set()
            failed = self._transact(transaction(keys))
            if failed is None:
                return keys, set()
            refused = {i for i in failed if i < first}
            if refused:
                return [], refused
            taken = {keys[i - first].key_id for i in failed}  # in the run already
            keys = [each for each in keys if each.key_id not in taken]
        raise TransactionFailedError("could not register the keys")

    def _terminal_results(self, run: RunInfo, batch: Sequence[RefreshOutcome]) -> list[Any]:
        tally = ChunkTally.of((outcome.status, False) for outcome in batch)
        update, values = _counted(tally, "ADD requested :n")
        values |= {":n": len(batch), ":now": _epoch(self.now())}
        count = self._while_running(run.run_id, update, values)
        now, expires = iso(self.now()), self._expires_at()
        results = [
            result_item(run.run_id, RecordedResult(o, None, False), now, expires) for o in batch
        ]
        return [{"Update": count}, *({"Put": self._if_new(item)} for item in results)]

    def finish_chunk(
        self, run_id: str, chunk_id: str, tally: ChunkTally, pace: TenancyPace | None = None
    ) -> bool:
        """Close a chunk whose keys are all terminal and add its counts to the run, once, with
        its tenancy's ``pace``. False when it was closed before: then nothing is written."""
        close = "SET chunk_status = :done, finished_at = :now"
        closed = {":done": "DONE", ":open": "OPEN", ":now": iso(self.now())}
        update, counts = _counted(tally, "ADD open_chunks :minus")
        counts |= {":minus": -1, ":now": _epoch(self.now())}
        pk = run_pk(run_id)
        items = [
            {"Update": self._update(pk, chunk_sk(chunk_id), close, closed, "chunk_status = :open")},
            {"Update": self._update(pk, RUN, update, counts)},
        ]
        if pace is not None:
            items.append({"Put": self._pace(pace)})
        return self._transact(items) is None

    def record_pace(self, pace: TenancyPace) -> None:
        """Hand on when the tenancy's latest attempt left, for its next invocation."""
        self._db.put_item(**self._pace(pace))

    def _pace(self, pace: TenancyPace) -> dict[str, Any]:
        now = self.now()
        item = pace.item(iso(now), expires_at(now, PACE_RETENTION))
        return {"TableName": self.table_name, "Item": to_item(item)}

    def _transact(self, items: list[dict[str, Any]]) -> set[int] | None:
        """Run a transaction; None when it committed, else the indexes whose conditions
        failed. Conflicts with concurrent transactions are retried with backoff."""
        for attempt in range(_TRANSACTION_ATTEMPTS):
            try:
                self._db.transact_write_items(TransactItems=items)
            except self._db.exceptions.TransactionCanceledException as error:
                reasons = error.response.get("CancellationReasons", [])
                failed = {
                    i for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"
                }
                if failed:
                    return failed
                self._backoff(attempt)  # TransactionConflict, throttling: try again
            else:
                return None
        raise TransactionFailedError("DynamoDB cancelled the transaction repeatedly")


def _counted(tally: ChunkTally, head: str) -> tuple[str, dict[str, int]]:
    """``head`` with the tally's ADDs and ``progress_at = :now``, and the tally's values."""
    update = (
        head + "".join(f", {name} :{name}" for name in TALLY_FIELDS) + " SET progress_at = :now"
    )
    return update, {f":{name}": count for name, count in tally.as_dict().items()}


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


K = TypeVar("K", KeyEntry, RefreshOutcome)
