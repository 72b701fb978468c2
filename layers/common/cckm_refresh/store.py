"""The results table of CONTRACT section 5: runs, per-key results, each key's latest state,
rejected requests. The only module of the refresh path that talks to DynamoDB.

Writes are as few as correctness allows: result items go in batches of 25; each terminal
outcome makes one conditional ``UpdateItem`` on its ``KEY`` item, which only moves forward and
hands back the previous version in the same call.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from cckm_refresh.clock import iso, utc_now
from cckm_refresh.ctm.errors import MAX_MESSAGE
from cckm_refresh.ctm.ids import KeyIdKind, classify_key_id
from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, Status

BATCH_WRITE = 25
BATCH_GET = 100
MAX_REJECTED_BODY = 4000
_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


@dataclass(frozen=True)
class RecordedResult:
    """An outcome as stored, with what comparing it to the ``KEY`` item revealed."""

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


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _item(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in attributes.items() if v is not None}


def _plain(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def _is_cckm_id(key_id: str) -> bool:
    try:
        return classify_key_id(key_id)[0] is KeyIdKind.CCKM
    except ValueError:
        return False


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

    def start_run(self, run: RunInfo, requested: int) -> bool:
        """Create the ``RUN`` item (``RUNNING``) unless it exists; True when this call made it."""
        item = {
            "pk": f"RUN#{run.run_id}",
            "sk": "RUN",
            "item_type": "RUN",
            "run_id": run.run_id,
            "trigger": str(run.trigger),
            "request_id": run.request_id,
            "reason": run.reason,
            "dry_run": run.dry_run,
            "requested": requested,
            "status": "RUNNING",
            "started_at": iso(self._now()),
            "expires_at": self._expires_at(),
        }
        return self._put_new(item)

    def complete_if_done(self, run_id: str) -> RunCounts | None:
        """Turn the run ``COMPLETED`` with its counts when every requested key is terminal.

        Returns the counts when this call completed the run; None when it is not done yet or
        was already completed (the condition makes completion happen exactly once).
        """
        run: dict[str, Any] | None = None
        statuses: Counter[str] = Counter()
        rotated = 0
        for item in self._query_partition(f"RUN#{run_id}"):
            if item.get("sk") == "RUN":
                run = item
            elif item.get("item_type") == "RESULT":
                statuses[str(item.get("status"))] += 1
                rotated += bool(item.get("version_changed"))
        if run is None or run.get("status") != "RUNNING":
            return None
        terminal = sum(n for s, n in statuses.items() if s != Status.PENDING)
        requested = int(run.get("requested", 0))
        if statuses[Status.PENDING] or terminal < requested:
            return None
        counts = RunCounts(
            run_id=run_id,
            requested=requested,
            refreshed=statuses[Status.REFRESHED],
            not_found=statuses[Status.NOT_FOUND],
            failed=statuses[Status.FAILED],
            skipped=statuses[Status.SKIPPED],
            rotated=rotated,
        )
        try:
            self._db.update_item(
                TableName=self._table,
                Key=_key(f"RUN#{run_id}", "RUN"),
                UpdateExpression=(
                    "SET #s = :done, finished_at = :now, refreshed = :r, not_found = :n, "
                    "failed = :f, skipped = :k, rotated = :t"
                ),
                ConditionExpression="#s = :running",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=_item(
                    {
                        ":done": "COMPLETED",
                        ":running": "RUNNING",
                        ":now": iso(self._now()),
                        ":r": counts.refreshed,
                        ":n": counts.not_found,
                        ":f": counts.failed,
                        ":k": counts.skipped,
                        ":t": counts.rotated,
                    }
                ),
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return None
        return counts

    def _query_partition(self, pk: str) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
            # Only what counting needs: a run of thousands of keys stays a few small pages.
            "ProjectionExpression": "sk, item_type, #s, version_changed, requested",
            "ExpressionAttributeNames": {"#s": "status"},
        }
        while True:
            page = self._db.query(**kwargs)
            yield from (_plain(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    # --- reads before a run -----------------------------------------------------------------

    def results_of(self, run_id: str, key_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The run's existing result items for ``key_ids`` (strongly consistent), by key id."""
        keys = [(f"RUN#{run_id}", f"KEY#{k}") for k in key_ids]
        return {item["key_id"]: item for item in self._batch_get(keys, consistent=True)}

    def latest_of(self, key_ids: Sequence[str]) -> dict[str, KeyInfo]:
        """The ``LATEST`` state of each known key: its tenancy paces it, its version compares."""
        keys = [(f"KEY#{k}", "LATEST") for k in key_ids if _is_cckm_id(k)]
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

    # --- writes -----------------------------------------------------------------------------

    def track(self, run: RunInfo, pending: Iterable[RefreshOutcome]) -> None:
        """Write non-terminal results (``PENDING``) so the run lists every key it still owes."""
        self.write_results(run, [RecordedResult(o, None, False) for o in pending])

    def record(
        self, run: RunInfo, outcomes: Sequence[RefreshOutcome], previous: Mapping[str, KeyInfo]
    ) -> list[RecordedResult]:
        """Store ``outcomes``: move each key's ``KEY`` item forward, then batch the results."""
        recorded = [self.move_key_forward(run, o, previous.get(o.key_id)) for o in outcomes]
        self.write_results(run, recorded)
        return recorded

    def move_key_forward(
        self, run: RunInfo, outcome: RefreshOutcome, previous: KeyInfo | None
    ) -> RecordedResult:
        """Update the key's ``LATEST`` item unless a newer result got there first (one call);
        what it held before tells whether this result is a rotation."""
        outcome = outcome if outcome.recorded_at else replace(outcome, recorded_at=iso(self._now()))
        before = previous.current_key_version if previous else None
        if outcome.status in (Status.PENDING, Status.SKIPPED) or not _is_cckm_id(outcome.key_id):
            return RecordedResult(outcome, before, False)
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
        described = {
            "oci_key_id": outcome.oci_key_id,
            "display_name": outcome.display_name,
            "tenancy": outcome.tenancy,
            "region": outcome.region,
            "vault_name": outcome.vault_name,
        }
        if refreshed:
            described |= {
                "lifecycle_state": outcome.lifecycle_state,
                "current_key_version": outcome.current_key_version,
                "last_refreshed_at": outcome.refreshed_at or outcome.recorded_at,
            }
        names: dict[str, str] = {}
        for name, value in described.items():
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
            # A newer result already moved the key: this one is history, not a change.
            return RecordedResult(outcome, before, False)
        current = outcome.current_key_version
        stored = _plain(response.get("Attributes", {})).get("current_key_version")
        # A rotation is a change from what the key held when this run looked at it (``before``,
        # read at its start) or just before this write. Either view alone misses one case: two
        # deliveries of one message at once both start from the old version, and the second
        # write already finds the new one.
        for previous_version in (stored, before):
            if refreshed and previous_version and previous_version != current:
                return RecordedResult(outcome, previous_version, True)
        return RecordedResult(outcome, stored or before, False)

    def write_results(self, run: RunInfo, recorded: Sequence[RecordedResult]) -> None:
        """Put the run's result items, 25 per ``BatchWriteItem``."""
        expires_at = self._expires_at()
        now = iso(self._now())
        requests = []
        for result in recorded:
            o = result.outcome
            at = o.recorded_at or now
            item = {
                "pk": f"RUN#{run.run_id}",
                "sk": f"KEY#{o.key_id}",
                "item_type": "RESULT",
                "run_id": run.run_id,
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
                "recorded_at": at,
                "gsi1pk": f"KEY#{o.key_id}",
                "gsi1sk": at,
                "expires_at": expires_at,
            }
            requests.append({"PutRequest": {"Item": _item(item)}})
        for start in range(0, len(requests), BATCH_WRITE):
            self._batch_write(requests[start : start + BATCH_WRITE])

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        pending: dict[str, Any] = {self._table: requests}
        for attempt in range(10):
            response = self._db.batch_write_item(RequestItems=pending)
            pending = response.get("UnprocessedItems") or {}
            if not pending:
                return
            self._backoff(attempt)
        raise RuntimeError("DynamoDB left results unwritten after 10 attempts")

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
        self._sleep(min(2.0, 0.05 * 2**attempt))

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
