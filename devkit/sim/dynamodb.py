"""DynamoDB for the simulation: the low-level client calls the package makes, in memory.

What the results table's code asks of DynamoDB (``put_item``, ``update_item`` and
``transact_write_items`` with their condition and update expressions, ``get_item``,
``batch_get_item``, ``query`` and its paginator), with DynamoDB's semantics where the package
relies on them: a condition checked and the write applied as one step; a transaction's
conditions all checked before any write, cancelled whole with a reason per item; strongly
consistent reads. Items are DynamoDB JSON, as the client sends and returns them. Every call
is a point where the simulation may switch threads (before it, and after the write: a kill
there loses the answer, not the write) and is counted, items read and written, for the cost
figures. ``tests/sim/test_sim_dynamodb.py`` runs the same calls against moto to keep it honest.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from moto.dynamodb.parsing.reserved_keywords import ReservedKeywords

Item = dict[str, dict[str, Any]]
_TOKEN = re.compile(r"\s*(<>|<=|>=|[=<>(),+\-]|[#:]?[A-Za-z_][A-Za-z0-9_]*)")
_deserialize = TypeDeserializer().deserialize
_serialize = TypeSerializer().serialize
# DynamoDB refuses these as bare attribute names in an expression (``#name`` stands for them).
_RESERVED = frozenset(ReservedKeywords.get_reserved_keywords())
_SYNTAX = frozenset({"AND", "OR", "NOT", "SET", "ADD", "REMOVE", "DELETE", "SIZE"})


class ConditionalCheckFailedException(ClientError):
    def __init__(self, operation: str) -> None:
        error = {"Code": "ConditionalCheckFailedException", "Message": "condition failed"}
        super().__init__({"Error": error}, operation)


class TransactionCanceledException(ClientError):
    def __init__(self, reasons: list[dict[str, str]]) -> None:
        error = {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"}
        super().__init__({"Error": error, "CancellationReasons": reasons}, "TransactWriteItems")


class _Exceptions:
    ConditionalCheckFailedException = ConditionalCheckFailedException
    TransactionCanceledException = TransactionCanceledException


class SimDynamoDB:
    """One region's tables; ``switch`` is called around every call (the simulation's yield)."""

    exceptions = _Exceptions

    def __init__(self, switch: Callable[[], None] = lambda: None) -> None:
        self.tables: dict[str, dict[tuple[str, str], Item]] = {}
        self.stream: list[tuple[str, Item | None, Item | None]] = []  # (event, old, new)
        self.calls: Counter[str] = Counter()
        self.items_read = 0
        self.items_written = 0
        self._switch = switch

    def create_table(self, name: str) -> None:
        self.tables.setdefault(name, {})

    # --- writes ---------------------------------------------------------------------------

    def put_item(self, **request: Any) -> dict[str, Any]:
        self._enter("put_item")
        table, item = self.tables[request["TableName"]], request["Item"]
        key = _key(item)
        _check(request, table.get(key), "PutItem")
        self._write(table, key, dict(item))
        self._switch()
        return {}

    def update_item(self, **request: Any) -> dict[str, Any]:
        self._enter("update_item")
        table, key = self.tables[request["TableName"]], _key(request["Key"])
        old = table.get(key)
        _check(request, old, "UpdateItem")
        new = _updated(old, request)
        self._write(table, key, new)
        self._switch()
        if request.get("ReturnValues") == "ALL_OLD" and old is not None:
            return {"Attributes": dict(old)}
        return {}

    def transact_write_items(self, TransactItems: list[dict[str, Any]]) -> dict[str, Any]:
        self._enter("transact_write_items")
        reasons, writes = [], []
        for entry in TransactItems:
            (kind, request), *_ = entry.items()
            table = self.tables[request["TableName"]]
            key = _key(request["Item"] if kind == "Put" else request["Key"])
            old = table.get(key)
            try:
                _check(request, old, "TransactWriteItems")
            except ConditionalCheckFailedException:
                reasons.append({"Code": "ConditionalCheckFailed", "Message": "condition failed"})
                continue
            reasons.append({"Code": "None"})
            if kind == "Put":
                writes.append((table, key, dict(request["Item"])))
            elif kind == "Update":
                writes.append((table, key, _updated(old, request)))
            elif kind == "Delete":
                writes.append((table, key, None))
        if any(r["Code"] != "None" for r in reasons):
            raise TransactionCanceledException(reasons)
        for table, key, new in writes:
            self._write(table, key, new)
        self._switch()
        return {}

    # --- reads ----------------------------------------------------------------------------

    def get_item(self, **request: Any) -> dict[str, Any]:
        self._enter("get_item")
        item = self.tables[request["TableName"]].get(_key(request["Key"]))
        if item is None:
            return {}
        self.items_read += 1
        return {"Item": _projected(item, request)}

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        self._enter("batch_get_item")
        responses: dict[str, list[Item]] = {}
        for name, request in RequestItems.items():
            table = self.tables[name]
            found = [table[_key(k)] for k in request["Keys"] if _key(k) in table]
            self.items_read += len(request["Keys"])
            responses[name] = [dict(item) for item in found]
        return {"Responses": responses, "UnprocessedKeys": {}}

    def query(self, **request: Any) -> dict[str, Any]:
        self._enter("query")
        items = list(self._matching(request))
        self.items_read += len(items)
        limit = request.get("Limit")
        return {"Items": items[:limit] if limit else items, "Count": len(items)}

    def get_paginator(self, operation: str) -> _QueryPaginator:
        if operation != "query":
            raise NotImplementedError(operation)
        return _QueryPaginator(self)

    def _matching(self, request: Mapping[str, Any]) -> Iterator[Item]:
        table = self.tables[request["TableName"]]
        index = request.get("IndexName")
        hash_name, range_name = ("gsi1pk", "gsi1sk") if index else ("pk", "sk")
        keyed = [item for item in table.values() if hash_name in item]
        keyed.sort(key=lambda item: _text(item.get(range_name)))
        if request.get("ScanIndexForward") is False:
            keyed.reverse()
        for item in keyed:
            if not _evaluate(request["KeyConditionExpression"], item, request):
                continue
            filters = request.get("FilterExpression")
            if filters and not _evaluate(filters, item, request):
                continue
            yield _projected(item, request)

    # --- bookkeeping ----------------------------------------------------------------------

    def _enter(self, operation: str) -> None:
        self.calls[operation] += 1
        self._switch()

    def _write(
        self, table: dict[tuple[str, str], Item], key: tuple[str, str], new: Item | None
    ) -> None:
        old = table.get(key)
        if new is None:
            table.pop(key, None)
        else:
            table[key] = new
        self.items_written += 1
        event = "REMOVE" if new is None else ("INSERT" if old is None else "MODIFY")
        self.stream.append((event, old, new))

    def items(self, table: str) -> list[dict[str, Any]]:
        """Every item of ``table`` as plain values."""
        return [plain(item) for item in self.tables[table].values()]


class _QueryPaginator:
    def __init__(self, db: SimDynamoDB) -> None:
        self._db = db

    def paginate(self, **request: Any) -> Iterator[dict[str, Any]]:
        yield self._db.query(**request)


def plain(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _deserialize(value) for name, value in item.items()}


def _key(item: Mapping[str, Any]) -> tuple[str, str]:
    return (str(item["pk"]["S"]), str(item["sk"]["S"]))


def _text(value: Mapping[str, Any] | None) -> str:
    return "" if value is None else str(_deserialize(value))


def _projected(item: Item, request: Mapping[str, Any]) -> Item:
    projection = request.get("ProjectionExpression")
    if not projection:
        return dict(item)
    names = request.get("ExpressionAttributeNames", {})
    wanted = [names.get(n.strip(), n.strip()) for n in projection.split(",")]
    return {name: item[name] for name in wanted if name in item}


def _check(request: Mapping[str, Any], item: Item | None, operation: str) -> None:
    condition = request.get("ConditionExpression")
    if condition and not _evaluate(condition, item or {}, request):
        raise ConditionalCheckFailedException(operation)


# --- expressions --------------------------------------------------------------------------


class _Parser:
    """Tokens of one expression, with the request's names and values to resolve them."""

    def __init__(self, text: str, item: Item, request: Mapping[str, Any]) -> None:
        self.tokens = _TOKEN.findall(text)
        self.position = 0
        self.item = item
        self.names: Mapping[str, str] = request.get("ExpressionAttributeNames", {})
        self.values: Mapping[str, Any] = request.get("ExpressionAttributeValues", {})

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.tokens[self.position]
        if expected is not None and token.upper() != expected:
            raise ValueError(f"expected {expected}, got {token}")
        self.position += 1
        return token

    def name(self, token: str) -> str:
        if token.startswith("#"):
            return self.names[token]
        if token.upper() in _RESERVED and token.upper() not in _SYNTAX:
            error = {"Code": "ValidationException", "Message": f"reserved keyword: {token}"}
            raise ClientError({"Error": error}, "Expression")
        return token

    def operand(self) -> Any:
        """A value (``:v``), an attribute's value (None when absent), or a function's."""
        token = self.take()
        if token.startswith(":"):
            return _deserialize(self.values[token])
        if token in ("if_not_exists", "size"):
            return self.function(token)
        stored = self.item.get(self.name(token))
        return None if stored is None else _deserialize(stored)

    def function(self, token: str) -> Any:
        self.take("(")
        if token == "if_not_exists":
            path = self.name(self.take())
            self.take(",")
            fallback = self.operand()
            self.take(")")
            stored = self.item.get(path)
            return fallback if stored is None else _deserialize(stored)
        value = self.operand()
        self.take(")")
        return len(value) if value is not None else None

    def value(self) -> Any:
        """An operand, possibly ``a + b`` or ``a - b``."""
        left = self.operand()
        while self.peek() in ("+", "-"):
            sign = self.take()
            right = self.operand()
            left = left + right if sign == "+" else left - right
        return left


def _evaluate(text: str, item: Item, request: Mapping[str, Any]) -> bool:
    parser = _Parser(text, item, request)
    result = _or(parser)
    if parser.peek() is not None:
        raise ValueError(f"unparsed: {parser.tokens[parser.position :]}")
    return result


def _or(p: _Parser) -> bool:
    result = _and(p)
    while (p.peek() or "").upper() == "OR":
        p.take()
        right = _and(p)  # both sides parsed: the expression is consumed whole
        result = result or right
    return result


def _and(p: _Parser) -> bool:
    result = _not(p)
    while (p.peek() or "").upper() == "AND":
        p.take()
        right = _not(p)
        result = result and right
    return result


def _not(p: _Parser) -> bool:
    if (p.peek() or "").upper() == "NOT":
        p.take()
        return not _not(p)
    return _primary(p)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "<": lambda a, b: a is not None and b is not None and a < b,
    "<=": lambda a, b: a is not None and b is not None and a <= b,
    ">": lambda a, b: a is not None and b is not None and a > b,
    ">=": lambda a, b: a is not None and b is not None and a >= b,
}


def _primary(p: _Parser) -> bool:
    token = p.peek() or ""
    if token == "(":
        p.take()
        result = _or(p)
        p.take(")")
        return result
    if token in ("attribute_exists", "attribute_not_exists", "begins_with"):
        p.take()
        p.take("(")
        path = p.name(p.take())
        if token == "begins_with":
            p.take(",")
            prefix = p.operand()
            p.take(")")
            stored = p.item.get(path)
            return stored is not None and str(_deserialize(stored)).startswith(str(prefix))
        p.take(")")
        return (path in p.item) == (token == "attribute_exists")
    left = p.value()
    comparator = p.take()
    right = p.value()
    return _COMPARE[comparator](left, right)


def _updated(old: Item | None, request: Mapping[str, Any]) -> Item:
    """The item after ``request``'s UpdateExpression (its key from the request)."""
    item: Item = dict(old) if old is not None else dict(request["Key"])
    # Every operand is read from the item as it was, as DynamoDB evaluates an update.
    parser = _Parser(request["UpdateExpression"], dict(item), request)
    while parser.peek() is not None:
        clause = parser.take().upper()
        while True:
            path = parser.name(parser.take())
            if clause == "SET":
                parser.take("=")
                item[path] = _serialize(_number(parser.value()))
            elif clause == "ADD":
                addend = parser.operand()
                current = item.get(path)
                total = addend if current is None else _deserialize(current) + addend
                item[path] = _serialize(_number(total))
            elif clause == "REMOVE":
                item.pop(path, None)
            else:
                raise ValueError(f"update clause {clause} is not simulated")
            if parser.peek() != ",":
                break
            parser.take(",")
    return item


def _number(value: Any) -> Any:
    return Decimal(value) if isinstance(value, int) and not isinstance(value, bool) else value
