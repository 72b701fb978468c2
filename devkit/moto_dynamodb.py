"""moto's DynamoDB writes isolated as DynamoDB isolates them, and its TransactWriteItems at
DynamoDB's cost: O(items in the transaction), whatever the size of the table.

moto (5.2.5) runs a transaction on the live tables after deep-copying each table it names,
once per item, and puts the copies back when an item fails. The cost grows with the table
(and every copy stays in moto's registry of model instances, ``BaseModel.instances_tracked``),
a write made by another request in between is lost with the rollback, and the copy breaks
("dictionary changed size during iteration") beside a read that adds a partition: moto's
``Table.items`` is a defaultdict.

Here each item is first checked as moto's own loop checks it (one operation per item, one
item per key, its key, its condition) and its write tried by moto's own code on a stand-in
table that holds only that item; then, when every item passed, the writes are made by the same
code on the real tables, so the items and the stream records are the ones moto made. When an
item fails, nothing is written and moto's ``TransactionCanceledException`` carries the reasons
by index, as DynamoDB's does. Every DynamoDB write takes one lock, so no write lands between a
transaction's checks and its writes (two containers closing chunks of one run at once would
lose counts) and none sees a transaction half made.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table

# moto's own TransactWriteItems, kept to compare against (tests/infra/test_moto_transactions.py).
MOTO_TRANSACT_WRITE_ITEMS: Callable[[DynamoDBBackend, list[dict[str, Any]]], None] = (
    DynamoDBBackend.transact_write_items
)
_WRITES = ("put_item", "update_item", "delete_item")  # BatchWriteItem calls the first and last
_OPERATIONS = frozenset({"ConditionCheck", "Put", "Delete", "Update"})
_write_lock = threading.RLock()

# One item's failure, as moto's TransactionCanceledException takes it: (code, message, the
# item as it was when ReturnValuesOnConditionCheckFailure is ALL_OLD); all None: it passed.
_Reason = tuple[str | None, str | None, dict[str, Any] | None]
_PASSED: _Reason = (None, None, None)
_CONDITION_FAILED = str(ConditionalCheckFailed().message)


def isolate_writes() -> None:
    """Make moto's DynamoDB writes one at a time and its transactions check every item before
    writing any (``transact_write_items``). Idempotent."""
    if DynamoDBBackend.transact_write_items is transact_write_items:
        return
    for name in _WRITES:
        setattr(DynamoDBBackend, name, _one_at_a_time(getattr(DynamoDBBackend, name)))
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def _one_at_a_time(write: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(write)
    def isolated(*args: Any, **kwargs: Any) -> Any:
        with _write_lock:
            return write(*args, **kwargs)

    return isolated


def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """moto's TransactWriteItems, all or nothing: every item checked, then every write made,
    under the lock of every write. Raises what moto raises, having written nothing."""
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    with _write_lock:
        writes = _checked(self, transact_items)
        for write in writes:
            write.make(self)


@dataclass(frozen=True)
class _Write:
    """One item of a transaction, and moto's call that makes its write."""

    kind: str  # ConditionCheck, Put, Update or Delete
    operation: dict[str, Any]
    key: dict[str, Any]

    @property
    def table_name(self) -> str:
        return str(self.operation["TableName"])

    def make(self, backend: DynamoDBBackend) -> None:
        """The write, as moto's TransactWriteItems makes it (a ConditionCheck writes nothing)."""
        expression: dict[str, Any] = {
            "condition_expression": self.operation.get("ConditionExpression"),
            "expression_attribute_names": self.operation.get("ExpressionAttributeNames"),
            "expression_attribute_values": self.operation.get("ExpressionAttributeValues"),
        }
        if self.kind == "Put":
            backend.put_item(self.table_name, self.operation["Item"], **expression)
        elif self.kind == "Delete":
            backend.delete_item(self.table_name, self.key, **expression)
        elif self.kind == "Update":
            backend.update_item(
                self.table_name,
                self.key,
                update_expression=self.operation["UpdateExpression"],
                **expression,
            )


def _checked(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[_Write]:
    """The transaction's writes, each checked as moto's own loop checks it; nothing written.

    Raises moto's validation errors as moto does (one item named twice, a key missing), and
    ``TransactionCanceledException`` with one reason per item when any item fails.
    """
    named: set[tuple[str, str]] = set()
    writes: list[_Write] = []
    reasons: list[_Reason] = []
    for entry in transact_items:
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        try:
            write = _write_of(backend, entry)
            unique = (write.table_name, str(dict(sorted(write.key.items()))))
            if unique in named:
                raise MultipleTransactionsException()
            named.add(unique)
            reasons.append(_reason(backend, write))
            writes.append(write)
        except (MultipleTransactionsException, MockValidationException):
            raise
        except ConditionalCheckFailed as failed:
            reasons.append(("ConditionalCheckFailed", str(failed.message), None))
        except Exception as error:  # moto gives any other failure as the item's reason
            reasons.append((type(error).__name__, str(error), None))
    if any(code is not None for code, _, _ in reasons):
        raise TransactionCanceledException(reasons)
    return writes


def _write_of(backend: DynamoDBBackend, entry: dict[str, Any]) -> _Write:
    """The item's operation and key, read as moto reads them (a Put's key from its item)."""
    kind, operation = next(iter(entry.items()))
    if kind not in _OPERATIONS:
        raise ValueError("Unsupported transaction operation")
    if kind != "Put":
        return _Write(kind, operation, operation["Key"])
    table = backend.get_table(operation["TableName"])
    attributes = operation["Item"]
    key = {table.hash_key_attr: attributes[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attributes[table.range_key_attr]
    return _Write(kind, operation, key)


def _reason(backend: DynamoDBBackend, write: _Write) -> _Reason:
    """The item's reason: its condition on the item as it is, then its write tried by moto's
    code on a stand-in that holds only this item. Raises what that write raises; writes
    nothing."""
    table = backend.get_table(write.table_name)
    hash_key, range_key = backend.get_keys_value(table, write.key)
    current = table.get_item(hash_key, range_key)
    condition = write.operation.get("ConditionExpression")
    if condition is not None:
        holds = get_filter_expression(
            condition,
            write.operation.get("ExpressionAttributeNames"),
            write.operation.get("ExpressionAttributeValues"),
        ).expr(current)
        if not holds:
            wants_old = write.operation.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD"
            old = current.to_json()["Attributes"] if wants_old and current else None
            return ("ConditionalCheckFailed", _CONDITION_FAILED, old)
    # An update changes its item in place: the stand-in holds a copy.
    held = copy.deepcopy(current) if write.kind == "Update" else current
    write.make(_OneTableBackend(_stand_in(table, hash_key, range_key, held)))
    return _PASSED


def _stand_in(
    table: Table, hash_key: DynamoType, range_key: DynamoType | None, item: Item | None
) -> Table:
    """``table`` holding only ``item`` at its key (None: nothing), and no stream."""
    # Not Table(...) nor copy.copy: both go through BaseModel.__new__, which keeps every
    # instance for good. The stand-in shares the table's schema, indexes and settings.
    stand_in: Table = object.__new__(Table)  # type: ignore[type-abstract]
    stand_in.__dict__.update(vars(table), items=defaultdict(dict), stream_shard=None)
    if item is not None and range_key is not None:
        stand_in.items[hash_key][range_key] = item
    elif item is not None:
        stand_in.items[hash_key] = item  # type: ignore[assignment]
    return stand_in


class _OneTableBackend(DynamoDBBackend):
    """moto's backend whose every table is ``table``: where moto's own write code can run on
    a stand-in. Made without BaseBackend's state, which the writes do not use."""

    def __init__(self, table: Table) -> None:  # no super().__init__: see the class docstring
        self._table = table

    def get_table(self, table_name: str) -> Table:
        return self._table
