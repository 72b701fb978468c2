"""Run and chunk bookkeeping

How a run stays exact whatever fails (docs/reference.md 4.3), at a cost per key that does not grow
with the run:

- Keys join a run in **chunks** (one queue message each). Registering a chunk is one
  transaction: the ``CHUNK`` item (``attribute_not_exists``), one ``PENDING`` result per key
  (``attribute_not_exists``: a key already in the run is left where it is), and
  ``requested += n, open_chunks += 1`` on the ``RUN`` item. A retried fan-out finds its chunk
  registered and counts nothing twice.
- A result turns terminal with one conditional put (``attribute_not_exists OR status =
  PENDING``): a terminal result is never replaced, by a late ``PENDING`` or by a second
  terminal one.
- When every key of a chunk is terminal, one transaction turns the ``CHUNK`` item ``DONE``
  (only from ``OPEN``) and adds the chunk's counts to the run, ``open_chunks -= 1``: each
  chunk is counted exactly once, so the run's counts are exact.
- The run completes (once, conditionally) when ``open_chunks`` is 0 and its resolution has
  finished (``resolving`` removed): O(1) per chunk, never a read of the whole run.
- ``resolving`` names the resolution segment that owns the run (``start``, then the listing
  position each continuation starts from): only that segment may hand on or finish, so a
  duplicate or stale delivery of an earlier segment can never end the resolution early.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, RunStatus, Status
from cckm_refresh.runtime import iso
from cckm_refresh.table.access import TableAccess
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
    described,
    expires_at,
    key,
    plain,
    result_item,
    run_pk,
    to_item,
)
from cckm_refresh.text import MAX_MESSAGE

_TRANSACTION_ATTEMPTS = 8


class TransactionFailedError(RuntimeError):
    """DynamoDB kept cancelling a transaction for reasons other than our conditions."""


class RunBook(TableAccess):
    """The ``RUN`` and ``CHUNK`` items: a run's keys registered, counted and completed once."""

    # --- runs -------------------------------------------------------------------------------

    def start_run(self, run: RunInfo, request: str | None = None) -> bool:
        """Create the ``RUN`` item (``RUNNING``, ``resolving``) unless it exists; True when
        this call made it. ``request`` (the request as received) is kept beside it, in a
        ``REQUEST`` item, for the sweep to start the resolution again if every delivery of
        it was lost (a schedule whose invocations all failed)."""
        now = self._now()
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
        return self._transact([self._put_if_new(item), self._put_if_new(kept)]) is None

    def kept_request(self, run_id: str) -> str | None:
        """The request a run started from, as ``start_run`` kept it."""
        answer = self._db.get_item(
            TableName=self._table, Key=key(run_pk(run_id), REQUEST), ConsistentRead=True
        )
        return str(plain(answer["Item"])["body"]) if "Item" in answer else None

    def run_state(self, run_id: str) -> RunState | None:
        """The ``RUN`` item, strongly consistent; None when the run does not exist."""
        answer = self._db.get_item(
            TableName=self._table, Key=key(run_pk(run_id), RUN), ConsistentRead=True
        )
        if "Item" not in answer:
            return None
        return RunState.from_item(plain(answer["Item"]))

    def open_runs(self) -> list[RunState]:
        """Every run still RUNNING (the by-key index's ``RUNS#OPEN`` partition)."""
        pages = self._db.get_paginator("query").paginate(
            TableName=self._table,
            IndexName=BY_KEY_INDEX,
            KeyConditionExpression="gsi1pk = :open",
            ExpressionAttributeValues={":open": {"S": OPEN_RUNS}},
        )
        return [RunState.from_item(plain(i)) for page in pages for i in page.get("Items", [])]

    def open_chunks(self, run_id: str) -> list[OpenChunk]:
        """The run's chunks registered and not closed."""
        pages = self._db.get_paginator("query").paginate(
            TableName=self._table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :chunk)",
            FilterExpression="chunk_status = :open",
            ExpressionAttributeValues=to_item(
                {":pk": run_pk(run_id), ":chunk": CHUNK_PREFIX, ":open": "OPEN"}
            ),
            ConsistentRead=True,
        )
        chunks = (plain(i) for page in pages for i in page.get("Items", []))
        return [OpenChunk(str(c["chunk_id"]), c.get("tenancy"), tuple(c["keys"])) for c in chunks]

    def swept(self, run_id: str, sweeps: int) -> None:
        """The sweep queued the run's work again: its ``sweeps``-th time, counted as progress."""
        values = {":n": sweeps, ":now": _epoch(self._now())}
        self._update_running(run_id, "SET sweeps = :n, progress_at = :now", values)

    def record_listing_failure(self, run_id: str, error_code: str, message: str) -> None:
        """The run's listing could not be read completely: said on the ``RUN`` item (its
        completion is notified as an ERROR); the keys listed so far are refreshed."""
        failure = {"error_code": error_code, "error_message": message[:MAX_MESSAGE]}
        self._update_running(run_id, "SET listing_error = :failure", {":failure": failure})

    def _update_running(self, run_id: str, update: str, values: dict[str, Any]) -> None:
        """Update the ``RUN`` item while it runs (a completed run is left as it finished)."""
        try:
            self._db.update_item(
                TableName=self._table,
                Key=key(run_pk(run_id), RUN),
                UpdateExpression=update,
                ConditionExpression="#s = :running",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=to_item(values | {":running": RunStatus.RUNNING}),
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return

    def hand_on_resolution(self, run_id: str, segment: str, next_segment: str) -> bool:
        """Pass the resolution from ``segment`` to the continuation that starts at
        ``next_segment``; False when ``segment`` no longer owns it (a stale delivery)."""
        update = "SET resolving = :next, progress_at = :now"
        return self._move_resolution(run_id, segment, update, next_segment)

    def finish_resolution(self, run_id: str, segment: str = FIRST_SEGMENT) -> bool:
        """Every key of the run is registered: completion may now happen. False when
        ``segment`` does not own the resolution (another delivery does, or it is done)."""
        return self._move_resolution(
            run_id, segment, "REMOVE resolving SET progress_at = :now", None
        )

    def _move_resolution(
        self, run_id: str, segment: str, update: str, next_segment: str | None
    ) -> bool:
        values = {":segment": segment, ":now": _epoch(self._now())}
        values |= {":next": next_segment} if next_segment else {}
        try:
            self._db.update_item(
                TableName=self._table,
                Key=key(run_pk(run_id), RUN),
                UpdateExpression=update,
                ConditionExpression="resolving = :segment",
                ExpressionAttributeValues=to_item(values),
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def complete_if_done(self, run_id: str) -> RunCounts | None:
        """Turn the run ``COMPLETED`` when no chunk is open and resolution has finished.

        Returns the counts when this call completed the run; None when it is not done yet or
        was already completed (the condition makes completion happen exactly once).
        """
        state = self.run_state(run_id)
        if state is None or state.completed or state.resolving or state.open_chunks > 0:
            return None
        try:
            self._db.update_item(
                TableName=self._table,
                Key=key(run_pk(run_id), RUN),
                # A run with no chunk (a selector matching nothing) has no counts yet: the
                # contract's RUN item carries them at completion, zeros included.
                UpdateExpression="SET #s = :done, finished_at = :now"
                + "".join(f", {n} = if_not_exists({n}, :zero)" for n in TALLY_FIELDS)
                + " REMOVE gsi1pk, gsi1sk",
                ConditionExpression=(
                    "#s = :running AND open_chunks = :zero AND attribute_not_exists(resolving)"
                ),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=to_item(
                    {
                        ":done": RunStatus.COMPLETED,
                        ":running": RunStatus.RUNNING,
                        ":zero": 0,
                        ":now": iso(self._now()),
                    }
                ),
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return None
        return state.counts

    # --- chunks -----------------------------------------------------------------------------

    def register_chunk(
        self, run: RunInfo, chunk_id: str, tenancy: str | None, entries: Sequence[KeyEntry]
    ) -> tuple[KeyEntry, ...]:
        """Register a chunk of keys with the run (one transaction); return its keys.

        Keys that already have a result in the run belong to another chunk (or are done) and
        are left out. A chunk registered before (a retried fan-out) is returned as it was
        registered, and counted nothing again. An empty tuple: nothing left to send.
        """
        if len(entries) > MAX_CHUNK_KEYS:
            raise ValueError(f"a chunk holds at most {MAX_CHUNK_KEYS} keys")
        remaining = list(entries)
        for _ in range(_TRANSACTION_ATTEMPTS + MAX_CHUNK_KEYS):
            if not remaining:
                return ()
            failed = self._transact(self._registration(run, chunk_id, tenancy, remaining))
            if failed is None:
                return tuple(remaining)
            if failed & {0, 1}:
                # 1: the run completed before this chunk came, nothing joins it;
                # 0: the chunk was registered before (a retried fan-out), as it was then.
                return () if 1 in failed else self._registered_keys(run.run_id, chunk_id, entries)
            remaining = _without_refused(remaining, failed, first=2)
        raise TransactionFailedError("could not register the chunk")

    def _registration(
        self, run: RunInfo, chunk_id: str, tenancy: str | None, entries: Sequence[KeyEntry]
    ) -> list[dict[str, Any]]:
        """The transaction that registers a chunk: its ``CHUNK`` item (index 0), the run's
        counts (1), a ``PENDING`` result per key (2...), each only if new."""
        pk = run_pk(run.run_id)
        now = iso(self._now())
        expires = self._expires_at()
        chunk = {
            "pk": pk,
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
        count = {
            "Update": {
                "TableName": self._table,
                "Key": key(pk, RUN),
                "UpdateExpression": "ADD requested :n, open_chunks :one SET progress_at = :now",
                # A completed run keeps its counts: nothing joins it any more.
                "ConditionExpression": "#s = :running",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": to_item(
                    {
                        ":n": len(entries),
                        ":one": 1,
                        ":running": RunStatus.RUNNING,
                        ":now": _epoch(self._now()),
                    }
                ),
            }
        }
        results = []
        for entry in entries:
            pending = described(RefreshOutcome(KeyInfo(entry.key_id), Status.PENDING), entry.known)
            item = result_item(
                run.run_id, RecordedResult(pending, entry.version_before, False), now, expires
            )
            results.append(self._put_if_new(item | {"chunk_id": chunk_id}))
        return [self._put_if_new(chunk), count, *results]

    def _put_if_new(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self._table,
                "Item": to_item(item),
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    def _registered_keys(
        self, run_id: str, chunk_id: str, entries: Sequence[KeyEntry]
    ) -> tuple[KeyEntry, ...]:
        answer = self._db.get_item(
            TableName=self._table,
            Key=key(run_pk(run_id), chunk_sk(chunk_id)),
            ConsistentRead=True,
            ProjectionExpression="#k",
            ExpressionAttributeNames={"#k": "keys"},
        )
        registered = set(plain(answer.get("Item", {})).get("keys", []))
        return tuple(entry for entry in entries if entry.key_id in registered)

    def record_found_nothing(self, run: RunInfo, outcomes: Sequence[RefreshOutcome]) -> int:
        """Record terminal outcomes known before any refresh (an OCID that matches no key, a
        last delivery out of time): each result once, counted once. How many were new."""
        recorded = 0
        for start in range(0, len(outcomes), MAX_CHUNK_KEYS):
            new = self._record_terminal(run, list(outcomes[start : start + MAX_CHUNK_KEYS]))
            if new is None:
                break  # the run completed: it keeps its counts
            recorded += new
        return recorded

    def _record_terminal(self, run: RunInfo, batch: list[RefreshOutcome]) -> int | None:
        """One transaction: the results that are new to the run, and their counts; None when
        the run is no longer running."""
        for _ in range(_TRANSACTION_ATTEMPTS + len(batch)):
            if not batch:
                return 0
            failed = self._transact(self._terminal_results(run, batch))
            if failed is None:
                return len(batch)
            if 0 in failed:
                return None
            batch = _without_refused(batch, failed, first=1)
        raise TransactionFailedError("could not record the keys found missing")

    def _terminal_results(self, run: RunInfo, batch: Sequence[RefreshOutcome]) -> list[Any]:
        tally = ChunkTally()
        for outcome in batch:
            tally = tally.add(outcome.status, False)
        count = {
            "Update": {
                "TableName": self._table,
                "Key": key(run_pk(run.run_id), RUN),
                "UpdateExpression": _tally_expression(tally, "ADD requested :n"),
                "ConditionExpression": "#s = :running",
                "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": to_item(
                    _tally_values(tally)
                    | {":n": len(batch), ":running": RunStatus.RUNNING, ":now": _epoch(self._now())}
                ),
            }
        }
        now, expires = iso(self._now()), self._expires_at()
        results = [
            self._put_if_new(result_item(run.run_id, RecordedResult(o, None, False), now, expires))
            for o in batch
        ]
        return [count, *results]

    def finish_chunk(
        self, run_id: str, chunk_id: str, tally: ChunkTally, pace: TenancyPace | None = None
    ) -> bool:
        """Close a chunk whose keys are all terminal and add its counts to the run, once,
        handing on its tenancy's ``pace`` in the same transaction. False when it was closed
        before (a duplicate or late delivery): then nothing is written."""
        pk = run_pk(run_id)
        items = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": key(pk, chunk_sk(chunk_id)),
                    "UpdateExpression": "SET chunk_status = :done, finished_at = :now",
                    "ConditionExpression": "chunk_status = :open",
                    "ExpressionAttributeValues": to_item(
                        {":done": "DONE", ":open": "OPEN", ":now": iso(self._now())}
                    ),
                }
            },
            {
                "Update": {
                    "TableName": self._table,
                    "Key": key(pk, RUN),
                    "UpdateExpression": _tally_expression(tally, "ADD open_chunks :minus"),
                    "ExpressionAttributeValues": to_item(
                        _tally_values(tally) | {":minus": -1, ":now": _epoch(self._now())}
                    ),
                }
            },
        ]
        if pace is not None:
            items.append({"Put": {"TableName": self._table, "Item": to_item(self._pace(pace))}})
        return self._transact(items) is None

    def record_pace(self, pace: TenancyPace) -> None:
        """Hand on when the tenancy's latest attempt left, for its next invocation."""
        self._db.put_item(TableName=self._table, Item=to_item(self._pace(pace)))

    def _pace(self, pace: TenancyPace) -> dict[str, Any]:
        now = self._now()
        return pace.item(iso(now), expires_at(now, PACE_RETENTION))

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


def _tally_expression(tally: ChunkTally, head: str) -> str:
    """``head`` and the tally's ADDs, and the run's progress marked."""
    return head + "".join(f", {name} :{name}" for name in TALLY_FIELDS) + " SET progress_at = :now"


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _tally_values(tally: ChunkTally) -> dict[str, int]:
    return {f":{name}": count for name, count in tally.as_dict().items()}


K = TypeVar("K", KeyEntry, RefreshOutcome)


def _without_refused(keys: list[K], failed: set[int], *, first: int) -> list[K]:
    """``keys`` less those whose put a transaction refused (the transaction's items from
    index ``first`` on are one per key, in order): they are in the run already."""
    taken = {keys[i - first].key_id for i in failed if i >= first}
    return [key for key in keys if key.key_id not in taken]
