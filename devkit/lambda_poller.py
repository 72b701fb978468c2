"""Lambda's SQS event source mappings, modelled: how the demo, the tests and the benchmarks
deliver queue messages to the refresh function.

    from devkit.lambda_poller import LambdaPoller, InProcessFunction, mappings_from_template

    target = InProcessFunction(lambda: load_handler("refresh", env))  # or any event -> answer
    poller = LambdaPoller(stack.client("sqs"), mappings_from_template(stack), target)
    poller.invoke(schedule_event)            # a direct invocation (the schedule firing), async
    report = poller.drain(timeout=120)       # until the queues are empty and nothing in flight
    report.drained, report.invocations, report.deliveries, report.direct_responses

API: ``EventSourceMapping`` (one queue's mapping), ``mappings_from_template(stack)`` (the
function's SQS events of ``template.yaml``, resolved against a ``devkit.aws_local.LocalAwsStack``),
``LambdaPoller`` (``invoke``, ``drain``, ``report``), ``InProcessFunction`` (handler modules in
this process, with a fake context whose remaining time the caller controls) and
``devkit.lambda_events.sqs_event(messages, queue_arn, region)``. A target is any callable
taking the event and returning the handler's answer; raising means the invocation failed (a
crash, a timeout).
``bench.world.ContainerPool`` is the benchmarks' target: real handler processes.

What is modelled, per mapping:

- At most ``MaximumConcurrency`` invocations in flight, each with up to ``BatchSize`` messages
  (received 10 at a time). On a standard queue with ``MaximumBatchingWindowInSeconds`` the
  poller keeps receiving for up to that long to fill a batch; Lambda allows no window on FIFO.
- FIFO: at most one batch per message group in flight, and a group's messages in order. moto
  (5.2, server mode) already holds these back: a receive returns no message of a group that
  has a message received and neither deleted nor visible again, and returns a group's
  messages in the order they were sent. The poller checks it anyway: a message of a group
  with a batch in flight is held back (made visible again at once, never delivered, counted
  in ``report.held_back``). moto counts that receive in ``ApproximateReceiveCount``; that is
  the limit of this safeguard, and ``held_back`` says whether it was ever needed (with moto
  5.2 it stays 0). A batch may hold several groups, as Lambda's may: it holds what moto's
  receive returns, the oldest visible messages in send order, skipping busy groups. Real SQS
  first returns as many messages of one group as it can, so its batches tend to span fewer
  groups (and more invocations run side by side) than here.
- The event is Lambda's: records with ``messageId``, ``receiptHandle``, ``body``,
  ``attributes`` (``ApproximateReceiveCount``, ``SentTimestamp``, ``SenderId``,
  ``ApproximateFirstReceiveTimestamp``; ``MessageGroupId``, ``MessageDeduplicationId`` and
  ``SequenceNumber`` on FIFO), ``messageAttributes`` (camelCase, as Lambda renames them),
  ``md5OfBody``, ``eventSource`` ``aws:sqs``, ``eventSourceARN``, ``awsRegion``.
- The answer, with ``ReportBatchItemFailures``: messages not named in ``batchItemFailures``
  are deleted; the named ones stay in flight until their visibility timeout runs out, or
  until whatever ``ChangeMessageVisibility`` the handler did. An answer naming an unknown or
  empty ``itemIdentifier`` fails the whole batch, as Lambda does. A raised exception (a crash,
  a killed container) fails the whole batch: nothing is deleted.
- Redrive: moto moves a message to its dead-letter queue when it is received after
  ``maxReceiveCount`` deliveries, as SQS's redrive policy does.

Time can be compressed: ``redeliver_failed_after`` / ``redeliver_crashed_after`` (seconds, or
None for what SQS would do) change the visibility of failed / crashed batches' messages, so a
demo need not wait out a 30 s back-off or a 1,800 s visibility timeout.

Long polling: Lambda's pollers long-poll, so a message sent to an idle queue is received at
once. Given ``sent`` (a callable that waits up to the given seconds and says whether a message
was sent: ``bench.world.SendSignal.wait``), the poller polls as soon as one is; without it, it
short-polls every ``poll_interval`` seconds while there is nothing to do. Either way it polls
again at once when an invocation ends (its messages deleted, its group free).

Not modelled: Lambda's scaling ramp (it adds pollers over minutes; here every slot up to
``MaximumConcurrency`` is used at once), the 6 MB payload limit, function timeouts (a target
enforces its own), and retries of failed asynchronous invocations.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from devkit.lambda_events import sqs_event
from devkit.template import REFRESH_FUNCTION_ID, Intrinsics, load_template, parameter_defaults

Target = Callable[[dict[str, Any]], Any]
DIRECT = "direct"  # the source name of invocations that did not come from a queue
RECEIVE_MAX = 10  # what one ReceiveMessage call returns at most


# --- mappings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventSourceMapping:
    """One SQS event source of the function, with the template's settings."""

    queue_url: str
    queue_arn: str
    fifo: bool = False
    batch_size: int = 10
    maximum_concurrency: int = 1000
    batching_window_seconds: float = 0.0
    report_batch_item_failures: bool = True
    name: str = ""

    @property
    def label(self) -> str:
        """The mapping's name, else its queue's name."""
        return self.name or self.queue_arn.rsplit(":", 1)[-1]


def mappings_from_template(
    stack: Any,
    function_id: str = REFRESH_FUNCTION_ID,
    parameters: Mapping[str, str] | None = None,
    template: Mapping[str, Any] | None = None,
) -> list[EventSourceMapping]:
    """The function's SQS events in ``template.yaml``, on ``stack``'s queues.

    The queue of an event ``Queue: !GetAtt SomeQueue.Arn`` is the stack's ``some_queue_url`` /
    ``some_queue_arn``; ``parameters`` override the template's parameter defaults (e.g. a
    ``MaximumConcurrency`` parameter).
    """
    template = template or load_template()
    refs = {**parameter_defaults(template), **(parameters or {})}
    intrinsics = Intrinsics(refs, {}, template.get("Conditions", {}))
    events = template["Resources"][function_id]["Properties"].get("Events", {})
    mappings = []
    for name, event in events.items():
        if event.get("Type") != "SQS":
            continue
        properties = event["Properties"]
        logical_id = _queue_logical_id(properties["Queue"])
        attribute = re.sub(r"(?<!^)(?=[A-Z])", "_", logical_id).lower()
        url, arn = getattr(stack, f"{attribute}_url"), getattr(stack, f"{attribute}_arn")
        fifo = str(url).endswith(".fifo")  # SQS requires the suffix of FIFO queue names
        scaling = intrinsics.resolve(properties.get("ScalingConfig", {}))
        mappings.append(
            EventSourceMapping(
                queue_url=url,
                queue_arn=arn,
                fifo=fifo,
                batch_size=int(intrinsics.resolve(properties.get("BatchSize", 10))),
                maximum_concurrency=int(scaling.get("MaximumConcurrency", 1000)),
                batching_window_seconds=float(
                    intrinsics.resolve(properties.get("MaximumBatchingWindowInSeconds", 0))
                ),
                report_batch_item_failures="ReportBatchItemFailures"
                in properties.get("FunctionResponseTypes", []),
                name=name,
            )
        )
    return mappings


def _queue_logical_id(queue: Any) -> str:
    if isinstance(queue, Mapping) and "Fn::GetAtt" in queue:
        target = queue["Fn::GetAtt"]
        return str(target[0] if isinstance(target, list) else target.split(".")[0])
    raise ValueError(f"an SQS event's Queue must be !GetAtt <queue>.Arn, not {queue!r}")


# --- what happened ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InvocationRecord:
    """One invocation: where its event came from, what it held and how it ended.

    ``outcome`` is ``ok`` (every message deleted, or a direct invocation that answered),
    ``partial`` (some messages reported failed), ``failed`` (an answer that fails the whole
    batch) or ``crashed`` (the target raised). Times are ``time.monotonic()``: ``received``
    when the batch's first message was received, ``ended`` when its answer was applied.
    """

    number: int
    source: str
    message_ids: tuple[str, ...]
    groups: tuple[str, ...]
    received: float
    started: float
    ended: float
    outcome: str
    failed: tuple[str, ...]
    response: Any
    error: BaseException | None = None


@dataclass
class PollerReport:
    """Everything the poller did so far."""

    invocations: list[InvocationRecord] = field(default_factory=list)
    deliveries: Counter[str] = field(default_factory=Counter)  # message id -> deliveries
    deleted: set[str] = field(default_factory=set)
    held_back: int = 0
    peak_in_flight: Counter[str] = field(default_factory=Counter)  # source -> invocations
    drained: bool = False
    seconds: float = 0.0

    @property
    def direct_responses(self) -> list[Any]:
        """The answers of direct invocations, in the order they were made."""
        return [i.response for i in self.invocations if i.source == DIRECT]

    @property
    def crashes(self) -> list[InvocationRecord]:
        """Invocations whose target raised."""
        return [i for i in self.invocations if i.outcome == "crashed"]

    def of(self, source: str) -> list[InvocationRecord]:
        """The invocations of one mapping (its label) or of ``DIRECT``."""
        return [i for i in self.invocations if i.source == source]


# --- the poller ------------------------------------------------------------------------------


@dataclass
class _Batch:
    mapping: EventSourceMapping
    messages: list[dict[str, Any]]
    received: float


class LambdaPoller:
    """Delivers the mappings' queues to ``target`` as Lambda's SQS pollers do (see module doc).

    ``sqs`` is a boto3 SQS client; the poller is its only user in the poller's threads
    (calls are made from one thread at a time).
    """

    def __init__(
        self,
        sqs: Any,
        mappings: Sequence[EventSourceMapping],
        target: Target,
        *,
        region: str = "us-east-1",
        poll_interval: float = 0.1,
        redeliver_failed_after: int | None = None,
        redeliver_crashed_after: int | None = None,
        sent: Callable[[float], bool] | None = None,
    ) -> None:
        self._sqs = sqs
        self.mappings = list(mappings)
        self._target = target
        self._region = region
        self._poll_interval = poll_interval
        self._redeliver_failed_after = redeliver_failed_after
        self._redeliver_crashed_after = redeliver_crashed_after
        self._report = PollerReport()
        self._numbers = itertools.count()
        self._changed = threading.Condition()
        # Invocations ended and messages sent so far: a round that missed one polls again.
        self._events = 0
        self._sqs_lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()  # source -> invocations in flight
        self._busy_groups: dict[str, Counter[str]] = {m.label: Counter() for m in self.mappings}
        self._gathering: dict[str, _Batch] = {}
        self._workers = ThreadPoolExecutor(
            max_workers=sum(min(m.maximum_concurrency, 64) for m in self.mappings) + 4,
            thread_name_prefix="lambda-poller",
        )
        self._closed = threading.Event()
        if sent is not None:
            threading.Thread(target=self._long_poll, args=(sent,), daemon=True).start()

    # --- public ---

    def invoke(self, event: Mapping[str, Any]) -> None:
        """Invoke the target with ``event`` now, in the background (e.g. a schedule firing);
        its answer is in ``report().direct_responses`` once ``drain`` returns."""
        now = time.monotonic()
        with self._changed:
            self._in_flight[DIRECT] += 1
            self._peak(DIRECT)
        self._workers.submit(self._run_direct, dict(event), now)

    def drain(self, timeout: float = 120.0) -> PollerReport:
        """Poll until every mapping's queue is empty and nothing is in flight, or ``timeout``
        seconds pass; ``report.drained`` says which."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            with self._changed:
                events_before = self._events
            dispatched = self._poll_round()
            with self._changed:
                busy = sum(self._in_flight.values()) + len(self._gathering)
            if not dispatched and not busy and self._queues_empty():
                with self._changed:
                    # A direct invocation may have sent messages after we looked.
                    if not sum(self._in_flight.values()):
                        self._report.drained = True
                        break
            if not dispatched:
                with self._changed:
                    # What ended or was sent during the round (a group freed, a message that
                    # a long poll would return) is polled for at once.
                    self._changed.wait_for(
                        lambda seen=events_before: self._events != seen, self._poll_interval
                    )
        else:
            self._report.drained = False
        self._report.seconds += time.monotonic() - started
        return self._report

    def report(self) -> PollerReport:
        """What the poller did so far (the same object ``drain`` returns)."""
        return self._report

    def close(self, wait: bool = True) -> None:
        """Stop the worker threads (after the invocations in flight, when ``wait``)."""
        self._closed.set()
        self._workers.shutdown(wait=wait)

    def __enter__(self) -> LambdaPoller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- polling ---

    def _long_poll(self, sent: Callable[[float], bool]) -> None:
        """Wake the poll loop whenever ``sent`` reports a message sent."""
        while not self._closed.is_set():
            try:
                woken = sent(0.2)
            except OSError:  # the signal's socket is gone: the world is stopping
                return
            if woken:
                with self._changed:
                    self._wake()

    def _wake(self) -> None:
        """Something changed (an invocation ended, a message was sent): the poll loop, if
        waiting, polls again now; if in a round, right after it. Called holding ``_changed``."""
        self._events += 1
        self._changed.notify_all()

    def _poll_round(self) -> bool:
        """Receive for every mapping with a free slot; True if an invocation was started."""
        dispatched = False
        for mapping in self.mappings:
            while True:
                with self._changed:
                    free = self._in_flight[mapping.label] < mapping.maximum_concurrency
                if not free:
                    break
                batch = self._gather(mapping)
                if batch is None:
                    break
                self._dispatch(batch)
                dispatched = True
        return dispatched

    def _gather(self, mapping: EventSourceMapping) -> _Batch | None:
        """A batch ready to invoke, or None (nothing visible, or still inside the window)."""
        batch = self._gathering.pop(mapping.label, None)
        if batch is None:
            batch = _Batch(mapping, [], time.monotonic())
        while len(batch.messages) < mapping.batch_size:
            received = self._receive(mapping, mapping.batch_size - len(batch.messages))
            if not received:
                break
            batch.messages += received
        if not batch.messages:
            return None
        full = len(batch.messages) >= mapping.batch_size
        window = 0.0 if mapping.fifo else mapping.batching_window_seconds
        if not full and time.monotonic() - batch.received < window:
            self._gathering[mapping.label] = batch  # in flight for us, as for Lambda
            return None
        return batch

    def _receive(self, mapping: EventSourceMapping, wanted: int) -> list[dict[str, Any]]:
        with self._sqs_lock:
            messages: list[dict[str, Any]] = self._sqs.receive_message(
                QueueUrl=mapping.queue_url,
                MaxNumberOfMessages=min(RECEIVE_MAX, wanted),
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
                WaitTimeSeconds=0,
            ).get("Messages", [])
        if not mapping.fifo or not messages:
            return messages
        busy = self._busy_groups[mapping.label]
        gathering = self._gathering.get(mapping.label)
        taken = {_group(m) for m in gathering.messages} if gathering else set()
        kept: list[dict[str, Any]] = []
        held: list[dict[str, Any]] = []
        for message in messages:
            group = _group(message)
            (held if busy[group] and group not in taken else kept).append(message)
        if held:
            self._report.held_back += len(held)
            self._change_visibility(mapping, held, 0)
        return kept

    def _dispatch(self, batch: _Batch) -> None:
        mapping = batch.mapping
        with self._changed:
            self._in_flight[mapping.label] += 1
            self._peak(mapping.label)
            for message in batch.messages:
                self._report.deliveries[message["MessageId"]] += 1
                if mapping.fifo:
                    self._busy_groups[mapping.label][_group(message)] += 1
        self._workers.submit(self._run_batch, batch)

    def _peak(self, source: str) -> None:
        peak = self._report.peak_in_flight
        peak[source] = max(peak[source], self._in_flight[source])

    # --- invoking ---

    def _run_direct(self, event: dict[str, Any], received: float) -> None:
        number = next(self._numbers)
        started = time.monotonic()
        try:
            response, error, outcome = self._target(event), None, "ok"
        except Exception as crash:  # the invocation failed; the caller reads why
            response, error, outcome = None, crash, "crashed"
        record = InvocationRecord(
            number,
            DIRECT,
            (),
            (),
            received,
            started,
            time.monotonic(),
            outcome,
            (),
            response,
            error,
        )
        with self._changed:
            self._report.invocations.append(record)
            self._in_flight[DIRECT] -= 1
            self._wake()

    def _run_batch(self, batch: _Batch) -> None:
        mapping = batch.mapping
        ids = tuple(m["MessageId"] for m in batch.messages)
        number = next(self._numbers)
        started = time.monotonic()
        error: BaseException | None = None
        try:
            response = self._target(sqs_event(batch.messages, mapping.queue_arn, self._region))
        except Exception as crash:  # Lambda: the whole batch comes back
            response, error = None, crash
        if error is not None:
            outcome, failed = "crashed", ids
        else:
            failed = _failed_ids(response, ids, mapping.report_batch_item_failures)
            outcome = "ok" if not failed else ("failed" if failed == ids else "partial")
        self._settle(batch, set(failed), crashed=error is not None)
        record = InvocationRecord(
            number=number,
            source=mapping.label,
            message_ids=ids,
            groups=tuple(dict.fromkeys(_group(m) for m in batch.messages if mapping.fifo)),
            received=batch.received,
            started=started,
            ended=time.monotonic(),
            outcome=outcome,
            failed=failed,
            response=response,
            error=error,
        )
        with self._changed:
            self._report.invocations.append(record)
            self._in_flight[mapping.label] -= 1
            if mapping.fifo:
                busy = self._busy_groups[mapping.label]
                for message in batch.messages:
                    busy[_group(message)] -= 1
                busy += Counter()  # drop groups at zero
                self._busy_groups[mapping.label] = busy
            self._wake()

    def _settle(self, batch: _Batch, failed: set[str], crashed: bool) -> None:
        """Delete what succeeded; bring failures back as configured (else SQS's timers)."""
        mapping = batch.mapping
        done = [m for m in batch.messages if m["MessageId"] not in failed]
        for start in range(0, len(done), RECEIVE_MAX):
            chunk = done[start : start + RECEIVE_MAX]
            with self._sqs_lock:
                self._sqs.delete_message_batch(
                    QueueUrl=mapping.queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(chunk)
                    ],
                )
        with self._changed:
            self._report.deleted |= {m["MessageId"] for m in done}
        after = self._redeliver_crashed_after if crashed else self._redeliver_failed_after
        if after is not None:
            self._change_visibility(
                mapping, [m for m in batch.messages if m["MessageId"] in failed], after
            )

    def _change_visibility(
        self, mapping: EventSourceMapping, messages: Sequence[Mapping[str, Any]], seconds: int
    ) -> None:
        for start in range(0, len(messages), RECEIVE_MAX):
            chunk = messages[start : start + RECEIVE_MAX]
            with self._sqs_lock:
                self._sqs.change_message_visibility_batch(
                    QueueUrl=mapping.queue_url,
                    Entries=[
                        {
                            "Id": str(i),
                            "ReceiptHandle": m["ReceiptHandle"],
                            "VisibilityTimeout": seconds,
                        }
                        for i, m in enumerate(chunk)
                    ],
                )

    def _queues_empty(self) -> bool:
        for mapping in self.mappings:
            with self._sqs_lock:
                counts = self._sqs.get_queue_attributes(
                    QueueUrl=mapping.queue_url,
                    AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed",
                    ],
                )["Attributes"]
            if any(int(value) for value in counts.values()):
                return False
        return True


def _group(message: Mapping[str, Any]) -> str:
    return str(message.get("Attributes", {}).get("MessageGroupId", ""))


def _failed_ids(response: Any, ids: tuple[str, ...], reported: bool) -> tuple[str, ...]:
    """The messages Lambda keeps, from the answer: all of them when the answer is invalid."""
    failures = response.get("batchItemFailures") if isinstance(response, Mapping) else None
    if not reported or failures is None:
        return ()  # Lambda reads any other answer as success
    if not isinstance(failures, list):
        return ids
    named = [_identifier(failure) for failure in failures]
    if any(identifier not in ids for identifier in named):
        return ids  # an invalid identifier fails the whole batch
    return tuple(i for i in ids if i in set(named))


def _identifier(failure: object) -> str:
    identifier = failure.get("itemIdentifier") if isinstance(failure, Mapping) else None
    return str(identifier) if identifier else ""


# --- in-process target -----------------------------------------------------------------------


class InProcessFunction:
    """A function's handler modules in this process, invoked with a fake Lambda context.

    ``containers`` is a loader (called for each concurrent invocation that finds no idle
    module: a cold start, e.g. ``lambda: load_handler("refresh", env)``) or one loaded module
    (a single warm container: concurrent invocations wait for it). ``remaining(n)`` gives
    invocation ``n``'s remaining-time callable (seconds), or None for ``timeout_seconds`` of
    wall time.
    """

    def __init__(
        self,
        containers: ModuleType | Callable[[], ModuleType],
        *,
        function_name: str = "refresh",
        timeout_seconds: float = 300.0,
        remaining: Callable[[int], Callable[[], float] | None] | None = None,
    ) -> None:
        self._load = None if isinstance(containers, ModuleType) else containers
        self._idle: list[ModuleType] = [containers] if isinstance(containers, ModuleType) else []
        self._available = threading.Condition()
        self._function_name = function_name
        self._timeout = timeout_seconds
        self._remaining = remaining
        self._numbers = itertools.count()
        self.cold_starts = 0

    def __call__(self, event: dict[str, Any]) -> Any:
        from devkit.lambda_runtime import FakeLambdaContext

        number = next(self._numbers)
        module = self._take()
        try:
            remaining = self._remaining(number) if self._remaining else None
            context = FakeLambdaContext(self._function_name, self._timeout, remaining)
            return module.handler(json.loads(json.dumps(event)), context)
        finally:
            with self._available:
                self._idle.append(module)
                self._available.notify()

    def _take(self) -> ModuleType:
        with self._available:
            if not self._idle and self._load is None:
                self._available.wait_for(lambda: bool(self._idle))
            if self._idle:
                return self._idle.pop()
            self.cold_starts += 1
        assert self._load is not None
        return self._load()
