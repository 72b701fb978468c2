"""What the run rules' tests stand the run on: the real results table store over the
simulation's DynamoDB (``SimDynamoDB``, checked against moto), with views for assertions,
and a recording stand-in for the queues (``run.ports.RunQueues``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cckm_refresh.model import RunStatus
from cckm_refresh.runtime import Runtime
from cckm_refresh.table.items import TenancyPace
from cckm_refresh.table.store import ResultStore
from cckm_refresh.workqueue import QueueMessage
from devkit.sim.dynamodb import SimDynamoDB, plain

TABLE = "results"


class Table(ResultStore):
    """The real ``ResultStore`` in memory; ``runs``, ``results``... read what it holds."""

    def __init__(self, runtime: Runtime) -> None:
        self.db = SimDynamoDB()
        self.db.create_table(TABLE)
        super().__init__(
            self.db, TABLE, 90, now=lambda: datetime.fromtimestamp(runtime.time(), UTC)
        )

    def _items(self, item_type: str) -> list[dict[str, Any]]:
        return [i for i in self.db.items(TABLE) if i.get("item_type") == item_type]

    @property
    def runs(self) -> dict[str, dict[str, Any]]:
        return {i["run_id"]: i for i in self._items("RUN")}

    @property
    def results(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(i["run_id"], i["key_id"]): i for i in self._items("RESULT")}

    @property
    def paces(self) -> dict[str, TenancyPace]:
        return {
            i["tenancy"]: TenancyPace(i["tenancy"], int(i["last_sent_ms"]))
            for i in self._items("PACE")
        }

    @property
    def rejected(self) -> dict[str, str]:
        return {i["pk"].removeprefix("REJECTED#"): i["error"] for i in self._items("REJECTED")}

    @property
    def completions(self) -> int:
        """How many times a run turned COMPLETED (the table's stream)."""
        return sum(
            1
            for _event, old, new in self.db.stream
            if new is not None
            and plain(new).get("status") == RunStatus.COMPLETED
            and (old is None or plain(old).get("status") != RunStatus.COMPLETED)
        )


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
