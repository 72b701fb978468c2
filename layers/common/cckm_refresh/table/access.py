"""What every writer of the table shares: the client, retention, and patience."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from cckm_refresh import backoff
from cckm_refresh.runtime import utc_now
from cckm_refresh.table.items import expires_at, key, plain, to_item
from cckm_refresh.table.reads import TableClient

BATCH_GET = 100


class TableAccess(TableClient):
    """The table as its writers use it; clock and sleep injectable for tests."""

    def __init__(
        self,
        client: Any,
        table_name: str,
        retention_days: int,
        *,
        now: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(client, table_name)
        self._retention = timedelta(days=retention_days)
        self._now = now
        self._sleep = sleep
        self._rng = rng

    def _expires_at(self) -> int:
        return expires_at(self._now(), self._retention)

    def _if_new(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """A put of ``item`` only if its key is new: ``put_item``'s arguments, or a
        transaction's ``Put``."""
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

    def _backoff(self, attempt: int) -> None:
        self._sleep(backoff.full_jitter(attempt, 0.05, 2.0, self._rng))

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
