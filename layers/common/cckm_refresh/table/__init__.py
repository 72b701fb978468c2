"""The results table (CONTRACT 5): one package owns its item shapes, its reads and its writes.

``ResultStore`` is what the refresh path writes with (``RunBook``: runs and chunks;
``ResultLog``: outcomes and latest states); ``TableReader`` what the CLI, the notifier's run
digest and the demo read; ``items`` the keys, TTL and values of every item.
"""

from cckm_refresh.table.items import (
    FIRST_SEGMENT,
    MAX_CHUNK_KEYS,
    ChunkTally,
    KeyEntry,
    RecordedResult,
    RunCounts,
    RunState,
    described,
)
from cckm_refresh.table.reads import TableReader
from cckm_refresh.table.results import ResultLog
from cckm_refresh.table.runs import RunBook, TransactionFailedError


class ResultStore(RunBook, ResultLog):
    """Reads and writes the results table for the refresh path (``run.ports.RunTable``)."""


__all__ = [
    "FIRST_SEGMENT",
    "MAX_CHUNK_KEYS",
    "ChunkTally",
    "KeyEntry",
    "RecordedResult",
    "ResultStore",
    "RunCounts",
    "RunState",
    "TableReader",
    "TransactionFailedError",
    "described",
]
