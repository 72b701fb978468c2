"""The local DynamoDB's TransactWriteItems (devkit/moto_dynamodb.py) answers as moto's own
does, writes all or nothing beside other writers, and costs O(items), not O(table).

The differential tests run one transaction on two fresh moto backends holding the same items,
one with moto's own TransactWriteItems and one with ours, and compare what each answered,
the table afterwards and the stream records the transaction added.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.dynamodb.exceptions import DynamodbException, TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend, dynamodb_backends
from moto.dynamodb.models.dynamo_type import Item
from moto.dynamodb.models.table import Table

from devkit.aws_local import LocalAwsStack
from devkit.moto_dynamodb import MOTO_TRANSACT_WRITE_ITEMS, isolate_writes, transact_write_items
from devkit.moto_server import MotoServer

pytestmark = pytest.mark.integration

REGION = "us-east-1"
TABLE = "results"
Transact = Callable[[DynamoDBBackend, list[dict[str, Any]]], None]

RUN: dict[str, Any] = {
    "pk": "RUN#r1",
    "sk": "RUN",
    "status": "RUNNING",
    "requested": 2,
    "open_chunks": 1,
}
CHUNK: dict[str, Any] = {"pk": "RUN#r1", "sk": "CHUNK#c1", "chunk_status": "OPEN", "keys": ["k1"]}
PENDING_KEY: dict[str, Any] = {"pk": "RUN#r1", "sk": "KEY#k1", "status": "PENDING"}
GIVEN = [CHUNK, PENDING_KEY, RUN]  # in the table's order (by key)


def dynamo(plain: Mapping[str, Any]) -> dict[str, Any]:
    """An item or attribute values in DynamoDB's JSON, as the backend receives them."""
    serializer = TypeSerializer()
    return {name: serializer.serialize(value) for name, value in plain.items()}


def put_new(item: Mapping[str, Any], table: str = TABLE, **extra: Any) -> dict[str, Any]:
    put = {"TableName": table, "Item": dynamo(item)}
    return {"Put": put | {"ConditionExpression": "attribute_not_exists(pk)"} | extra}


def on_run(
    kind: str, sk: str, values: Mapping[str, Any], table: str = TABLE, **fields: Any
) -> dict[str, Any]:
    """A transaction item of ``kind`` (Update, Delete, ConditionCheck) on item ``sk`` of the run."""
    key = dynamo({"pk": "RUN#r1", "sk": sk})
    return {
        kind: {"TableName": table, "Key": key, "ExpressionAttributeValues": dynamo(values)} | fields
    }


def update(
    sk: str, expression: str, values: Mapping[str, Any], table: str = TABLE, **extra: Any
) -> dict[str, Any]:
    return on_run("Update", sk, values, table, UpdateExpression=expression, **extra)


def condition_check(sk: str, condition: str, values: Mapping[str, Any]) -> dict[str, Any]:
    return on_run("ConditionCheck", sk, values, ConditionExpression=condition)


def backend_holding(items: Sequence[Mapping[str, Any]]) -> DynamoDBBackend:
    """A fresh moto backend with the results table's keys and stream, holding ``items``."""
    backend = DynamoDBBackend(REGION, DEFAULT_ACCOUNT_ID)
    backend.create_table(
        TABLE,
        schema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        throughput=None,
        attr=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        global_indexes=None,
        indexes=None,
        streams={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        billing_mode="PAY_PER_REQUEST",
        sse_specification=None,
        tags=[],
        deletion_protection_enabled=False,
        warm_throughput=None,
    )
    for item in items:
        backend.put_item(TABLE, dynamo(item))
    return backend


@dataclass(frozen=True)
class Outcome:
    """What a transaction did: moto's error answer (None: it committed), the table's items
    afterwards, and the stream records it added (less their random id, clock and size)."""

    answer: tuple[int, dict[str, Any]] | None
    items: list[dict[str, Any]]
    stream: list[dict[str, Any]]

    @property
    def reasons(self) -> list[str]:
        assert self.answer is not None, "the transaction committed"
        return [reason["Code"] for reason in self.answer[1]["CancellationReasons"]]

    def item(self, sk: str) -> dict[str, Any] | None:
        return next((item for item in self.items if item["sk"] == sk), None)


def outcome(transact: Transact, transaction: list[dict[str, Any]]) -> Outcome:
    backend = backend_holding(GIVEN)
    recorded = len(_stream(backend.get_table(TABLE)))
    answer = None
    try:
        transact(backend, copy.deepcopy(transaction))
    except DynamodbException as refused:
        answer = (refused.code, json.loads(refused.description))
    table = backend.get_table(TABLE)  # moto's own rollback puts back a copy of the table
    return Outcome(answer, _plain_items(table), _stream(table)[recorded:])


def _plain_items(table: Table) -> list[dict[str, Any]]:
    deserializer = TypeDeserializer()
    return [
        {
            name: deserializer.deserialize(value)
            for name, value in item.to_json()["Attributes"].items()
        }
        for item in table.all_items()
    ]


def _stream(table: Table) -> list[dict[str, Any]]:
    assert table.stream_shard is not None
    records = [copy.deepcopy(record.to_json()) for record in table.stream_shard.items]
    for record in records:
        del record["eventID"], record["dynamodb"]["ApproximateCreationDateTime"]
        del record["dynamodb"]["SizeBytes"]  # moto's estimate counts the clock's digits
    return records


def as_moto(transaction: list[dict[str, Any]]) -> Outcome:
    """Our outcome of ``transaction``, having checked that it is moto's own."""
    ours = outcome(transact_write_items, transaction)
    assert ours == outcome(MOTO_TRANSACT_WRITE_ITEMS, transaction)
    return ours


# --- the same answers as moto's own -----------------------------------------------------------


def test_a_transaction_that_commits_writes_and_records_what_moto_does() -> None:
    # Given a run with one chunk and one pending key
    # When a transaction registers a second chunk, counts it on the run, adds a key, deletes
    # the pending one and checks the first chunk is open
    done = as_moto(
        [
            put_new({"pk": "RUN#r1", "sk": "CHUNK#c2", "chunk_status": "OPEN"}),
            update(
                "RUN",
                "ADD requested :n, open_chunks :one",
                {":n": 1, ":one": 1, ":running": "RUNNING"},
                ConditionExpression="#s = :running",
                ExpressionAttributeNames={"#s": "status"},
            ),
            put_new({"pk": "RUN#r1", "sk": "KEY#k2", "status": "PENDING"}),
            on_run(
                "Delete",
                "KEY#k1",
                {":pending": "PENDING"},
                ConditionExpression="#s = :pending",
                ExpressionAttributeNames={"#s": "status"},
            ),
            condition_check("CHUNK#c1", "chunk_status = :open", {":open": "OPEN"}),
        ]
    )

    # Then it committed: every write made, one stream record per write, in order
    assert done.answer is None
    assert done.item("RUN") == RUN | {"requested": 3, "open_chunks": 2}
    assert done.item("KEY#k1") is None
    assert [r["eventName"] for r in done.stream] == ["INSERT", "MODIFY", "INSERT", "REMOVE"]


def test_a_failed_condition_cancels_with_reasons_by_index_and_writes_nothing() -> None:
    # Given a run with chunk c1 and key k1 registered
    # When a transaction registers c1 and k1 again beside a count and a new key, asking for
    # k1's item when its condition fails
    cancelled = as_moto(
        [
            put_new({"pk": "RUN#r1", "sk": "CHUNK#c1", "chunk_status": "OPEN"}),
            update("RUN", "ADD requested :n", {":n": 2}),
            put_new(
                {"pk": "RUN#r1", "sk": "KEY#k1", "status": "PENDING"},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            ),
            put_new({"pk": "RUN#r1", "sk": "KEY#k3", "status": "PENDING"}),
        ]
    )

    # Then it was cancelled, the reasons naming the two items by index, and nothing written
    assert cancelled.answer is not None
    assert cancelled.answer[0] == 400
    assert cancelled.reasons == ["ConditionalCheckFailed", "None", "ConditionalCheckFailed", "None"]
    assert cancelled.answer[1]["CancellationReasons"][2]["Item"] == dynamo(PENDING_KEY)
    assert cancelled.items == GIVEN
    assert cancelled.stream == []


def test_an_update_adds_sets_removes_and_creates_with_if_not_exists_as_moto_does() -> None:
    # Given a run that counts nothing refreshed yet
    # When a transaction updates it with SET (if_not_exists), REMOVE and ADD (a number and a
    # set), and creates an item by update
    done = as_moto(
        [
            update(
                "RUN",
                "SET refreshed = if_not_exists(refreshed, :zero) + :one, finished_at = :now "
                "REMOVE open_chunks ADD requested :one, tags :tags",
                {":zero": 0, ":one": 1, ":now": "2026-12-01T00:00:00Z", ":tags": {"a", "b"}},
            ),
            update(
                "PACE#t1",
                "SET attempts = if_not_exists(attempts, :zero) + :one ADD seen :one",
                {":zero": 0, ":one": 1},
            ),
        ]
    )

    # Then both items are as DynamoDB would leave them (and the stream as moto records an
    # update that creates its item: the key alone, then the item)
    assert done.answer is None
    assert done.item("RUN") == {
        "pk": "RUN#r1",
        "sk": "RUN",
        "status": "RUNNING",
        "requested": 3,
        "refreshed": 1,
        "finished_at": "2026-12-01T00:00:00Z",
        "tags": {"a", "b"},
    }
    assert done.item("PACE#t1") == {"pk": "RUN#r1", "sk": "PACE#t1", "attempts": 1, "seen": 1}
    assert [r["eventName"] for r in done.stream] == ["MODIFY", "INSERT", "INSERT"]


def test_condition_checks_alone_write_nothing_and_cancel_by_index() -> None:
    # Given a run with an open chunk
    # When one transaction only checks conditions that hold, and another one that fails
    holds = as_moto(
        [
            condition_check("RUN", "requested = :two", {":two": 2}),
            condition_check("CHUNK#c1", "chunk_status = :open", {":open": "OPEN"}),
        ]
    )
    fails = as_moto(
        [
            condition_check("RUN", "requested = :two", {":two": 2}),
            condition_check("CHUNK#c1", "chunk_status = :done", {":done": "DONE"}),
        ]
    )

    # Then the first commits and the second is cancelled at index 1; neither writes
    assert (holds.answer, holds.items, holds.stream) == (None, GIVEN, [])
    assert fails.reasons == ["None", "ConditionalCheckFailed"]
    assert (fails.items, fails.stream) == (GIVEN, [])


def test_two_operations_on_one_item_are_refused_as_moto_refuses_them() -> None:
    # Given a run
    # When one transaction puts a key and updates the same key
    refused = as_moto(
        [
            put_new({"pk": "RUN#r1", "sk": "KEY#k3", "status": "PENDING"}),
            update("KEY#k3", "SET #s = :done", {":done": "REFRESHED"}),
        ]
    )

    # Then the request is invalid, as in DynamoDB, and nothing is written
    assert refused.answer is not None
    assert refused.answer[1]["__type"].endswith("ValidationException")
    assert "multiple operations on one item" in refused.answer[1]["message"]
    assert (refused.items, refused.stream) == (GIVEN, [])


def test_a_write_moto_refuses_after_one_it_accepts_writes_nothing() -> None:
    # Given a run whose status is a string
    # When a transaction adds a key, then adds a number to the status
    refused = as_moto(
        [
            put_new({"pk": "RUN#r1", "sk": "KEY#k3", "status": "PENDING"}),
            update("RUN", "ADD #s :one", {":one": 1}, ExpressionAttributeNames={"#s": "status"}),
        ]
    )

    # Then the request is invalid and the key was not added
    assert refused.answer is not None
    assert refused.answer[1]["__type"].endswith("ValidationException")
    assert (refused.items, refused.stream) == (GIVEN, [])


# --- beside other writers ---------------------------------------------------------------------


@pytest.fixture
def isolated_writes() -> None:
    """moto's writes as the local stack's server has them (idempotent, process-wide)."""
    isolate_writes()


def test_transactions_beside_a_concurrent_writer_neither_fail_nor_lose_a_write(
    isolated_writes: None,
) -> None:
    # Given a table of 2,000 items and a client that keeps adding items, adding to a counter
    # the transactions add to as well, and reading absent items (for each, moto adds an empty
    # partition to the table: the change that broke moto's copy of the table)
    filled: list[dict[str, Any]] = [{"pk": f"FILL#{i % 40}", "sk": f"KEY#{i}"} for i in range(2000)]
    backend = backend_holding([*filled, {"pk": "RUN#r1", "sk": "RUN", "counted": 0}])
    writer = _Writer(backend)
    writer.start()

    # When 300 transactions run beside it, one in three cancelled by its condition
    committed, cancelled = [], []
    for i in range(300):
        gate = "attribute_exists(pk)" if i % 3 else "attribute_not_exists(pk)"
        try:
            transact_write_items(
                backend,
                [
                    put_new({"pk": "RUN#r1", "sk": f"KEY#t{i}"}),
                    update("RUN", "ADD counted :one", {":one": 1}, ConditionExpression=gate),
                ],
            )
            committed.append(f"KEY#t{i}")
        except TransactionCanceledException:
            cancelled.append(f"KEY#t{i}")
    written = writer.stop()

    # Then no call failed, and every write of a committed transaction and of the writer is
    # there, and none of a cancelled one
    assert writer.errors == []
    table = backend.get_table(TABLE)
    present = {item["sk"] for item in _plain_items(table)}
    assert set(committed) <= present
    assert not set(cancelled) & present
    assert {f"KEY#w{j}" for j in range(written)} <= present
    [run] = [item for item in _plain_items(table) if item["sk"] == "RUN"]
    assert run["counted"] == len(committed) + written
    assert len(committed) == 200


class _Writer:
    """A thread writing beside the transactions until stopped; ``errors`` is what it raised."""

    def __init__(self, backend: DynamoDBBackend) -> None:
        self._backend = backend
        self._running = threading.Event()
        self._stopping = threading.Event()
        self._written = 0
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._write, daemon=True)

    def start(self) -> None:
        """Start writing; returns once a first round of writes is done."""
        self._thread.start()
        assert self._running.wait(timeout=30), "the writer did not start"

    def stop(self) -> int:
        """Stop; how many rounds of writes it made."""
        self._stopping.set()
        self._thread.join(timeout=30)
        return self._written

    def _write(self) -> None:
        backend = self._backend
        try:
            while not self._stopping.is_set():
                j = self._written
                backend.put_item(TABLE, dynamo({"pk": "RUN#r1", "sk": f"KEY#w{j}"}))
                backend.update_item(
                    TABLE,
                    dynamo({"pk": "RUN#r1", "sk": "RUN"}),
                    update_expression="ADD counted :one",
                    expression_attribute_names={},
                    expression_attribute_values=dynamo({":one": 1}),
                )
                backend.get_item(TABLE, dynamo({"pk": f"ABSENT#{j}", "sk": "RUN"}))
                self._written += 1
                self._running.set()
        except BaseException as error:  # reported by the test, not lost with the thread
            self.errors.append(error)
            self._running.set()


# --- the cost of a transaction ----------------------------------------------------------------


def kept(model: type) -> list[Any]:
    """Every instance of a moto model made or copied so far (moto keeps them all)."""
    instances: list[Any] = model.instances_tracked  # type: ignore[attr-defined]
    return instances


@pytest.fixture
def server_backend(moto_server: MotoServer) -> DynamoDBBackend:
    """The backend the local stack's moto server keeps its tables in (it runs in-process)."""
    backend: DynamoDBBackend = dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION]
    return backend


def test_a_transaction_through_the_local_stack_costs_the_same_whatever_the_table_holds(
    moto_server: MotoServer, server_backend: DynamoDBBackend
) -> None:
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server.endpoint_url, region_name=REGION)

    def moto_objects_made(table_items: int) -> tuple[int, int]:
        # Given the local stack's results table holding ``table_items`` items (put in moto's
        # backend directly: through HTTP would take longer than the test)
        name = LocalAwsStack.create(moto_server.endpoint_url).table_name
        for i in range(table_items):
            server_backend.put_item(name, dynamo({"pk": f"RUN#{i % 40}", "sk": f"KEY#{i}"}))
        server_backend.put_item(name, dynamo(RUN))
        items_before, tables_before = len(kept(Item)), len(kept(Table))

        # When one transaction of 100 items (a count, 99 new keys) runs through the server
        count = update("RUN", "ADD requested :n", {":n": 99}, name)
        keys = [put_new({"pk": "RUN#r1", "sk": f"KEY#new{i}"}, name) for i in range(99)]
        dynamodb.transact_write_items(TransactItems=[count, *keys])

        # (moto keeps every Item and Table it makes or copies in a registry: count them)
        return len(kept(Item)) - items_before, len(kept(Table)) - tables_before

    small, large = moto_objects_made(1_000), moto_objects_made(4_000)

    # Then it made the same moto objects for both tables, a few per item of the transaction,
    # and copied no table
    assert small == large
    assert small[0] <= 3 * 100
    assert small[1] == 0
