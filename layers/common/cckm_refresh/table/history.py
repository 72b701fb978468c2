"""A key's results over time, from the ``by-key`` index: what the operator CLI's ``history``
reads (apart from ``reads``, so that the notify function's code, and role, reach no index)."""

from __future__ import annotations

from typing import Any

from cckm_refresh.table.items import BY_KEY_INDEX, key_pk, plain
from cckm_refresh.table.reads import TableReader


class KeyHistory(TableReader):
    def history(self, key_id: str, limit: int) -> list[dict[str, Any]]:
        """A key's last ``limit`` results, newest first."""
        answer = self._db.query(
            TableName=self.table_name,
            IndexName=BY_KEY_INDEX,
            KeyConditionExpression="gsi1pk = :k",
            ExpressionAttributeValues={":k": {"S": key_pk(key_id)}},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [plain(item) for item in answer.get("Items", [])]
