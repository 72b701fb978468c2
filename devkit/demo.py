"""``make demo``: the whole system on one machine, no AWS account, no network.

    python -m devkit.demo [--keys 40] [--tenancies 4] [--seed 7]

It starts the CTM emulator (HTTPS, its own CA) and a moto server on 127.0.0.1, creates the
table, queues, topic and secret from ``template.yaml``'s own definitions, and plays a day in
the life of the function:

0. ``cckm-refresh doctor --all`` checks the settings, the secret and the emulator, as an
   operator does after a deploy;
1. yesterday's scheduled run establishes every key's latest version;
2. overnight, OCI rotates a few keys, disables one, deletes one, and CTM turns flaky for one;
3. the schedule fires (``events/schedule.json``): its invocation resolves the keys into chunks
   of one tenancy each and queues them on the FIFO tenancy queue; a pipeline sends an invalid
   message to the work queue; Lambda's pollers (``devkit.lambda_poller``, both queues mapped
   as ``template.yaml`` maps them) deliver the chunks and the message to the handler
   (successes deleted, failures delivered again with a growing ``ApproximateReceiveCount``);
   the table's stream feeds the notify function;
4. it prints the results, the run summary, the queues' traffic and the notifications, then
   checks that everything it expected happened: any miss is listed and the exit code is 1.

The handlers' JSON logs and metrics go to a file in a temporary folder (its path is printed),
so the output reads well.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from devkit.demo_report import (
    Expected,
    Observed,
    QueueTraffic,
    check,
    print_notifications,
    print_results,
    print_summary,
)
from devkit.lambda_runtime import environment

if TYPE_CHECKING:
    from cckm_refresh.table.reads import TableReader

ROOT = Path(__file__).resolve().parent.parent
SCHEDULE_EVENT = ROOT / "events" / "schedule.json"
YESTERDAY = "2026-11-27T02:00:00Z"
# A pipeline's message with a hostile key id: rejected before any HTTP call, never dropped.
HOSTILE_BODY = json.dumps(
    {"keys": ["../../auth/tokens"], "request_id": "pipeline-0042", "reason": "typo in a script"}
)
DRAIN_TIMEOUT = 90.0  # seconds for both queues to empty (the demo needs a few)
WORK_QUEUE, TENANCY_QUEUE = "WorkQueue", "TenancyQueue"  # template.yaml's event names

# What the demo sets in-process (restored afterwards): fake credentials, no profile, quiet.
_FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_SESSION_TOKEN": "demo",
    "AWS_DEFAULT_REGION": "us-east-1",
    "POWERTOOLS_TRACE_DISABLED": "1",
    "POWERTOOLS_SERVICE_NAME": "cckm-oci-refresh-demo",
    "POWERTOOLS_METRICS_NAMESPACE": "CckmOciRefreshDemo",
}
_CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE")


@dataclass(frozen=True)
class Scenario:
    """The world the demo builds: how many keys, and what goes wrong overnight."""

    keys: int = 40
    tenancies: int = 4
    seed: int = 7
    rotated: int = 3
    # The flaky key's refreshes answer this status this many times, then succeed. Default:
    # CTM_MAX_ATTEMPTS, which outlasts the first delivery of the key's chunk, so the second
    # delivery (ApproximateReceiveCount 2) finishes it.
    flaky_status: int = 503
    flaky_failures: int | None = None


@dataclass(frozen=True)
class Cast:
    """Which keys play which part (CCKM ids)."""

    rotated: tuple[str, ...]
    disabled: str
    deleted: str
    flaky: str


@dataclass(frozen=True)
class _Delivery:
    """One invocation by a queue's mapping, as printed and checked."""

    queue: str  # WORK_QUEUE or TENANCY_QUEUE
    message_ids: tuple[str, ...]
    groups: tuple[str, ...]  # tenancies (FIFO message groups)
    receive_counts: tuple[int, ...]
    failures: int
    flaky_counts: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Drained:
    """What one schedule firing and the drain of both queues after it did."""

    response: Any  # the direct invocation's answer
    deliveries: tuple[_Delivery, ...]
    drained: bool
    crashes: tuple[str, ...]

    def traffic(self, queue: str) -> QueueTraffic:
        mine = [d for d in self.deliveries if d.queue == queue]
        return QueueTraffic(
            messages=len({m for d in mine for m in d.message_ids}),
            deliveries=sum(len(d.message_ids) for d in mine),
            invocations=len(mine),
        )


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the demo; returns 0 when everything expected happened, else 1 (misses listed)."""
    parser = argparse.ArgumentParser(prog="python -m devkit.demo", description=__doc__)
    parser.add_argument("--keys", type=int, default=Scenario.keys)
    parser.add_argument("--tenancies", type=int, default=Scenario.tenancies)
    parser.add_argument("--seed", type=int, default=Scenario.seed)
    args = parser.parse_args(argv)
    if args.keys < 12 or args.tenancies < 1:
        parser.error("need at least 12 keys and one tenancy")
    scenario = Scenario(keys=args.keys, tenancies=args.tenancies, seed=args.seed)
    return run(scenario, out or sys.stdout)


def run(scenario: Scenario, out: TextIO, sabotage: Callable[[Any], None] | None = None) -> int:
    """Play ``scenario`` and print it to ``out``; 0 when every expectation held, else 1.

    ``sabotage(emulator)``, called just before the schedule fires, lets a test break the world
    (e.g. make the flaky key fail for good) to see the demo notice.
    """
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="cckm-demo-"))
    log_path = log_dir / "handlers.log"
    with (
        environment(_FAKE_AWS, cleared=_CLEARED, restore=("AWS_ENDPOINT_URL",)),
        log_path.open("w", encoding="utf-8") as log,
        contextlib.ExitStack() as running,
    ):
        try:
            misses = _play(scenario, out, log, running, sabotage)
        except Exception as error:  # a bug or a broken checkout: say so, keep the trace
            traceback.print_exc(file=sys.stderr)
            misses = [f"the demo stopped: {type(error).__name__}: {error}"]
    elapsed = time.monotonic() - started
    say = _printer(out)
    if misses:
        say(f"\nFAILED: {len(misses)} expectation(s) not met:")
        for miss in misses:
            say(f"  - {miss}")
    else:
        say("\nEvery expected outcome happened.")
    say(f"Handler logs (JSON): {log_path}")
    say(f"Elapsed: {elapsed:.1f} s")
    return 1 if misses else 0


def _play(
    scenario: Scenario,
    out: TextIO,
    log: TextIO,
    running: contextlib.ExitStack,
    sabotage: Callable[[Any], None] | None,
) -> list[str]:
    """A day in the life: yesterday's run, overnight changes, today's run; the misses."""
    say = _printer(out)
    say("cckm-oci-refresh demo: CTM emulator + local AWS on 127.0.0.1; no account, no network\n")
    world = _World.start(scenario, say, log, running)
    preflight = world.doctor()
    schedule = json.loads(SCHEDULE_EVENT.read_text(encoding="utf-8"))
    yesterday = _play_yesterday(world, schedule)
    # Subscribed from here on: yesterday's notifications are not today's news.
    capture = world.stack.capture_notifications()

    cast, flaky_failures = world.overnight(scenario)
    if sabotage is not None:
        sabotage(world.ctm)

    today = _play_today(world, schedule, cast)
    observed = _observe(world, yesterday, today, capture)
    expected = _expectations(scenario, cast, today.run_id)
    say("")
    notes = _notes(cast, scenario.flaky_status, flaky_failures, today.drained.deliveries)
    print_results(out, observed, expected, notes)
    print_summary(out, observed)
    print_notifications(out, observed.notifications)
    return preflight + check(observed, expected)


@dataclass(frozen=True)
class _Yesterday:
    """The baseline run: its id, and the RESULT items today's run is compared with."""

    run_id: str
    results: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class _Today:
    """Today's run: its id, what the drain did, and the id of the pipeline's invalid message."""

    run_id: str
    drained: _Drained
    hostile_message_id: str


def _play_yesterday(world: _World, schedule: dict[str, Any]) -> _Yesterday:
    """Yesterday's scheduled run: every key gets a LATEST version to compare with."""
    event = schedule | {"scheduled_time": YESTERDAY, "execution_id": str(uuid.uuid4())}
    world.run(event)
    run_id = f"schedule-{YESTERDAY}"
    baseline = world.run_item(run_id) or {}
    before = world.results(run_id)
    world.say(
        f"Yesterday's scheduled run ({run_id}): {baseline.get('status')}, "
        f"{baseline.get('refreshed')} of {baseline.get('requested')} keys refreshed"
    )
    return _Yesterday(run_id, before)


def _play_today(world: _World, schedule: dict[str, Any], cast: Cast) -> _Today:
    """The schedule fires, a pipeline sends a bad message, both queues are drained."""
    drained, [hostile] = world.run(schedule, pipeline_messages=[HOSTILE_BODY], flaky=cast.flaky)
    response = drained.response if isinstance(drained.response, Mapping) else {}
    run_id = str(response.get("run_id"))
    say = world.say
    say(f"The schedule fires ({SCHEDULE_EVENT.relative_to(ROOT)}): run {run_id}")
    say(
        "  its invocation (intake): "
        + ", ".join(f"{response.get(n)} {n.replace('_', ' ')}" for n in _RESPONSE_COUNTS)
        + f" -> {response.get('status')}: the keys were queued to the tenancy queue in "
        "chunks of one tenancy each, one message group per tenancy"
    )
    say(f"A pipeline sends an invalid message to the work queue: {HOSTILE_BODY}")
    say("Lambda's pollers deliver both queues to the refresh function:")
    for number, delivery in enumerate(drained.deliveries, start=1):
        say(_delivery_line(number, delivery))
    return _Today(run_id, drained, hostile)


def _observe(world: _World, yesterday: _Yesterday, today: _Today, capture: Any) -> Observed:
    """What the table, the queues and the topic hold once the queues and the stream are drained.

    ``capture`` is the topic's subscription made before the overnight changes.
    """
    drained = today.drained
    return Observed(
        baseline=world.run_item(yesterday.run_id) or {},
        run=world.run_item(today.run_id) or {},
        before=yesterday.results,
        results=world.results(today.run_id),
        rejected=world.rejected(today.hostile_message_id),
        dead_letters=world.stack.receive_all(world.stack.dead_letter_queue_url)
        + world.stack.receive_all(world.stack.tenancy_dead_letter_queue_url),
        notifications=capture.messages(),
        flaky_receive_counts=[c for d in drained.deliveries for c in d.flaky_counts],
        notify_errors=world.notify_errors,
        queue_left=world.queue_left(),
        work_queue=drained.traffic(WORK_QUEUE),
        tenancy_queue=drained.traffic(TENANCY_QUEUE),
        drained=drained.drained,
        crashes=drained.crashes,
    )


def _expectations(scenario: Scenario, cast: Cast, run_id: str) -> Expected:
    """What run ``run_id`` must show: one key not found, none failed, the cast as cast."""
    return Expected(
        run_id=run_id,
        requested=scenario.keys,
        not_found=1,
        failed=0,
        rotated=frozenset(cast.rotated),
        disabled=cast.disabled,
        deleted=cast.deleted,
        flaky=cast.flaky,
        rejected_field="keys[0]",
    )


@dataclass
class _World:
    """The emulators and the two handlers, warm, as the demo drives them."""

    stack: Any  # devkit.aws_local.LocalAwsStack
    ctm: Any  # devkit.ctm_emulator.CtmEmulator
    keys: list[dict[str, Any]]
    refresh: Callable[[], Any]  # a cold start of the refresh function: a new container
    notify: Any  # the functions/notify/app.py module
    say: Callable[[str], None]
    log: TextIO
    mappings: list[Any]  # devkit.lambda_poller.EventSourceMapping, one per queue
    notify_errors: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        scenario: Scenario,
        say: Callable[[str], None],
        log: TextIO,
        running: contextlib.ExitStack,
    ) -> _World:
        """Start moto and the CTM emulator, create the template's resources, load handlers."""
        from devkit.lambda_runtime import load_handler

        stack = _start_local_aws(say, running)
        mappings = _refresh_mappings(stack, say)
        keys, ctm = _start_ctm(scenario, stack, say, running)
        refresh = functools.partial(
            load_handler, "refresh", stack.refresh_env(CTM_BASE_URL=ctm.base_url)
        )
        with _quiet(log):
            notify = load_handler("notify", stack.notify_env())
        return cls(stack, ctm, keys, refresh, notify, say, log, mappings)

    def doctor(self) -> list[str]:
        """``cckm-refresh doctor --all``, as an operator runs it first: its lines; a miss when
        a check FAILed."""
        from cckm_refresh.cli import main as cli

        env = os.environ | self.stack.refresh_env(CTM_BASE_URL=self.ctm.base_url)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = cli(["doctor", "--all"], env)
        self.say("cckm-refresh doctor --all (the preflight: settings, secret, CTM):")
        for line in printed.getvalue().splitlines():
            self.say(f"  {line}")
        self.say("")
        return [] if code == 0 else [f"cckm-refresh doctor exited {code}"]

    def overnight(self, scenario: Scenario) -> tuple[Cast, int]:
        """What OCI and CTM do between the two runs; also how often the flaky key fails."""
        cast = _choose_cast(self.keys, scenario)
        attempts = int(self.stack.refresh_env()["CTM_MAX_ATTEMPTS"])
        failures = scenario.flaky_failures or attempts
        names = {k["id"]: k["oci_params"]["display_name"] for k in self.keys}
        for key_id in cast.rotated:
            self.ctm.rotate(key_id)
        self.ctm.set_oci_state(cast.disabled, "DISABLED")
        self.ctm.delete_in_oci(cast.deleted)
        self.ctm.faults.fail_key(cast.flaky, scenario.flaky_status, times=failures)
        self.say("Overnight:")
        self.say(f"  OCI rotated      {', '.join(names[k] for k in cast.rotated)}")
        self.say(f"  OCI disabled     {names[cast.disabled]}")
        self.say(f"  OCI deleted      {names[cast.deleted]}")
        self.say(
            f"  CTM flaky for    {names[cast.flaky]} "
            f"({failures} x HTTP {scenario.flaky_status}, then fine; "
            f"CTM_MAX_ATTEMPTS is {attempts})\n"
        )
        return cast, failures

    def run(
        self,
        event: Mapping[str, Any],
        pipeline_messages: Sequence[str] = (),
        flaky: str | None = None,
    ) -> tuple[_Drained, list[str]]:
        """Invoke the refresh function with ``event`` (the schedule firing), send
        ``pipeline_messages`` to the work queue, and let Lambda's pollers deliver both queues
        to the function until they are empty; then the stream to the notify function.
        Returns what happened, and the ids of the messages sent."""
        from devkit.lambda_poller import InProcessFunction, LambdaPoller

        labels = {m.queue_arn: m.label for m in self.mappings}
        # As Lambda does, an invocation finding no idle container cold-starts one: each
        # tenancy's chunk is refreshed beside the others', not after them.
        recorder = _Recorder(InProcessFunction(self.refresh), labels, flaky)
        sqs = self.stack.client("sqs")
        with (
            _quiet(self.log),
            LambdaPoller(
                sqs,
                self.mappings,
                recorder,
                region=self.stack.region,
                # A failed batch's messages come back at once: the function asks for 30 s
                # (growing with each delivery), which the demo does not wait out.
                redeliver_failed_after=0,
                redeliver_crashed_after=0,
            ) as poller,
        ):
            poller.invoke(dict(event))
            sent = []
            for body in pipeline_messages:
                answer = sqs.send_message(QueueUrl=self.stack.work_queue_url, MessageBody=body)
                sent.append(str(answer["MessageId"]))
            report = poller.drain(DRAIN_TIMEOUT)
        self.feed_stream()
        crashes = tuple(
            f"invocation {i.number} ({i.source}) raised {type(i.error).__name__}: {i.error}"
            for i in report.crashes
        )
        [response] = report.direct_responses or [None]
        drained = _Drained(response, tuple(recorder.deliveries), report.drained, crashes)
        return drained, sent

    def feed_stream(self) -> None:
        """The table's new stream records to the notify function, until there are none."""
        from devkit.lambda_runtime import FakeLambdaContext

        # The notify function may write its own bookkeeping: feed until the stream is quiet.
        for _ in range(5):
            event = self.stack.stream_event()
            if not event["Records"]:
                return
            with _quiet(self.log):
                answer = self.notify.handler(event, FakeLambdaContext("notify"))
            failures = answer.get("batchItemFailures") if isinstance(answer, dict) else None
            if failures:
                self.notify_errors.append(f"notify reported stream batch failures: {failures}")

    def reader(self) -> TableReader:
        """The table as the CLI and the notifier read it (``cckm_refresh.table.reads``)."""
        from cckm_refresh.table.reads import TableReader

        return TableReader(self.stack.client("dynamodb"), self.stack.table_name)

    def run_item(self, run_id: str) -> dict[str, Any] | None:
        """A run's ``RUN`` item, or None."""
        return self.reader().run(run_id)

    def rejected(self, source_id: str) -> dict[str, Any] | None:
        """A rejected request's item, or None."""
        from cckm_refresh.table.items import REQUEST, rejected_pk

        return self.reader().item(rejected_pk(source_id), REQUEST)

    def results(self, run_id: str) -> dict[str, dict[str, Any]]:
        """A run's RESULT items by key id."""
        return {str(item["key_id"]): item for item in self.reader().results(run_id)}

    def queue_left(self) -> int:
        """Messages still in the work queue and the tenancy queue (visible or not)."""
        sqs = self.stack.client("sqs")
        left = 0
        for url in (self.stack.work_queue_url, self.stack.tenancy_queue_url):
            attributes = sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )["Attributes"]
            left += sum(int(value) for value in attributes.values())
        return left


def _start_local_aws(say: Callable[[str], None], running: contextlib.ExitStack) -> Any:
    """Start moto, point every boto3 client at it, and create the template's resources."""
    from aws_lambda_powertools.utilities import parameters

    from devkit.aws_local import LocalAwsStack
    from devkit.moto_server import MotoServer

    moto = MotoServer()
    moto.start()
    running.callback(moto.stop)
    # Powertools keeps its Secrets Manager client (bound to this endpoint) process-wide.
    running.callback(parameters.clear_caches)
    # Every boto3 client the handlers create reaches moto, none reaches AWS.
    os.environ["AWS_ENDPOINT_URL"] = moto.endpoint_url
    # A unique prefix: moto keeps its state per process, and a test may run the demo twice.
    stack = LocalAwsStack.create(moto.endpoint_url, prefix=f"demo-{uuid.uuid4().hex[:4]}")
    say(f"Local AWS (moto) at {moto.endpoint_url}, created from template.yaml:")
    say(f"  table  {stack.table_name} (stream NEW_AND_OLD_IMAGES, index by-key, TTL)")
    say(
        f"  queue  {stack.work_queue_url.rsplit('/', 1)[-1]} "
        f"(what pipelines send; maxReceiveCount {stack.max_receive_count}) "
        f"-> dead-letter {stack.dead_letter_queue_url.rsplit('/', 1)[-1]}"
    )
    say(
        f"  queue  {stack.tenancy_queue_url.rsplit('/', 1)[-1]} "
        f"(FIFO, one message group per tenancy; maxReceiveCount {stack.max_receive_count}) "
        f"-> dead-letter {stack.tenancy_dead_letter_queue_url.rsplit('/', 1)[-1]}"
    )
    say(f"  topic  {stack.topic_arn.rsplit(':', 1)[-1]}")
    say(f"  secret {stack.secret_id.rsplit(':', 1)[-1]}")
    return stack


def _refresh_mappings(stack: Any, say: Callable[[str], None]) -> list[Any]:
    """Lambda's mappings of both queues to the refresh function, as the template declares them."""
    from devkit.lambda_poller import mappings_from_template

    # The work queue's batching window only waits for a fuller batch; the demo sends no burst,
    # so it is not waited out.
    mappings = [replace(m, batching_window_seconds=0.0) for m in mappings_from_template(stack)]
    for mapping in mappings:
        say(
            f"  the refresh function reads {mapping.label}: BatchSize {mapping.batch_size}, "
            f"MaximumConcurrency {mapping.maximum_concurrency}, ReportBatchItemFailures"
        )
    return mappings


def _start_ctm(
    scenario: Scenario, stack: Any, say: Callable[[str], None], running: contextlib.ExitStack
) -> tuple[list[dict[str, Any]], Any]:
    """Start the CTM emulator with the scenario's keys; put its credentials in the secret."""
    from devkit.ctm_emulator import CtmEmulator, generate_keys

    keys = generate_keys(scenario.keys, tenancies=scenario.tenancies, seed=scenario.seed)
    ctm = CtmEmulator(keys=keys, seed=scenario.seed).start()
    running.callback(ctm.stop)
    stack.put_secret({"refresh_token": ctm.issue_refresh_token(), "ca_bundle": ctm.ca_pem})
    tenancies = sorted({k["tenancy"] for k in keys})
    say(
        f"CTM emulator at {ctm.base_url} (HTTPS, its own CA): {len(keys)} OCI keys in "
        f"{len(tenancies)} tenancies ({', '.join(tenancies)})"
    )
    say("  the secret holds a CTM refresh token and the CA certificate (never printed)\n")
    return keys, ctm


class _Recorder:
    """The poller's target: the handler (in this process), and a note of every delivery."""

    def __init__(
        self, target: Callable[[dict[str, Any]], Any], labels: Mapping[str, str], flaky: str | None
    ) -> None:
        self._target = target
        self._labels = labels
        self._flaky = flaky
        self._lock = threading.Lock()
        self.deliveries: list[_Delivery] = []

    def __call__(self, event: dict[str, Any]) -> Any:
        response = self._target(event)
        records = event.get("Records")
        if records:
            failed = response.get("batchItemFailures", []) if isinstance(response, dict) else []
            counts = [int(r["attributes"]["ApproximateReceiveCount"]) for r in records]
            delivery = _Delivery(
                queue=self._labels.get(records[0]["eventSourceARN"], "?"),
                message_ids=tuple(r["messageId"] for r in records),
                groups=tuple(
                    dict.fromkeys(
                        r["attributes"]["MessageGroupId"]
                        for r in records
                        if "MessageGroupId" in r["attributes"]
                    )
                ),
                receive_counts=tuple(counts),
                failures=len(failed),
                flaky_counts=tuple(
                    count
                    for record, count in zip(records, counts, strict=True)
                    if self._flaky and self._flaky in _keys_of(record["body"])
                ),
            )
            with self._lock:
                self.deliveries.append(delivery)
        return response


_RESPONSE_COUNTS = ("requested", "fanned_out", "refreshed")


def _delivery_line(number: int, delivery: _Delivery) -> str:
    queue = "tenancy queue" if delivery.queue == TENANCY_QUEUE else "work queue"
    groups = f" of {len(delivery.groups)} tenancy group(s)" if delivery.groups else ""
    return (
        f"  {queue}, invocation {number}: {len(delivery.message_ids)} message(s){groups}, "
        f"ApproximateReceiveCount {list(delivery.receive_counts)}, {delivery.failures} "
        "reported as batch item failures" + (" -> delivered again" if delivery.failures else "")
    )


def _notes(
    cast: Cast, status: int, failures: int, deliveries: Sequence[_Delivery]
) -> dict[str, str]:
    """Why the keys the scenario touched look the way they do."""
    last = max((c for d in deliveries for c in d.flaky_counts), default=0)
    return {
        **dict.fromkeys(cast.rotated, "OCI rotated it"),
        cast.disabled: "OCI disabled it",
        cast.deleted: "OCI deleted it",
        cast.flaky: (
            f"CTM {status} x{failures}: PENDING, its chunk delivered again, "
            f"done at receive count {last}"
        ),
    }


def _choose_cast(keys: Sequence[Mapping[str, Any]], scenario: Scenario) -> Cast:
    """ENABLED keys for every part, taken round-robin over the tenancies."""
    by_tenancy: dict[str, list[str]] = {}
    for key in keys:
        if key["oci_params"]["lifecycle_state"] == "ENABLED":
            by_tenancy.setdefault(key["tenancy"], []).append(key["id"])
    spread: list[str] = []
    while any(by_tenancy.values()):
        for ids in by_tenancy.values():
            if ids:
                spread.append(ids.pop(0))
    needed = scenario.rotated + 3
    if len(spread) < needed:
        raise ValueError(f"the demo needs at least {needed} ENABLED keys")
    rotated = tuple(spread[: scenario.rotated])
    disabled, deleted, flaky = spread[scenario.rotated : needed]
    return Cast(rotated=rotated, disabled=disabled, deleted=deleted, flaky=flaky)


def _keys_of(body: str) -> list[str]:
    try:
        keys = json.loads(body).get("keys", [])
    except (ValueError, AttributeError):
        return []
    return [str(k) for k in keys] if isinstance(keys, list) else []


# --- the process around it -----------------------------------------------------------------


def _printer(out: TextIO) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    return say


@contextlib.contextmanager
def _quiet(log: TextIO) -> Iterator[None]:
    """Send what the handlers write (JSON logs, metrics, warnings) to ``log``."""
    handlers = [h for h in _stream_handlers() if h.stream is not log]
    saved = {handler: handler.stream for handler in handlers}
    for handler in handlers:
        handler.setStream(log)
    try:
        with (
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
            warnings.catch_warnings(),
        ):
            warnings.showwarning = functools.partial(_log_warning, log)
            yield
    finally:
        for handler in _stream_handlers():
            # Handlers created inside the block captured ``log`` as their stream: give them the
            # real stdout, as they would have had outside the demo.
            if handler.stream is log:
                handler.setStream(saved.get(handler, sys.stdout))


def _log_warning(log: TextIO, message: Warning | str, category: type[Warning], *where: Any) -> None:
    filename, lineno = where[0], where[1]
    log.write(warnings.formatwarning(message, category, filename, lineno))


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    loggers = [logging.getLogger()] + [
        item
        for item in logging.Logger.manager.loggerDict.values()
        if isinstance(item, logging.Logger)
    ]
    return [
        handler
        for item in loggers
        for handler in item.handlers
        if isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
    ]


if __name__ == "__main__":
    sys.exit(main())
