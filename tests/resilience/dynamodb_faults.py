"""Faults in the handler's own DynamoDB client, injected through botocore's event hooks.

``boto3.client`` is wrapped while a test runs, so the real handler builds real clients (the
same config, retries and endpoint) and this module only adds hooks to them:

- ``before-send`` answers in place of the table: a 400 ``ProvisionedThroughputExceeded``
  (botocore's standard retry mode sees it and retries, as against AWS) or a batch write with
  every item left unprocessed (the store's own loop must write them again);
- ``before-call`` raises the error botocore raises once its retries are spent;
- ``before_result_write`` / ``before_key_update`` let a test hold a write at a barrier or a
  gate, to choose the interleaving of two invocations instead of hoping for it;
  ``before_result_put`` does the same for the conditional put of a terminal result;
- ``conflict_transactions`` answers the next N TransactWriteItems as DynamoDB does when a
  concurrent transaction touched the same items (cancelled, ``TransactionConflict``): the SDK
  does not retry it, the store's own loop must run the transaction again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

THROUGHPUT_EXCEEDED = "ProvisionedThroughputExceededException"
_JSON_HEADERS = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "injected"}


class _Body:
    """The ``raw`` an AWSResponse reads its content from."""

    def __init__(self, content: bytes) -> None:
        self._content = content

    def stream(self, **_: Any) -> Any:
        yield self._content


def _answer(url: str, status: int, body: dict[str, Any]) -> AWSResponse:
    return AWSResponse(url, status, dict(_JSON_HEADERS), _Body(json.dumps(body).encode()))


def _key_update_of(body: bytes | str) -> dict[str, Any] | None:
    """The decoded UpdateItem request when it moves a ``KEY`` item, else None."""
    document: dict[str, Any] = json.loads(body)
    pk = document.get("Key", {}).get("pk", {}).get("S", "")
    return document if pk.startswith("KEY#") else None


@dataclass
class DynamoDbFaults:
    """Switches for the handler's DynamoDB writes; counters say what was injected."""

    throttle_key_updates: int = 0  # next N KEY UpdateItems answered 400 (SDK retries them)
    unprocess_batch_writes: int = 0  # next N BatchWriteItems write nothing
    give_up_on_key_update: int | None = None  # the n-th KEY UpdateItem fails past SDK retries
    before_result_write: Callable[[], None] | None = None  # runs before each BatchWriteItem
    before_key_update: Callable[[str], None] | None = None  # runs before each KEY UpdateItem
    before_result_put: Callable[[str], None] | None = None  # before a terminal RESULT PutItem
    conflict_transactions: int = 0  # next N TransactWriteItems cancelled (TransactionConflict)
    conflicted: int = 0
    throttled: int = 0
    unprocessed: int = 0
    gave_up: int = 0
    key_updates: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Hook every DynamoDB client created from now on (the handler's, at its cold start)."""
        create = boto3.client

        def client(service_name: str, *args: Any, **kwargs: Any) -> Any:
            made = create(service_name, *args, **kwargs)
            if service_name == "dynamodb":
                self._attach(made)
            return made

        monkeypatch.setattr(boto3, "client", client)

    def _attach(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-call.dynamodb.UpdateItem", self._maybe_give_up(client))
        events.register("before-send.dynamodb.UpdateItem", self._on_update)
        events.register("before-send.dynamodb.BatchWriteItem", self._on_batch_write)
        events.register("before-send.dynamodb.PutItem", self._on_put)
        events.register("before-send.dynamodb.TransactWriteItems", self._on_transaction)

    def _maybe_give_up(self, client: Any) -> Callable[..., None]:
        def before_call(params: dict[str, Any], **_: Any) -> None:
            # ``params`` is the serialized request here: its body is the JSON DynamoDB gets.
            if _key_update_of(params["body"]) is None:
                return
            with self._lock:
                self.key_updates += 1
                give_up = self.key_updates == self.give_up_on_key_update
                self.gave_up += give_up
            if give_up:
                raise client.exceptions.ProvisionedThroughputExceededException(
                    {"Error": {"Code": THROUGHPUT_EXCEEDED, "Message": "Rate of requests exceeds"}},
                    "UpdateItem",
                )

        return before_call

    def _on_update(self, request: Any, **_: Any) -> AWSResponse | None:
        update = _key_update_of(request.body)
        if update is None:
            return None
        if self.before_key_update is not None:
            self.before_key_update(update["Key"]["pk"]["S"].removeprefix("KEY#"))
        with self._lock:
            throttle = self.throttle_key_updates > 0
            if throttle:
                self.throttle_key_updates -= 1
                self.throttled += 1
        if not throttle:
            return None
        return _answer(
            request.url,
            400,
            {
                "__type": f"com.amazonaws.dynamodb.v20120810#{THROUGHPUT_EXCEEDED}",
                "message": "The level of configured provisioned throughput was exceeded.",
            },
        )

    def _on_batch_write(self, request: Any, **_: Any) -> AWSResponse | None:
        if self.before_result_write is not None:
            self.before_result_write()
        with self._lock:
            unprocess = self.unprocess_batch_writes > 0
            if unprocess:
                self.unprocess_batch_writes -= 1
                self.unprocessed += 1
        if not unprocess:
            return None
        items = json.loads(request.body)["RequestItems"]
        return _answer(request.url, 200, {"UnprocessedItems": items})

    def _on_put(self, request: Any, **_: Any) -> None:
        if self.before_result_put is None:
            return
        item = json.loads(request.body).get("Item", {})
        terminal = item.get("status", {}).get("S") not in (None, "PENDING")
        if item.get("item_type", {}).get("S") == "RESULT" and terminal:
            self.before_result_put(item["key_id"]["S"])

    def _on_transaction(self, request: Any, **_: Any) -> AWSResponse | None:
        with self._lock:
            conflict = self.conflict_transactions > 0
            if conflict:
                self.conflict_transactions -= 1
                self.conflicted += 1
        if not conflict:
            return None
        items = json.loads(request.body)["TransactItems"]
        return _answer(
            request.url,
            400,
            {
                "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                "message": "Transaction cancelled, please refer cancellation reasons for specific"
                " reasons [TransactionConflict]",
                "CancellationReasons": [
                    {"Code": "TransactionConflict", "Message": "Transaction is ongoing"}
                    for _ in items
                ],
            },
        )
