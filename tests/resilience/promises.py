"""The three promises every resilience scenario checks, whatever its fault:

1. each requested key ends with exactly one terminal result in its run (and the run completes
   once, with counts that add up);
2. nothing is duplicated or dropped: every work-queue message is done or dead-lettered;
3. no secret (the CTM password, the refresh token, any JWT) appears in the captured logs.
"""

from __future__ import annotations

import logging
import re
import sys
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from cckm_refresh.observability import logger as package_logger
from devkit.lambda_events import deserialize_image
from tests.integration.refresh_world import RefreshWorld
from tests.resilience.work_queue_source import WorkQueueSource

TERMINAL = frozenset({"REFRESHED", "NOT_FOUND", "FAILED", "SKIPPED"})
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]+\.")
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({})))


# --- 1. one terminal result per key ---------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One stream record of the results table, images as plain values."""

    event: str
    old: dict[str, Any]
    new: dict[str, Any]


def table_changes(world: RefreshWorld) -> list[Change]:
    """Every change the table's stream holds, oldest first (read from the trim horizon, with
    its own iterators, so a notify scenario's own reading of the stream is left alone)."""
    streams = world.stack.client("dynamodbstreams")
    arn = world.stack.table_stream_arn
    changes = []
    shards = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
    for shard in shards:
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            for record in page["Records"]:
                change = record["dynamodb"]
                changes.append(
                    Change(
                        record["eventName"],
                        deserialize_image(change.get("OldImage", {})),
                        deserialize_image(change.get("NewImage", {})),
                    )
                )
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
    return changes


def assert_one_terminal_result_per_key(
    world: RefreshWorld,
    run_id: str,
    requested: Collection[str],
    *,
    written_once: bool = True,
) -> dict[str, dict[str, Any]]:
    """Each requested key has exactly one terminal RESULT item in ``run_id`` (no other key
    has one), the run turned COMPLETED exactly once with counts that add up, and, with
    ``written_once``, no terminal result was ever written twice. Returns the results."""
    results = _terminal_results(world, run_id, requested)
    run = world.run_item(run_id)
    counted = sum(int(run[name]) for name in ("refreshed", "not_found", "failed", "skipped"))
    observed = (run["status"], int(run["requested"]), counted)
    assert observed == ("COMPLETED", len(requested), len(requested)), "run status or counts"
    changes = [c for c in table_changes(world) if c.new.get("pk") == f"RUN#{run_id}"]
    assert len(_completions(changes)) == 1, "the run completed more than once"
    if written_once:
        twice = {key: n for key, n in _terminal_writes(changes).items() if n != 1}
        assert not twice, f"terminal results written more than once: {twice}"
    return results


def _terminal_results(
    world: RefreshWorld, run_id: str, requested: Collection[str]
) -> dict[str, dict[str, Any]]:
    """The run's results, one per requested key and none other, each terminal."""
    results = world.results(run_id)
    assert set(results) == set(requested), "a key's result is missing or one is extra"
    statuses = {key: r["status"] for key, r in results.items()}
    assert set(statuses.values()) <= TERMINAL, f"keys left non-terminal: {statuses}"
    return results


def _completions(changes: Collection[Any]) -> list[Any]:
    """The changes that turned the RUN item COMPLETED."""
    return [
        c
        for c in changes
        if c.new.get("sk") == "RUN"
        and c.new.get("status") == "COMPLETED"
        and c.old.get("status") != "COMPLETED"
    ]


def _terminal_writes(changes: Collection[Any]) -> Counter[str]:
    """Per key, the writes that left its RESULT item terminal."""
    return Counter(
        c.new["key_id"]
        for c in changes
        if c.new.get("item_type") == "RESULT" and c.new.get("status") in TERMINAL
    )


# --- 3. no secret in the logs ---------------------------------------------------------------


@dataclass
class CapturedLogs:
    """Everything logged during a test: the package's JSON log lines (stdout, via capsys) and
    every record that reached the root logger (caplog), extras and tracebacks included."""

    capsys: pytest.CaptureFixture[str]
    caplog: pytest.LogCaptureFixture
    _printed: list[str] = field(default_factory=list)

    def text(self) -> str:
        captured = self.capsys.readouterr()
        self._printed += [captured.out, captured.err]
        records = [_rendered(record) for record in self.caplog.records]
        return "\n".join([*self._printed, *records])


def _rendered(record: logging.LogRecord) -> str:
    """A record with its message, every extra attribute and its traceback."""
    extras = {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}
    parts = [record.getMessage(), repr(extras)]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return " ".join(parts)


class _CurrentStdout:
    """Writes to whatever ``sys.stdout`` is at the time: capsys's while a test phase runs
    (the logger's own stream was bound at import, to a capture long closed)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@contextmanager
def capturing_logs(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> Iterator[CapturedLogs]:
    """Capture the package logger's output (pointed at capsys's stdout) and every record."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger=package_logger.name)
    streams = [h for h in package_logger.handlers if isinstance(h, logging.StreamHandler)]
    before = [handler.stream for handler in streams]
    for handler in streams:
        handler.stream = _CurrentStdout()
    try:
        yield CapturedLogs(capsys, caplog)
    finally:
        # Not setStream(): it flushes the old stream, which capsys has closed by now.
        for handler, stream in zip(streams, before, strict=True):
            handler.stream = stream


def assert_no_secret_in_logs(logs: CapturedLogs, secrets: Collection[str]) -> None:
    """No secret value and nothing shaped like a JWT was logged."""
    text = logs.text()
    assert text.strip(), "nothing was captured: the log check would prove nothing"
    for secret in secrets:
        assert secret not in text, "a secret from the CTM secret appears in the logs"
    found = JWT_PATTERN.search(text)
    assert found is None, "a JWT appears in the logs"


# --- all three --------------------------------------------------------------------------------


def assert_promises_kept(
    world: RefreshWorld,
    source: WorkQueueSource,
    logs: CapturedLogs,
    secrets: Collection[str],
    runs: Mapping[str, Collection[str]],
    *,
    written_once: bool = True,
) -> dict[str, dict[str, dict[str, Any]]]:
    """The three promises; returns each run's results by key id for further assertions."""
    results = {
        run_id: assert_one_terminal_result_per_key(world, run_id, keys, written_once=written_once)
        for run_id, keys in runs.items()
    }
    source.assert_every_message_done_or_dead_lettered()
    assert_no_secret_in_logs(logs, secrets)
    return results


# --- exactly once: counts, rotations, refresh calls -------------------------------------------


def assert_counts_are_the_results(
    world: RefreshWorld, run_id: str, results: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The completed run's counts are its results': each status, and ``rotated`` is the number
    of results with ``version_changed``. Returns the RUN item."""
    run = world.run_item(run_id)
    statuses = Counter(str(r["status"]) for r in results.values())
    counted = {name: int(run.get(name, 0)) for name in _COUNTS}
    expected = {name: statuses[status] for name, status in _COUNTS.items()}
    expected["rotated"] = sum(1 for r in results.values() if r.get("version_changed") is True)
    counted["rotated"] = int(run.get("rotated", 0))
    assert counted == expected, "the run's counts are not its results'"
    return run


_COUNTS = {
    "refreshed": "REFRESHED",
    "not_found": "NOT_FOUND",
    "failed": "FAILED",
    "skipped": "SKIPPED",
}


def refresh_calls(scenario: Any, keys: Collection[str]) -> Counter[str]:
    """Authenticated refresh calls CTM received per key (0 for keys never called), less the
    attempts the function itself repeated after one that timed out or lost its connection.

    Such an attempt may have reached CTM, so CTM counts it, though the function never saw its
    answer; the function retries it (the contract allows it: a refresh is idempotent). A test
    that times calls out or drops connections makes such attempts, so these are subtracted,
    each one by the function's own log line; what is left is the refreshes the function
    started.
    An attempt that failed before reaching CTM (a connection reset on a pooled connection) is
    not counted by CTM either, so a key CTM saw never counts below 1."""
    calls = Counter({key: scenario.ctm.refresh_count(key) for key in keys})
    repeated = _repeated_attempts(scenario.logs)
    for key, n in calls.items():
        calls[key] = max(n - repeated[key], min(n, 1))
    return calls


_UNANSWERED = {"TIMEOUT", "CONNECTION"}
_REFRESH_PATH = re.compile(r"^POST /api/v1/cckm/oci/keys/([^/]+)/refresh$")


def _repeated_attempts(logs: CapturedLogs) -> Counter[str]:
    """Per key, the refresh attempts the function repeated after one that got no answer."""
    repeated: Counter[str] = Counter()
    for record in logs.caplog.records:
        if record.getMessage() != "CTM call failed transiently; retrying":
            continue
        path = _REFRESH_PATH.match(str(getattr(record, "ctm_call", "")))
        if path and getattr(record, "error_code", None) in _UNANSWERED:
            repeated[path.group(1)] += 1
    return repeated


def refreshes_between(ctm: Any, start: float, end: float) -> Counter[str]:
    """Refresh calls CTM received between two ``time.monotonic()`` instants, per key."""
    return Counter(
        str(entry.key_id)
        for entry in ctm.request_log
        if entry.operation == "refresh"
        and entry.authenticated
        and entry.key_id
        and start <= entry.monotonic <= end
    )


# --- no secret anywhere -----------------------------------------------------------------------


def assert_no_secret_anywhere(
    world: RefreshWorld,
    logs: CapturedLogs,
    secrets: Collection[str],
    *,
    run_ids: Collection[str] = (),
    messages: Collection[Any] = (),
) -> None:
    """No secret value and nothing shaped like a JWT in the captured logs, in any item of the
    runs (results, chunks, the run), in the queue messages or the dead-letter queues."""
    assert_no_secret_in_logs(logs, secrets)
    texts = [repr(item) for run_id in run_ids for item in run_items(world, run_id)]
    texts += [repr(message) for message in messages]
    dead_letters = [world.stack.dead_letter_queue_url, world.stack.tenancy_dead_letter_queue_url]
    for queue in dead_letters:
        texts += [repr(m) for m in world.stack.receive_all(queue)]
    stored = "\n".join(texts)
    assert stored.strip(), "nothing was read: the check would prove nothing"
    for secret in secrets:
        assert secret not in stored, "a secret from the CTM secret is stored or queued"
    assert JWT_PATTERN.search(stored) is None, "a JWT is stored or queued"


def run_items(world: RefreshWorld, run_id: str, prefix: str = "") -> list[dict[str, Any]]:
    """The run's items (the RUN item, its chunks and results) whose sort key starts with
    ``prefix``, strongly consistent."""
    from boto3.dynamodb.conditions import Key

    condition = Key("pk").eq(f"RUN#{run_id}")
    if prefix:
        condition &= Key("sk").begins_with(prefix)
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"KeyConditionExpression": condition, "ConsistentRead": True}
    table = world.stack.table
    while True:
        page = table.query(**kwargs)
        items += [dict(item) for item in page["Items"]]
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
