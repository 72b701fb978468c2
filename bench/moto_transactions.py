"""The local DynamoDB's cost of one transaction against the size of the table (issue 19).

A chunk registration (``RunBook.register_chunk``: 98 keys, a transaction of 100 items) is timed
through the local stack's moto server over HTTP, against a results table (``template.yaml``'s)
already holding 1,000, 10,000 or 50,000 items, with our TransactWriteItems
(``devkit/moto_dynamodb.py``) and, with ``--moto-own``, with moto's own. Prints figures;
asserts nothing.

    PYTHONPATH=layers/common:. .venv/bin/python -m bench.moto_transactions \\
        [--sizes 1000 10000 50000] [--keys 98] [--repeat 5] [--moto-own]

moto's own copies the table once per item and keeps every copy for good (in
``BaseModel.instances_tracked``): 100 items against 10,000 keep a million item copies, some
8 GB. On large tables, time it with fewer ``--keys``, one size per process.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import boto3
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import Item

from bench.world import prepare_process
from cckm_refresh.model import RunInfo, Trigger
from cckm_refresh.table.items import MAX_CHUNK_KEYS, KeyEntry
from cckm_refresh.table.runs import RunBook
from devkit.aws_local import LocalAwsStack
from devkit.moto_dynamodb import MOTO_TRANSACT_WRITE_ITEMS, transact_write_items
from devkit.moto_server import MotoServer


class Registrations:
    """Chunks of ``keys`` keys registered with fresh runs (``name``-1, -2...) of one table."""

    def __init__(self, store: RunBook, name: str, keys: int) -> None:
        self._store = store
        self._name = name
        self._keys = keys
        self._made = 0

    def register(self) -> None:
        """One run started, and one chunk of it registered (a transaction of keys + 2 items)."""
        self._register_chunk(self._start_run())

    def timed(self) -> tuple[float, float, int]:
        """Seconds one chunk's registration took, CPU seconds of this process (client and
        server: a busy machine changes the first more), and moto items made or copied."""
        run = self._start_run()
        kept: list[Item] = Item.instances_tracked  # type: ignore[attr-defined]
        before = len(kept)
        started, cpu = time.perf_counter(), time.process_time()
        self._register_chunk(run)
        return time.perf_counter() - started, time.process_time() - cpu, len(kept) - before

    def _start_run(self) -> RunInfo:
        self._made += 1
        run = RunInfo(run_id=f"{self._name}-{self._made}", trigger=Trigger.CLI)
        self._store.start_run(run)
        return run

    def _register_chunk(self, run: RunInfo) -> None:
        entries = [KeyEntry(f"{run.run_id}-key-{i}") for i in range(self._keys)]
        if len(self._store.register_chunk(run, "chunk-0", None, entries)) != self._keys:
            raise RuntimeError(f"{run.run_id}: the chunk was not registered")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.moto_transactions", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument("--keys", type=int, default=MAX_CHUNK_KEYS, help="keys per chunk")
    parser.add_argument("--repeat", type=int, default=5, help="registrations timed per size")
    parser.add_argument("--moto-own", action="store_true", help="time moto's own as well")
    args = parser.parse_args(argv)

    prepare_process()
    server = MotoServer()
    server.start()
    stack = LocalAwsStack.create(server.endpoint_url, prefix="bench")
    dynamodb = boto3.client("dynamodb", endpoint_url=server.endpoint_url)
    store = RunBook(dynamodb, stack.table_name, retention_days=30)
    filler = Registrations(store, "filler", MAX_CHUNK_KEYS)
    measured = Registrations(store, "measured", args.keys)
    implementations: dict[str, Any] = {"ours": transact_write_items}
    if args.moto_own:
        implementations["moto's own"] = MOTO_TRANSACT_WRITE_ITEMS
    print(f"one transaction of {args.keys + 2} items through moto's server (median of timings)")
    for size in sorted(args.sizes):
        while dynamodb.describe_table(TableName=stack.table_name)["Table"]["ItemCount"] < size:
            filler.register()  # with ours: fast whatever the table holds
        for name, implementation in implementations.items():
            with _transactions_by(implementation):
                timings = [measured.timed() for _ in range(1 if name != "ours" else args.repeat)]
            seconds, cpu = (statistics.median(t[i] for t in timings) for i in (0, 1))
            made = max(n for _, _, n in timings)
            print(
                f"  table of {size:>6,} items, {name:<10}: {seconds:8.3f} s ({cpu:.3f} s CPU),"
                f" {made:>9,} moto items"
            )
    server.stop()
    return 0


@contextmanager
def _transactions_by(implementation: Any) -> Iterator[None]:
    """moto's server runs TransactWriteItems with ``implementation`` meanwhile."""
    DynamoDBBackend.transact_write_items = implementation  # type: ignore[method-assign]
    try:
        yield
    finally:
        DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


if __name__ == "__main__":
    raise SystemExit(main())
