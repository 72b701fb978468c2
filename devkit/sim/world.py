"""The world around the refresh function, simulated: what ``template.yaml`` deploys, run on a
virtual clock with the real function code inside.

- **Lambda**: containers, cold and warm, each invocation with the template's timeout as its
  budget (a watchdog kills the container at its end, and counts it), killed at random moments
  when the scenario asks (a kill lands where the code next yields: between two calls to
  DynamoDB, SQS or CTM); the refresh function in each container is built as
  ``functions/refresh/app.py`` builds it (``RefreshFunction`` over ``refresh_service``),
  with the simulation's ports and runtime.
- **Event source mappings** from the template: per queue its ``BatchSize`` and
  ``MaximumConcurrency``; FIFO one batch per message group in flight; partial batch
  responses; a failed invocation leaves its whole batch for the visibility timeout.
- **SQS** (``sim.sqs``), **DynamoDB** (``sim.dynamodb``), **CTM** (``sim.ctm``: the emulator).
- **EventBridge Scheduler**: the schedule fires at the scenario's times, an asynchronous
  invocation Lambda retries twice (``MaximumRetryAttempts``) a minute apart; **pipelines**
  send requests to the work queue.

``World(scenario).run()`` returns a ``Report``; ``sim.properties`` says what must hold.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cckm_refresh.config import RefreshSettings
from cckm_refresh.observability import logger, metrics
from cckm_refresh.refresh_function import RefreshFunction
from cckm_refresh.run.wiring import Ports, refresh_service
from devkit.ctm_emulator.keyset import generate_keys
from devkit.lambda_poller import EventSourceMapping, mappings_from_template
from devkit.sim.ctm import SECRET, SimCtm
from devkit.sim.dynamodb import SimDynamoDB, plain
from devkit.sim.runtime import Killed, SimRuntime, SimTask
from devkit.sim.sqs import Queue, SimSqs
from devkit.template import load_template, parameter_defaults

TABLE = "results"


def _sort_refused(faults: Any) -> None:
    faults.accepted_sort_fields = {"createdAt"}  # `id` refused: the client falls back


def _sort_ignored(faults: Any) -> None:
    faults.ignore_sort, faults.default_sort = True, "id"  # answers in its own order


def _page_capped(faults: Any) -> None:
    faults.max_page_size = 7  # many pages, each shorter than asked


# How CTM lists keys in a scenario (the modes where a real CTM may differ from the docs).
LISTINGS: dict[str, Callable[[Any], None]] = {
    "sorted": lambda _faults: None,
    "sort-refused": _sort_refused,
    "sort-ignored": _sort_ignored,
    "page-capped": _page_capped,
}
TEMPLATE = load_template()
LAMBDA_ASYNC_RETRIES = 2  # the template's EventInvokeConfig MaximumRetryAttempts
LAMBDA_ASYNC_RETRY_DELAY = 60.0
QUEUE_VISIBILITY = 1800.0  # the template's queues
POLL_INTERVAL = 1.0
SWEEP_EVERY = 900.0  # the template's sweep schedule
KILL_STEPS = 300  # a kill lands at a step drawn up to this far into the invocation


@dataclass(frozen=True)
class Pipeline:
    """A pipeline's request to the work queue at ``at``: the first ``keys`` keys of tenancy
    ``tenancy`` and a CCKM id that does not exist, or, with ``keys`` 0, a selector of it."""

    at: float
    tenancy: int = 0
    keys: int = 0


UNKNOWN_KEY = "00000000-0000-4000-8000-00000000dead"


@dataclass(frozen=True)
class Scenario:
    """What the world holds and how it behaves; every field has the template's value or a
    plain default, so a test names only what it is about."""

    tenancies: tuple[int, ...] = (30,)  # keys per tenancy
    rate: float = 4.0  # TENANCY_RATE_LIMIT
    ctm_timeout: float = 20.0  # CTM_TIMEOUT_SECONDS
    function_timeout: float = 300.0
    latency: float = 0.2  # CTM's answer time
    tenancy_batch_size: int | None = None  # None: the template's
    max_receive_count: int = 5
    chunk_size: int = 100  # FANOUT_CHUNK_SIZE
    concurrency: int = 64  # REFRESH_CONCURRENCY
    kill_rate: float = 0.0  # the chance an invocation is killed at a random moment
    error_rate: float = 0.0  # CTM answers 503 to this share of calls
    oci_read_limit: float | None = 10.0  # OCI reads/s per tenancy (a refresh costs 2)
    token_lifetime: float = 300.0
    rotated: int = 0  # keys OCI rotated before the schedule fires (every n-th key)
    known_before: bool = False  # the table holds each key's LATEST item from a night before
    odd: bool = False  # CTM answers oddly for three keys: gone, refused by OCI, vault busy
    listing: str = "sorted"  # how CTM lists: one of LISTINGS
    schedules: tuple[float, ...] = (0.0,)  # when the schedule fires (selector: every key)
    pipeline: tuple[Pipeline, ...] = ()  # requests sent to the work queue
    warm: bool = True  # containers are reused
    seed: int = 0
    horizon: float = 12 * 3600.0  # virtual seconds before the world gives up


@dataclass
class Invocation:
    started: float
    ended: float | None = None
    cold: bool = False
    killed: bool = False  # by the scenario (an OOM, a host failure)
    overran: bool = False  # by Lambda, at the end of its budget
    failed: bool = False
    error: BaseException | None = None
    records: int = 0
    source: str = ""
    handoffs: int = 0  # the most hand-offs without progress a message of it carried


@dataclass
class Report:
    """What happened: the table, the calls, the invocations."""

    scenario: Scenario
    ended_at: float
    runs: dict[str, dict[str, Any]]
    results: dict[str, dict[str, dict[str, Any]]]  # run id -> key id -> RESULT item
    expected_runs: set[str]
    keys: dict[str, str]  # key id -> tenancy
    refreshes: list[tuple[str | None, str | None, float]]  # CTM's log: (tenancy, key, arrival)
    ctm_log: list[Any]
    requested: dict[str, set[str]]  # run id -> the key ids it must have a result for
    odd_keys: dict[str, str]  # key id -> the status CTM's odd answer must end it with
    invocations: list[Invocation]
    dynamodb: SimDynamoDB
    sqs: SimSqs
    errors: list[tuple[str, BaseException]]  # the world's own threads' (not invocations')
    dead_letters: int = 0

    def refreshes_during(self, invocation: Invocation) -> int:
        """Refresh calls that reached CTM while ``invocation`` ran."""
        end = invocation.ended if invocation.ended is not None else self.ended_at
        return sum(1 for _, _, at in self.refreshes if invocation.started <= at <= end)

    @property
    def invocation_errors(self) -> list[BaseException]:
        return [i.error for i in self.invocations if i.error is not None]


class _Container:
    """One Lambda execution environment: the function as app.py builds it."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.service: Any = None
        self.function = RefreshFunction(world.settings, self._service, runtime=world.runtime)

    def _service(self) -> Any:
        if self.service is None:
            self.service = refresh_service(
                self.world.settings, runtime=self.world.runtime, ports=self.world.ports
            )
        return self.service


class World:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.runtime = runtime = SimRuntime(scenario.seed)
        self.db = SimDynamoDB(self._io)
        self.db.create_table(TABLE)
        self.sqs = SimSqs(runtime, self._io)
        self.keys = _keys(scenario)
        self.ctm = SimCtm(
            runtime,
            self.keys,
            seed=scenario.seed,
            latency=scenario.latency,
            token_lifetime=scenario.token_lifetime,
        )
        self.ctm.faults.tenancy_read_limit = scenario.oci_read_limit
        LISTINGS[scenario.listing](self.ctm.faults)
        # Keys CTM answers oddly, and the outcome each must end with (docs/reference.md 4.4).
        self.odd_keys: dict[str, str] = {}
        if scenario.odd and len(self.keys) >= 3:
            gone, refused, busy = (k["id"] for k in self.keys[:3])
            self.ctm.faults.gone_keys.add(gone)
            self.ctm.faults.not_authorized_keys[refused] = 404
            self.ctm.faults.vault_busy(busy, times=1)
            self.odd_keys = {gone: "NOT_FOUND", refused: "FAILED", busy: "REFRESHED"}
        if scenario.known_before:
            self._seed_latest_items()
        if scenario.rotated:
            step = max(1, len(self.keys) // scenario.rotated)
            for key in self.keys[::step][: scenario.rotated]:
                self.ctm.inventory.rotate(key["id"])
        self.ctm.faults.error_rate = scenario.error_rate
        self.work, self.tenancy = self._queues()
        self.settings = RefreshSettings(
            ctm_base_url="https://ctm.sim",
            ctm_secret_id="ctm-secret",
            results_table=TABLE,
            work_queue_url=self.work.url,
            dead_letter_queue_url=self.work.dead_letter.url if self.work.dead_letter else None,
            tenancy_queue_url=self.tenancy.url,
            refresh_concurrency=scenario.concurrency,
            tenancy_rate_limit=scenario.rate,
            ctm_timeout_seconds=scenario.ctm_timeout,
            max_receive_count=scenario.max_receive_count,
            fanout_chunk_size=scenario.chunk_size,
        )
        self.ports = Ports(
            dynamodb=self.db, sqs=self.sqs, secret=lambda _force: SECRET, ctm_adapter=None
        )
        self.ports = replace(self.ports, ctm_adapter=self.ctm.adapter())
        self.mappings = self._mappings()
        self.invocations: list[Invocation] = []
        self.requested: dict[str, set[str]] = {}
        self._idle: list[_Container] = []
        self._stopped = False

    # --- the world's resources ----------------------------------------------------------------

    def _seed_latest_items(self) -> None:
        """Each key's ``LATEST`` item as a refresh the night before left it."""
        table = self.db.tables[TABLE]
        for key in self.keys:
            params = key["oci_params"]
            item = {
                "pk": f"KEY#{key['id']}",
                "sk": "LATEST",
                "item_type": "KEY",
                "key_id": key["id"],
                "tenancy": key["tenancy"],
                "current_key_version": params["current_key_version"],
                "lifecycle_state": params["lifecycle_state"],
                "last_status": "REFRESHED",
                "updated_at": "2027-01-14T08:00:00.000Z",
            }
            table[(item["pk"], "LATEST")] = {k: {"S": v} for k, v in item.items()}

    def _queues(self) -> tuple[Queue, Queue]:
        count = self.scenario.max_receive_count
        work_dlq = self.sqs.create_queue("work-dlq", QUEUE_VISIBILITY)
        work = self.sqs.create_queue("work", QUEUE_VISIBILITY, work_dlq, count)
        tenancy_dlq = self.sqs.create_queue("tenancy-dlq.fifo", QUEUE_VISIBILITY)
        tenancy = self.sqs.create_queue("tenancy.fifo", QUEUE_VISIBILITY, tenancy_dlq, count)
        return work, tenancy

    def _mappings(self) -> list[EventSourceMapping]:
        stack = _QueueNames(self.work, self.tenancy)
        mappings = mappings_from_template(stack, template=TEMPLATE)
        if self.scenario.tenancy_batch_size is not None:
            mappings = [
                replace(m, batch_size=self.scenario.tenancy_batch_size) if m.fifo else m
                for m in mappings
            ]
        return mappings

    def _io(self) -> None:
        """A call to an AWS service: a few milliseconds, and a point where threads switch."""
        self.runtime.sleep(0.002 + 0.006 * self.runtime.rng.random())

    # --- Lambda -------------------------------------------------------------------------------

    def invoke(self, event: Mapping[str, Any], source: str) -> Any:
        """One invocation, synchronously in the caller's thread: its answer, or ``Killed``
        when its container died (a kill, or the end of its budget)."""
        runtime, scenario = self.runtime, self.scenario
        cold = not (scenario.warm and self._idle)
        container = _Container(self) if cold else self._idle.pop()
        invocation = Invocation(runtime.now, cold=cold, source=source)
        records = event.get("Records", []) if isinstance(event, Mapping) else []
        invocation.records = len(records)
        invocation.handoffs = max((_handoffs(r.get("body", "")) for r in records), default=0)
        self.invocations.append(invocation)
        end = runtime.now + scenario.function_timeout
        answer: list[Any] = []
        context = _Context(lambda: max(0, round((end - runtime.now) * 1000)))

        def handle() -> None:
            try:
                answer.append(container.function.handle(event, context))
            finally:
                metrics.clear_metrics()

        task = runtime.spawn(handle, f"invoke-{source}", container)
        self._watch(task, container, invocation, end)
        task.join()
        invocation.ended = runtime.now
        if runtime.is_dead(container) or task.thread.error is not None:
            invocation.failed = True
            invocation.error = Killed() if runtime.is_dead(container) else task.thread.error
            return invocation.error
        self._idle.append(container)
        return answer[0]

    def _watch(
        self, task: SimTask, container: _Container, invocation: Invocation, end: float
    ) -> None:
        """Lambda ends the invocation at its budget; the scenario may kill it before."""
        runtime = self.runtime

        def kill_at(moment: float, reason: str) -> None:
            runtime.sleep(moment - runtime.now)
            if not task.thread.done and not runtime.is_dead(container):
                setattr(invocation, reason, True)
                runtime.kill(container)

        runtime.spawn(lambda: kill_at(end, "overran"), "budget")
        if runtime.rng.random() < self.scenario.kill_rate:
            invocation.killed = True
            runtime.kill_after(container, runtime.rng.randint(1, KILL_STEPS))

    def _poll(self, mapping: EventSourceMapping) -> None:
        """One event source mapping: batches of visible messages to concurrent invocations."""
        queue = self.sqs.queues[mapping.queue_url]
        in_flight = [0]
        while not self._stopped:
            batch = []
            if in_flight[0] < mapping.maximum_concurrency:
                batch = self.sqs.receive(queue, mapping.batch_size, set())
            if batch:
                in_flight[0] += 1
                self.runtime.spawn(
                    lambda b=batch: self._deliver(mapping, queue, b, in_flight), "delivery"
                )
                continue
            with self.sqs.sent:
                visible = self.sqs.next_visible(queue)
                wait = (
                    POLL_INTERVAL
                    if visible is None
                    else min(POLL_INTERVAL, visible - self.runtime.now)
                )
                self.sqs.sent.wait(max(wait, 0.001))

    def _deliver(
        self, mapping: EventSourceMapping, queue: Queue, batch: list[Any], in_flight: list[int]
    ) -> None:
        event = {"Records": [self.sqs.record(queue, message) for message in batch]}
        try:
            answer = self.invoke(event, mapping.name)
            if isinstance(answer, dict):
                failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
                for message in batch:
                    if message.message_id not in failed:
                        self.sqs.delete(queue, message)
        finally:
            in_flight[0] -= 1
            with self.sqs.sent:
                self.sqs.sent.notify_all()

    # --- triggers -----------------------------------------------------------------------------

    def _schedule(self, at: float) -> None:
        self.runtime.sleep(at - self.runtime.now)
        stamp = f"2027-01-15T{int(at) // 3600:02d}:{int(at) % 3600 // 60:02d}:{int(at) % 60:02d}Z"
        self.requested[f"schedule-{stamp}"] = {k["id"] for k in self.keys}
        event = {
            "scheduled_time": stamp,
            "execution_id": f"exec-{at}",
            "request": {"selector": {"all": True}},
        }
        for attempt in range(1 + LAMBDA_ASYNC_RETRIES):
            if attempt:
                self.runtime.sleep(LAMBDA_ASYNC_RETRY_DELAY * attempt)
            answer = self.invoke(event, "schedule")
            if isinstance(answer, dict):
                return

    def _sweep(self) -> None:
        """The template's sweep schedule: every 15 minutes while the world runs."""
        while not self._stopped:
            self.runtime.sleep(SWEEP_EVERY)
            if not self._stopped:
                self.invoke({"sweep": "stuck-runs"}, "sweep")

    def _pipeline(self, number: int, pipeline: Pipeline) -> None:
        self.runtime.sleep(pipeline.at - self.runtime.now)
        name = f"tenancy-{pipeline.tenancy}"
        of_tenancy = [k["id"] for k in self.keys if k["tenancy"] == name]
        request: dict[str, Any] = {"request_id": f"pipeline-{number}"}
        if pipeline.keys:
            request["keys"] = [*of_tenancy[: pipeline.keys], UNKNOWN_KEY]
            self.requested[request["request_id"]] = set(request["keys"])
        else:
            request["selector"] = {"tenancy": name}
            self.requested[request["request_id"]] = set(of_tenancy)
        self.sqs.send_message(QueueUrl=self.work.url, MessageBody=json.dumps(request))

    # --- the whole run ------------------------------------------------------------------------

    def run(self) -> Report:
        level = logger.log_level
        logger.setLevel(logging.CRITICAL)
        try:
            self.runtime.run(self._main)
        finally:
            logger.setLevel(level)
        return self._report()

    def _main(self) -> None:
        runtime = self.runtime
        for mapping in self.mappings:
            runtime.spawn(lambda m=mapping: self._poll(m), f"poller-{mapping.name}")
        runtime.spawn(self._sweep, "sweeper")
        triggers = [
            runtime.spawn(lambda t=t: self._schedule(t), "scheduler")
            for t in self.scenario.schedules
        ]
        triggers += [
            runtime.spawn(lambda n=n, p=p: self._pipeline(n, p), "pipeline")
            for n, p in enumerate(self.scenario.pipeline)
        ]
        for trigger in triggers:
            trigger.join()
        while runtime.now < self.scenario.horizon and not self._all_done():
            runtime.sleep(30.0)
        self._stopped = True
        with self.sqs.sent:
            self.sqs.sent.notify_all()

    def _all_done(self) -> bool:
        runs = self._runs()
        completed = all(runs.get(r, {}).get("status") == "COMPLETED" for r in self.requested)
        busy = any(i.ended is None for i in self.invocations)
        queued = any(q.messages for q in (self.work, self.tenancy))
        return completed and not busy and not queued

    def _runs(self) -> dict[str, dict[str, Any]]:
        """The expected runs' ``RUN`` items (read by key: the table may hold 100,000 keys)."""
        items = self.db.tables[TABLE]
        runs = (items.get((f"RUN#{run_id}", "RUN")) for run_id in self.requested)
        return {str(run["run_id"]["S"]): plain(run) for run in runs if run is not None}

    def _report(self) -> Report:
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for item in self.db.items(TABLE):
            if item.get("item_type") == "RESULT":
                results.setdefault(item["run_id"], {})[item["key_id"]] = item
        dead = self.work.dead_letter, self.tenancy.dead_letter
        return Report(
            scenario=self.scenario,
            ended_at=self.runtime.now,
            runs=self._runs(),
            results=results,
            expected_runs=set(self.requested),
            ctm_log=self.ctm.log.entries(),
            odd_keys=dict(self.odd_keys),
            requested=dict(self.requested),
            keys={k["id"]: k["tenancy"] for k in self.keys},
            refreshes=self.ctm.refreshes(),
            invocations=list(self.invocations),
            dynamodb=self.db,
            sqs=self.sqs,
            errors=[(n, e) for n, container, e in self.runtime.errors if container is None],
            dead_letters=sum(len(q.messages) for q in dead if q is not None),
        )


@dataclass(frozen=True)
class _QueueNames:
    """What ``mappings_from_template`` reads of a stack: each queue's URL and ARN."""

    work: Queue
    tenancy: Queue

    @property
    def work_queue_url(self) -> str:
        return self.work.url

    @property
    def work_queue_arn(self) -> str:
        return self.work.arn

    @property
    def tenancy_queue_url(self) -> str:
        return self.tenancy.url

    @property
    def tenancy_queue_arn(self) -> str:
        return self.tenancy.arn


class _Context:
    """The Lambda context the function reads: its remaining time, on the virtual clock."""

    function_name = "refresh"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:refresh"
    aws_request_id = "sim"

    def __init__(self, remaining_ms: Callable[[], int]) -> None:
        self.get_remaining_time_in_millis = remaining_ms


def _handoffs(body: str) -> int:
    try:
        value = json.loads(body).get("handoffs", 0)
    except (ValueError, AttributeError):
        return 0
    return value if isinstance(value, int) else 0


def _keys(scenario: Scenario) -> list[dict[str, Any]]:
    """The scenario's keys: ``tenancies[i]`` keys in tenancy ``tenancy-i``, created in an
    order that mixes the tenancies (as an estate's keys are), drawn by the seed."""
    total = sum(scenario.tenancies)
    keys = generate_keys(total, tenancies=1, seed=scenario.seed)
    names = [f"tenancy-{i}" for i, count in enumerate(scenario.tenancies) for _ in range(count)]
    random.Random(scenario.seed).shuffle(names)
    for key, name in zip(keys, names, strict=True):
        key["tenancy"] = name
    return keys


def template_default(name: str) -> str:
    return str(parameter_defaults(TEMPLATE)[name])
