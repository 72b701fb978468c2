"""What the operator CLI, the notifier's run digest and the demo read from the table: a run, its
results, a key's latest state and its results over time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cckm_refresh.table.access import TableClient
from cckm_refresh.table.items import BY_KEY_INDEX, KEY_PREFIX, LATEST, RUN, key_pk, plain, run_pk


class TableReader(TableClient):
    """Reads the results table (items as plain values)."""

    def run(self, run_id: str) -> dict[str, Any] | None:
        return self.item(run_pk(run_id), RUN)

    def latest(self, key_id: str) -> dict[str, Any] | None:
        return self.item(key_pk(key_id), LATEST)

    def results(
        self, run_id: str, *, status: str | None = None, fields: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every result item of a run (only those with ``status``; only ``fields``)."""
        query: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :key)",
            "ExpressionAttributeValues": {
                ":pk": {"S": run_pk(run_id)},
                ":key": {"S": KEY_PREFIX},
            },
        }
        if status is not None:
            query["FilterExpression"] = "#s = :status"
            query["ExpressionAttributeNames"] = {"#s": "status"}
            query["ExpressionAttributeValues"][":status"] = {"S": status}
        if fields is not None:
            query["ProjectionExpression"] = fields
        return self._query(**query)

    def history(self, key_id: str, limit: int) -> list[dict[str, Any]]:
        """A key's last ``limit`` results, newest first (the ``by-key`` index)."""
        answer = self._db.query(
            TableName=self.table_name,
            IndexName=BY_KEY_INDEX,
            KeyConditionExpression="gsi1pk = :k",
            ExpressionAttributeValues={":k": {"S": key_pk(key_id)}},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [plain(item) for item in answer.get("Items", [])]
