"""What the operator CLI, the notifier's run digest and the demo read from the table: a run, its
results, a key's latest state (the CLI's ``cli.show.KeyHistory`` adds a key's results over time,
from the ``by-key`` index, which the notify function's role is not granted). ``TableClient``: the
one item read and the query pages every reader and writer of the table shares."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cckm_refresh.table.items import KEY_PREFIX, LATEST, RUN, key, key_pk, plain, run_pk, to_item


@dataclass(eq=False)
class TableClient:
    """The results table through a boto3 DynamoDB client, items as plain values."""

    _db: Any
    table_name: str

    def item(self, pk: str, sk: str) -> dict[str, Any] | None:
        """One item, strongly consistent; None when there is none."""
        answer = self._db.get_item(TableName=self.table_name, Key=key(pk, sk), ConsistentRead=True)
        return plain(answer["Item"]) if "Item" in answer else None

    def _query(self, **request: Any) -> Iterator[dict[str, Any]]:
        """Every item a query finds, page by page (boto3's paginator): any size, constant memory."""
        pages = self._db.get_paginator("query").paginate(TableName=self.table_name, **request)
        for page in pages:
            yield from (plain(item) for item in page.get("Items", []))


class TableReader(TableClient):
    """A run, its results, a key's latest state."""

    def run(self, run_id: str) -> dict[str, Any] | None:
        return self.item(run_pk(run_id), RUN)

    def latest(self, key_id: str) -> dict[str, Any] | None:
        return self.item(key_pk(key_id), LATEST)

    def results(
        self, run_id: str, *, status: str | None = None, fields: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every result item of a run (only those with ``status``; only ``fields``)."""
        values = {":pk": run_pk(run_id), ":key": KEY_PREFIX, ":status": status}
        query: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :key)",
            "ExpressionAttributeValues": to_item(values),  # :status only with a status
        }
        if status is not None:
            query["FilterExpression"] = "#s = :status"
            query["ExpressionAttributeNames"] = {"#s": "status"}
        if fields is not None:
            query["ProjectionExpression"] = fields
        return self._query(**query)
