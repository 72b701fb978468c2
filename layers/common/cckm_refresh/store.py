"""The results table of CONTRACT section 5 as the refresh path uses it: runs, their chunks,
per-key results, each key's latest state, rejected requests. The only module of the refresh
path that talks to DynamoDB.

How a run stays exact whatever fails (CONTRACT 4.3), at a cost per key that does not grow
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

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from cckm_refresh import backoff
from cckm_refresh.clock import iso, utc_now
from cckm_refresh.keyids import KeyIdKind, classify_key_id
from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, Status
from cckm_refresh.text import MAX_MESSAGE

BATCH_GET = 100
FIRST_SEGMENT = "start"
# A transaction holds at most 100 items: the CHUNK item, the RUN update and 98 results.
MAX_CHUNK_KEYS = 98
MAX_REJECTED_BODY = 4000
_TRANSACTION_ATTEMPTS = 8
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


@dataclass(frozen=True)
class RecordedResult:
    """An outcome as stored, with what comparing it to the version before the run revealed."""

    outcome: RefreshOutcome
    previous_key_version: str | None
    version_changed: bool


@dataclass(frozen=True)
class RunCounts:
    run_id: str
    requested: int
    refreshed: int
    not_found: int
    failed: int
    skipped: int
    rotated: int

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> RunCounts:
        return cls(
            run_id=str(item["run_id"]),
            requested=int(item.get("requested", 0)),
            refreshed=int(item.get("refreshed", 0)),
            not_found=int(item.get("not_found", 0)),
            failed=int(item.get("failed", 0)),
            skipped=int(item.get("skipped", 0)),
            rotated=int(item.get("rotated", 0)),
        )


@dataclass(frozen=True)
class RunState:
    """The ``RUN`` item as the run rules need it."""

    run_id: str
    status: str
    resolving: bool
    open_chunks: int
    counts: RunCounts

    @property
    def completed(self) -> bool:
        return self.status == "COMPLETED"


@dataclass(frozen=True)
class KeyEntry:
    """A key as registered in a chunk: its id and what was known of it before the run."""

    key_id: str
    known: KeyInfo | None = None

    @property
    def version_before(self) -> str | None:
        return self.known.current_key_version if self.known else None


@dataclass(frozen=True)
class ChunkTally:
    """The counts a finished chunk adds to its run."""

    refreshed: int = 0
    not_found: int = 0
    failed: int = 0
    skipped: int = 0
    rotated: int = 0

    def add(self, status: Status, rotated: bool) -> ChunkTally:
        field = {
            Status.REFRESHED: "refreshed",
            Status.NOT_FOUND: "not_found",
            Status.FAILED: "failed",
            Status.SKIPPED: "skipped",
        }[status]
        return replace(
            self, **{field: getattr(self, field) + 1, "rotated": self.rotated + int(rotated)}
        )


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _item(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in attributes.items() if v is not None}


def _plain(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def is_cckm_id(key_id: str) -> bool:
    try:
        return classify_key_id(key_id)[0] is KeyIdKind.CCKM
    except ValueError:
        return False


class TransactionFailedError(RuntimeError):
    """DynamoDB kept cancelling a transaction for reasons other than our conditions."""


class ResultStore:
    """Reads and writes the results table. ``client`` is a boto3 DynamoDB client."""

    def __init__(
        self,
        client: Any,
        table_name: str,
        retention_days: int,
        *,
        now: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._db = client
        self._table = table_name
        self._retention = timedelta(days=retention_days)
        self._now = now
        self._sleep = sleep

    def _expires_at(self) -> int:
        return int((self._now() + self._retention).timestamp())

    # --- runs -------------------------------------------------------------------------------

    def start_run(self, run: RunInfo) -> bool:
        """Create the ``RUN`` item (``RUNNING``, ``resolving``) unless it exists; True when
        this call made it."""
        item = {
            "pk": f"RUN#{run.run_id}",
            "sk": "RUN",
            "item_type": "RUN",
            "run_id": run.run_id,
            "trigger": str(run.trigger),
            "request_id": run.request_id,
            "reason": run.reason,
            "dry_run": run.dry_run,
            "requested": 0,
            "open_chunks": 0,
            "resolving": FIRST_SEGMENT,
            "status": "RUNNING",
            "started_at": iso(self._now()),
            "expires_at": self._expires_at(),
        }
        return self._put_new(item)

    def run_state(self, run_id: str) -> RunState | None:
        """The ``RUN`` item, strongly consistent; None when the run does not exist."""
        answer = self._db.get_item(
            TableName=self._table, Key=_key(f"RUN#{run_id}", "RUN"), ConsistentRead=True
        )
        if "Item" not in answer:
            return None
        item = _plain(answer["Item"])
        return RunState(
            run_id=run_id,
            status=str(item.get("status", "RUNNING")),
            resolving=bool(item.get("resolving")),
            open_chunks=int(item.get("open_chunks", 0)),
            counts=RunCounts.from_item(item),
        )

    def hand_on_resolution(self, run_id: str, segment: str, next_segment: str) -> bool:
        """Pass the resolution from ``segment`` to the continuation that starts at
        ``next_segment``; False when ``segment`` no longer owns it (a stale delivery)."""
        return self._move_resolution(run_id, segment, "SET resolving = :next", next_segment)

    def finish_resolution(self, run_id: str, segment: str = FIRST_SEGMENT) -> bool:
        """Every key of the run is registered: completion may now happen. False when
        ``segment`` does not own the resolution (another delivery does, or it is done)."""
        return self._move_resolution(run_id, segment, "REMOVE resolving", None)

    def _move_resolution(
        self, run_id: str, segment: str, update: str, next_segment: str | None
    ) -> bool:
        values = {":segment": segment} | ({":next": next_segment} if next_segment else {})
        try:
            self._db.update_item(
                TableName=self._table,
                Key=_key(f"RUN#{run_id}", "RUN"),
                UpdateExpression=update,
                ConditionExpression="resolving = :segment",
                ExpressionAttributeValues=_item(values),
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
                Key=_key(f"RUN#{run_id}", "RUN"),
                UpdateExpression="SET #s = :done, finished_at = :now",
                ConditionExpression=(
                    "#s = :running AND open_chunks = :zero AND attribute_not_exists(resolving)"
                ),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=_item(
                    {
                        ":done": "COMPLETED",
                        ":running": "RUNNING",
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
        pk = f"RUN#{run.run_id}"
        remaining = list(entries)
        now = iso(self._now())
        expires_at = self._expires_at()
        for _ in range(_TRANSACTION_ATTEMPTS + MAX_CHUNK_KEYS):
            if not remaining:
                return ()
            chunk = {
                "pk": pk,
                "sk": f"CHUNK#{chunk_id}",
                "item_type": "CHUNK",
                "run_id": run.run_id,
                "chunk_id": chunk_id,
                "tenancy": tenancy,
                "keys": [entry.key_id for entry in remaining],
                "chunk_status": "OPEN",
                "registered_at": now,
                "expires_at": expires_at,
            }
            items: list[dict[str, Any]] = [
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": _item(chunk),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": _key(pk, "RUN"),
                        "UpdateExpression": "ADD requested :n, open_chunks :one",
                        # A completed run keeps its counts: nothing joins it any more.
                        "ConditionExpression": "#s = :running",
                        "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": _item(
                            {":n": len(remaining), ":one": 1, ":running": "RUNNING"}
                        ),
                    }
                },
            ]
            for entry in remaining:
                pending = RefreshOutcome(key_id=entry.key_id, status=Status.PENDING)
                items.append(
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": _item(
                                self._result_item(
                                    run.run_id,
                                    RecordedResult(
                                        described(pending, entry.known),
                                        entry.version_before,
                                        False,
                                    ),
                                    now,
                                    expires_at,
                                )
                                | {"chunk_id": chunk_id}
                            ),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    }
                )
            failed = self._transact(items)
            if failed is None:
                return tuple(remaining)
            if 1 in failed:
                return ()  # the run completed before this chunk came: nothing joins it
            if 0 in failed:
                return self._registered_keys(run.run_id, chunk_id, entries)
            taken = {remaining[i - 2].key_id for i in failed if i >= 2}
            remaining = [entry for entry in remaining if entry.key_id not in taken]
        raise TransactionFailedError("could not register the chunk")

    def _registered_keys(
        self, run_id: str, chunk_id: str, entries: Sequence[KeyEntry]
    ) -> tuple[KeyEntry, ...]:
        answer = self._db.get_item(
            TableName=self._table,
            Key=_key(f"RUN#{run_id}", f"CHUNK#{chunk_id}"),
            ConsistentRead=True,
            ProjectionExpression="#k",
            ExpressionAttributeNames={"#k": "keys"},
        )
        registered = set(_plain(answer.get("Item", {})).get("keys", []))
        return tuple(entry for entry in entries if entry.key_id in registered)

    def record_found_nothing(self, run: RunInfo, outcomes: Sequence[RefreshOutcome]) -> int:
        """Record terminal outcomes known before any refresh (an OCID that matches no key, a
        last delivery out of time): each result once, counted once. How many were new."""
        pk = f"RUN#{run.run_id}"
        remaining = list(outcomes)
        recorded = 0
        while remaining:
            batch, remaining = remaining[:MAX_CHUNK_KEYS], remaining[MAX_CHUNK_KEYS:]
            now = iso(self._now())
            for _ in range(_TRANSACTION_ATTEMPTS + len(batch)):
                if not batch:
                    break
                tally = ChunkTally()
                for outcome in batch:
                    tally = tally.add(outcome.status, False)
                items: list[dict[str, Any]] = [
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": _key(pk, "RUN"),
                            "UpdateExpression": _tally_expression(tally, "ADD requested :n"),
                            "ConditionExpression": "#s = :running",
                            "ExpressionAttributeNames": {"#s": "status"},
                            "ExpressionAttributeValues": _item(
                                _tally_values(tally) | {":n": len(batch), ":running": "RUNNING"}
                            ),
                        }
                    }
                ]
                for outcome in batch:
                    result = RecordedResult(outcome, None, False)
                    items.append(
                        {
                            "Put": {
                                "TableName": self._table,
                                "Item": _item(
                                    self._result_item(run.run_id, result, now, self._expires_at())
                                ),
                                "ConditionExpression": "attribute_not_exists(pk)",
                            }
                        }
                    )
                failed = self._transact(items)
                if failed is None:
                    recorded += len(batch)
                    break
                if 0 in failed:
                    return recorded  # the run completed: it keeps its counts
                taken = {batch[i - 1].key_id for i in failed if i >= 1}
                batch = [o for o in batch if o.key_id not in taken]
        return recorded

    def finish_chunk(self, run_id: str, chunk_id: str, tally: ChunkTally) -> bool:
        """Close a chunk whose keys are all terminal and add its counts to the run, once.
        False when it was closed before (a duplicate or late delivery)."""
        pk = f"RUN#{run_id}"
        items = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": _key(pk, f"CHUNK#{chunk_id}"),
                    "UpdateExpression": "SET chunk_status = :done, finished_at = :now",
                    "ConditionExpression": "chunk_status = :open",
                    "ExpressionAttributeValues": _item(
                        {":done": "DONE", ":open": "OPEN", ":now": iso(self._now())}
                    ),
                }
            },
            {
                "Update": {
                    "TableName": self._table,
                    "Key": _key(pk, "RUN"),
                    "UpdateExpression": _tally_expression(tally, "ADD open_chunks :minus"),
                    "ExpressionAttributeValues": _item(_tally_values(tally) | {":minus": -1}),
                }
            },
        ]
        return self._transact(items) is None

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

    # --- reads before refreshing ------------------------------------------------------------

    def results_of(self, run_id: str, key_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The run's existing result items for ``key_ids`` (strongly consistent), by key id."""
        keys = [(f"RUN#{run_id}", f"KEY#{k}") for k in key_ids]
        return {item["key_id"]: item for item in self._batch_get(keys, consistent=True)}

    def latest_of(self, key_ids: Sequence[str]) -> dict[str, KeyInfo]:
        """The ``LATEST`` state of each known key: its tenancy routes it, its version compares."""
        keys = [(f"KEY#{k}", "LATEST") for k in key_ids if is_cckm_id(k)]
        found: dict[str, KeyInfo] = {}
        for item in self._batch_get(keys, consistent=False):
            found[item["key_id"]] = KeyInfo.from_item(item)
        return found

    def _batch_get(
        self, keys: Sequence[tuple[str, str]], *, consistent: bool
    ) -> Iterator[dict[str, Any]]:
        for start in range(0, len(keys), BATCH_GET):
            request: dict[str, Any] = {
                self._table: {
                    "Keys": [_key(pk, sk) for pk, sk in keys[start : start + BATCH_GET]],
                    "ConsistentRead": consistent,
                }
            }
            for attempt in range(10):
                page = self._db.batch_get_item(RequestItems=request)
                yield from (_plain(i) for i in page.get("Responses", {}).get(self._table, []))
                request = page.get("UnprocessedKeys") or {}
                if not request:
                    break
                self._backoff(attempt)
            else:
                raise RuntimeError("DynamoDB left keys unprocessed after 10 attempts")

    # --- writes as outcomes arrive ----------------------------------------------------------

    def record(
        self, run: RunInfo, outcome: RefreshOutcome, before: KeyInfo | None
    ) -> RecordedResult | None:
        """Store one outcome as soon as it is known: the key's ``LATEST`` item moved forward,
        then its result, conditionally. None when the result was terminal already (another
        delivery got there first): nothing is replaced.

        ``before`` is what the run knew of the key before touching it; a rotation is a change
        from its version (CONTRACT 5), so a resumed run still records each rotation once.
        """
        outcome = outcome if outcome.recorded_at else replace(outcome, recorded_at=iso(self._now()))
        old_version = self._move_key_forward(run, outcome)
        previous = (before.current_key_version if before else None) or old_version
        changed = bool(
            outcome.status is Status.REFRESHED
            and previous
            and outcome.current_key_version
            and previous != outcome.current_key_version
        )
        result = RecordedResult(outcome, previous, changed)
        item = self._result_item(
            run.run_id, result, outcome.recorded_at or iso(self._now()), self._expires_at()
        )
        try:
            self._db.put_item(
                TableName=self._table,
                Item=_item(item),
                ConditionExpression="attribute_not_exists(pk) OR #s = :pending",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":pending": {"S": str(Status.PENDING)}},
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return None
        return result

    def _move_key_forward(self, run: RunInfo, outcome: RefreshOutcome) -> str | None:
        """Update the key's ``LATEST`` item unless a newer result got there first (one call);
        return the version it held before."""
        if outcome.status in (Status.PENDING, Status.SKIPPED) or not is_cckm_id(outcome.key_id):
            return None
        refreshed = outcome.status is Status.REFRESHED
        values: dict[str, Any] = {
            ":type": "KEY",
            ":key_id": outcome.key_id,
            ":status": str(outcome.status),
            ":run": run.run_id,
            ":at": outcome.recorded_at,
            ":zero": 0,
        }
        sets = [
            "item_type = :type",
            "key_id = :key_id",
            "last_status = :status",
            "last_run_id = :run",
            "updated_at = :at",
        ]
        fields = {
            "oci_key_id": outcome.oci_key_id,
            "display_name": outcome.display_name,
            "tenancy": outcome.tenancy,
            "region": outcome.region,
            "vault_name": outcome.vault_name,
        }
        if refreshed:
            fields |= {
                "lifecycle_state": outcome.lifecycle_state,
                "current_key_version": outcome.current_key_version,
                "last_refreshed_at": outcome.refreshed_at or outcome.recorded_at,
            }
        names: dict[str, str] = {}
        for name, value in fields.items():
            if value is not None:  # "region" and others are DynamoDB reserved words: #name
                sets.append(f"#{name} = :{name}")
                names[f"#{name}"] = name
                values[f":{name}"] = value
        if outcome.status is Status.FAILED:
            sets.append("consecutive_failures = if_not_exists(consecutive_failures, :zero) + :one")
            values[":one"] = 1
        else:
            sets.append("consecutive_failures = :zero")
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key=_key(f"KEY#{outcome.key_id}", "LATEST"),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression="attribute_not_exists(pk) OR updated_at <= :at",
                ExpressionAttributeValues=_item(values),
                **({"ExpressionAttributeNames": names} if names else {}),
                ReturnValues="ALL_OLD",
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return None  # a newer result already moved the key: this one is history
        stored = _plain(response.get("Attributes", {})).get("current_key_version")
        return str(stored) if stored is not None else None

    def _result_item(
        self, run_id: str, result: RecordedResult, at: str, expires_at: int
    ) -> dict[str, Any]:
        o = result.outcome
        return {
            "pk": f"RUN#{run_id}",
            "sk": f"KEY#{o.key_id}",
            "item_type": "RESULT",
            "run_id": run_id,
            "key_id": o.key_id,
            "oci_key_id": o.oci_key_id,
            "display_name": o.display_name,
            "tenancy": o.tenancy,
            "region": o.region,
            "vault_name": o.vault_name,
            "status": str(o.status),
            "attempts": o.attempts,
            "duration_ms": o.duration_ms,
            "http_status": o.http_status,
            "error_code": o.error_code,
            "error_message": o.error_message[:MAX_MESSAGE] if o.error_message else None,
            "lifecycle_state": o.lifecycle_state,
            "current_key_version": o.current_key_version,
            "previous_key_version": result.previous_key_version,
            "version_changed": result.version_changed,
            "refreshed_at": o.refreshed_at,
            "recorded_at": o.recorded_at or at,
            "gsi1pk": f"KEY#{o.key_id}",
            "gsi1sk": o.recorded_at or at,
            "expires_at": expires_at,
        }

    def _put_new(self, item: Mapping[str, Any]) -> bool:
        """Put ``item`` unless its key exists; True when this call created it."""
        try:
            self._db.put_item(
                TableName=self._table,
                Item=_item(item),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def _backoff(self, attempt: int) -> None:
        self._sleep(backoff.full_jitter(attempt, 0.05, 2.0, random.random))

    def record_rejected(self, source_id: str, error: str, body: str) -> bool:
        """Record a rejected request once (a redelivery makes no second item or notification)."""
        item = {
            "pk": f"REJECTED#{source_id}",
            "sk": "REQUEST",
            "item_type": "REJECTED",
            "error": error[:MAX_MESSAGE],
            "body": body[:MAX_REJECTED_BODY],
            "received_at": iso(self._now()),
            "expires_at": self._expires_at(),
        }
        return self._put_new(item)


def described(outcome: RefreshOutcome, known: KeyInfo | None) -> RefreshOutcome:
    """``outcome`` with where the key lives, as far as it is known."""
    if known is None:
        return outcome
    return replace(
        outcome,
        oci_key_id=outcome.oci_key_id or known.oci_key_id,
        display_name=outcome.display_name or known.display_name,
        tenancy=outcome.tenancy or known.tenancy,
        region=outcome.region or known.region,
        vault_name=outcome.vault_name or known.vault_name,
    )


_TALLY_FIELDS = ("refreshed", "not_found", "failed", "skipped", "rotated")


def _tally_expression(tally: ChunkTally, head: str) -> str:
    return head + "".join(f", {name} :{name}" for name in _TALLY_FIELDS)


def _tally_values(tally: ChunkTally) -> dict[str, int]:
    return {f":{name}": getattr(tally, name) for name in _TALLY_FIELDS}
