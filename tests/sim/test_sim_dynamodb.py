"""The simulation's DynamoDB answers the results table's calls as moto (and DynamoDB) does.

The same run bookkeeping is played through the real ``ResultStore`` against moto's server and
against ``SimDynamoDB``; every answer and the table they leave must be the same.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from cckm_refresh.model import KeyInfo, RefreshOutcome, RunInfo, Status, Trigger
from cckm_refresh.table.items import ChunkTally, KeyEntry, TenancyPace
from cckm_refresh.table.reads import TableReader
from cckm_refresh.table.store import ResultStore
from devkit.aws_local import LocalAwsStack
from devkit.sim.dynamodb import SimDynamoDB, plain

pytestmark = pytest.mark.integration

NOW = datetime(2027, 1, 15, 6, 0, tzinfo=UTC)
RUN = RunInfo("run-1", Trigger.SCHEDULE, request_id="req", reason="nightly")
KEYS = [f"00000000-0000-4000-8000-{n:012d}" for n in range(6)]


def known(key_id: str, version: str = "v1") -> KeyInfo:
    return KeyInfo(key_id, tenancy="t1", region="us-ashburn-1", current_key_version=version)


def refreshed(key_id: str, version: str) -> RefreshOutcome:
    return RefreshOutcome(known(key_id, version), Status.REFRESHED, attempts=1, recorded_at="T1")


def bookkeeping(store: ResultStore) -> list[Any]:
    """A run's life with its races: what each call answered."""
    request = '{"selector": {"all": true}}'
    answers: list[Any] = [store.start_run(RUN, request), store.start_run(RUN)]
    entries = [KeyEntry(k, known(k)) for k in KEYS[:4]]
    answers.append(store.register_chunk(RUN, "c1", "t1", entries))
    answers.append(store.register_chunk(RUN, "c1", "t1", entries))  # a retried fan-out
    overlapping = [KeyEntry(k, known(k)) for k in KEYS[2:6]]
    answers.append(store.register_chunk(RUN, "c2", "t1", overlapping))  # two keys taken
    answers += [store.open_runs(), store.open_chunks(RUN.run_id)]
    store.swept(RUN.run_id, 1)
    store.record_listing_failure(RUN.run_id, "LISTING_INCOMPLETE", "CTM ignored the sort")
    answers.append(
        store.record_found_nothing(RUN, [RefreshOutcome(KeyInfo("ocid1.key.x"), Status.NOT_FOUND)])
    )
    for key_id in KEYS[:4]:
        answers.append(store.record(RUN, refreshed(key_id, "v2"), known(key_id)))
    answers.append(store.record(RUN, refreshed(KEYS[0], "v3"), known(KEYS[0])))  # terminal kept
    answers.append(store.results_and_pace(RUN.run_id, KEYS, "t1"))
    tally = ChunkTally(refreshed=4, rotated=4)
    pace = TenancyPace("t1", 1_800_000_000_000)
    answers += [store.finish_chunk(RUN.run_id, "c1", tally, pace)]
    answers += [store.finish_chunk(RUN.run_id, "c1", tally, pace)]  # closed once
    answers += [store.complete_if_done(RUN.run_id), store.hand_on_resolution(RUN.run_id, "x", "y")]
    for key_id in KEYS[4:6]:
        answers.append(store.record(RUN, refreshed(key_id, "v1"), known(key_id)))
    answers += [store.finish_chunk(RUN.run_id, "c2", ChunkTally(refreshed=2))]
    answers += [store.finish_resolution(RUN.run_id, "start") for _ in range(2)]
    answers += [store.complete_if_done(RUN.run_id), store.complete_if_done(RUN.run_id)]
    answers += [
        store.record_rejected("m1", "keys: bad", "{}"),
        store.record_rejected("m1", "x", ""),
    ]
    answers += [store.latest_of([*KEYS, "ocid1.key.x"]), store.run_state(RUN.run_id)]
    answers += [store.open_runs(), store.open_chunks(RUN.run_id)]
    reader = TableReader(store._db, store.table_name)
    answers += [list(reader.results(RUN.run_id, status="REFRESHED", fields="key_id, #s"))]
    return answers


def played(client: Any, table: str) -> tuple[list[Any], list[dict[str, Any]]]:
    store = ResultStore(client, table, 90, now=lambda: NOW)
    answers = bookkeeping(store)
    return answers, sorted(_items(client, table), key=lambda item: (item["pk"], item["sk"]))


def _items(client: Any, table: str) -> list[dict[str, Any]]:
    if isinstance(client, SimDynamoDB):
        return client.items(table)
    pages = client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
    return [plain(item) for page in pages for item in page["Items"]]


def test_the_run_s_bookkeeping_answers_and_leaves_the_same_table_as_moto(
    aws_stack: LocalAwsStack,
) -> None:
    sim = SimDynamoDB()
    sim.create_table("results")

    assert played(sim, "results") == played(aws_stack.client("dynamodb"), aws_stack.table_name)


@pytest.mark.parametrize(
    ("condition", "holds"),
    [
        ("attribute_not_exists(pk) OR #s = :p", False),
        ("#s = :p AND n >= :two", False),
        ("NOT (#s = :p) OR begins_with(sk, :k)", True),
        ("(n <> :two) AND attribute_exists(n)", True),
    ],
)
def test_conditions_read_as_dynamodb_reads_them(condition: str, holds: bool) -> None:
    sim = SimDynamoDB()
    sim.create_table("t")
    item = {"pk": {"S": "a"}, "sk": {"S": "KEY#1"}, "status": {"S": "DONE"}, "n": {"N": "1"}}
    sim.put_item(TableName="t", Item=item)
    attempt: Callable[[], Any] = lambda: sim.put_item(  # noqa: E731
        TableName="t",
        Item=item,
        ConditionExpression=condition,
        ExpressionAttributeNames={"#s": "status"} if "#s" in condition else {},
        ExpressionAttributeValues={
            name: value
            for name, value in {
                ":p": {"S": "PENDING"},
                ":two": {"N": "2"},
                ":k": {"S": "KEY#"},
            }.items()
            if name in condition
        },
    )
    if holds:
        attempt()
    else:
        with pytest.raises(sim.exceptions.ConditionalCheckFailedException):
            attempt()
