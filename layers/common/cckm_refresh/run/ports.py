"""What the run needs of the table and of the queues: the table's ``ResultStore`` as it is, and
the queues as a Protocol that ``WorkQueue`` and the unit tests' recording fake implement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias

from cckm_refresh.table.store import ResultStore
from cckm_refresh.workqueue import QueueMessage

RunTable: TypeAlias = ResultStore  # runs, their chunks and results, each key's latest state


class RunQueues(Protocol):
    """The work queue, the tenancy queue and the dead-letter copy of rejected messages."""

    queue_url: str | None
    tenancy_queue_url: str | None

    @property
    def can_hand_on(self) -> bool: ...
    def send(self, messages: Sequence[QueueMessage]) -> int: ...
    def retry_later(self, queue_url: str | None, receipt_handle: str, seconds: int) -> bool: ...
    def url_of(self, queue_arn: str) -> str | None: ...
    def dead_letter(self, body: str, error: str) -> bool: ...
