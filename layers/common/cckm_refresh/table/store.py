"""What the refresh path reads and writes the table with (``run.ports.RunTable``): runs and
chunks (``RunBook``), each key's outcome in a run (``RESULT`` items) and its latest state (``KEY``
items), and rejected requests. Outcomes are written conditionally, so that a terminal result is
never replaced and a key's latest state only moves forward."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from cckm_refresh.model import LOCATION_FIELDS, KeyInfo, RefreshOutcome, RunInfo, Status
from cckm_refresh.runtime import iso
from cckm_refresh.table.items import (
    LATEST,
    MAX_REJECTED_BODY,
    PACE,
    REQUEST,
    RecordedResult,
    TenancyPace,
    is_cckm_id,
    key,
    key_pk,
    plain,
    rejected_pk,
    result_item,
    run_pk,
    tenancy_pk,
    to_item,
)
from cckm_refresh.table.runs import RunBook
from cckm_refresh.text import MAX_MESSAGE

BATCH_GET = 100


class ResultStore(RunBook):
    """Runs and chunks (``RunBook``), outcomes and latest states, and their reads."""

    def results_and_pace(
        self, run_id: str, key_ids: Sequence[str], tenancy: str | None
    ) -> tuple[dict[str, dict[str, Any]], TenancyPace | None]:
        """The run's existing result items for ``key_ids`` (strongly consistent), by key id, and
        in the same read the pace ``tenancy``'s previous invocation handed on (None: no tenancy
        asked, or none recorded)."""
        keys = [(run_pk(run_id), key_pk(k)) for k in key_ids]
        if tenancy is not None:
            keys.append((tenancy_pk(tenancy), PACE))
        results: dict[str, dict[str, Any]] = {}
        pace = None
        for item in self._batch_get(keys, consistent=True):
            if item.get("sk") == PACE:
                pace = TenancyPace(str(item["tenancy"]), int(item["last_sent_ms"]))
            else:
                results[item["key_id"]] = item
        return results, pace

    def latest_of(self, key_ids: Sequence[str]) -> dict[str, KeyInfo]:
        """The ``LATEST`` state of each known key: its tenancy routes it, its version compares."""
        keys = [(key_pk(k), LATEST) for k in key_ids if is_cckm_id(k)]
        items = self._batch_get(keys, consistent=False)
        return {item["key_id"]: KeyInfo.from_item(item) for item in items}

    def _batch_get(
        self, keys: Sequence[tuple[str, str]], *, consistent: bool
    ) -> Iterator[dict[str, Any]]:
        for start in range(0, len(keys), BATCH_GET):
            request: dict[str, Any] = {
                self.table_name: {
                    "Keys": [key(pk, sk) for pk, sk in keys[start : start + BATCH_GET]],
                    "ConsistentRead": consistent,
                }
            }
            for attempt in range(10):
                page = self._db.batch_get_item(RequestItems=request)
                yield from (plain(i) for i in page.get("Responses", {}).get(self.table_name, []))
                request = page.get("UnprocessedKeys") or {}
                if not request:
                    break
                self._backoff(attempt)
            else:
                raise RuntimeError("DynamoDB left keys unprocessed after 10 attempts")

    def record(
        self, run: RunInfo, outcome: RefreshOutcome, before: KeyInfo | None
    ) -> RecordedResult | None:
        """Store one outcome as soon as it is known: the key's ``LATEST`` item moved forward,
        then its result unless terminal already (None: another delivery got there first).
        A rotation is a change from ``before``, the key as the run found it (docs/reference.md
        5), so a resumed run still records each rotation once."""
        at = outcome.recorded_at or iso(self.now())
        outcome = replace(outcome, recorded_at=at)
        old_version = self._move_key_forward(run, outcome)
        previous = (before.current_key_version if before else None) or old_version
        changed = bool(
            outcome.status is Status.REFRESHED
            and previous
            and outcome.key.current_key_version
            and previous != outcome.key.current_key_version
        )
        result = RecordedResult(outcome, previous, changed)
        try:
            self._db.put_item(
                TableName=self.table_name,
                Item=to_item(result_item(run.run_id, result, at, self._expires_at())),
                ConditionExpression="attribute_not_exists(pk) OR #s = :pending",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":pending": {"S": str(Status.PENDING)}},
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return None
        return result

    def _move_key_forward(self, run: RunInfo, outcome: RefreshOutcome) -> str | None:
        """Update the key's ``LATEST`` item unless a newer result got there first; return the
        version it held before. It carries ``changed`` only when this refresh changed its
        version or state, for the notify function's stream filter (docs/reference.md 5): the
        first update expects the key unchanged (one call for almost every key), the second,
        when that is refused, says it changed."""
        if outcome.status in (Status.PENDING, Status.SKIPPED) or not is_cckm_id(outcome.key_id):
            return None
        update, values = _latest_update(run, outcome)
        newer = "attribute_not_exists(pk) OR updated_at <= :updated_at"
        same = " AND ".join(
            f"#{n} = :{n}" for n in ("current_key_version", "lifecycle_state") if f":{n}" in values
        )
        unchanged = f"attribute_not_exists(pk) OR (updated_at <= :updated_at AND {same})"
        condition = unchanged if same else newer
        pk, old = key_pk(outcome.key_id), {"ReturnValues": "ALL_OLD"}
        first = self._update(pk, LATEST, f"{update} REMOVE changed", values, condition)
        response = self._updated(first | old)
        if response is None and same:  # refused: newer elsewhere, or this refresh changed it
            values[":true"] = True
            second = self._update(pk, LATEST, f"{update}, changed = :true", values, newer)
            response = self._updated(second | old)
        if response is None:
            return None  # a newer result already moved the key: this one is history
        stored = plain(response.get("Attributes", {})).get("current_key_version")
        return str(stored) if stored is not None else None

    def record_rejected(self, source_id: str, error: str, body: str) -> bool:
        """Record a rejected request once (a redelivery makes no second item or notification)."""
        item = {
            "pk": rejected_pk(source_id),
            "sk": REQUEST,
            "item_type": "REJECTED",
            "error": error[:MAX_MESSAGE],
            "body": body[:MAX_REJECTED_BODY],
            "received_at": iso(self.now()),
            "expires_at": self._expires_at(),
        }
        return self._put_new(item)


def _latest_update(run: RunInfo, outcome: RefreshOutcome) -> tuple[str, dict[str, Any]]:
    """The ``KEY`` item's update: where the key lives, always; its state, version and refresh
    time only from a refresh."""
    refreshed = outcome.status is Status.REFRESHED
    known = outcome.key if refreshed else outcome.key.location()
    fields = {
        "item_type": "KEY",
        "key_id": outcome.key_id,
        "last_status": str(outcome.status),
        "last_run_id": run.run_id,
        "updated_at": outcome.recorded_at,
        "lifecycle_state": known.lifecycle_state,
        "current_key_version": known.current_key_version,
        "last_refreshed_at": (known.refreshed_at or outcome.recorded_at) if refreshed else None,
    } | {name: getattr(known, name) for name in LOCATION_FIELDS}
    # "region" and others are DynamoDB reserved words: each is set as #name
    sets = [f"#{name} = :{name}" for name, value in fields.items() if value is not None]
    values = {f":{name}": value for name, value in fields.items() if value is not None}
    values[":zero"] = 0
    if outcome.status is Status.FAILED:
        sets.append("consecutive_failures = if_not_exists(consecutive_failures, :zero) + :one")
        values[":one"] = 1
    else:
        sets.append("consecutive_failures = :zero")
    return "SET " + ", ".join(sets), values
