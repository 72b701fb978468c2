"""Containers killed mid-invocation, as a Lambda timeout or an out-of-memory kill does it.

``KillSwitch`` hooks the AWS clients a container of the function creates (DynamoDB and SQS,
made lazily in its first invocation) through botocore's events, and at the n-th call that
matches a ``KillPoint`` raises ``ContainerKilled``: a ``BaseException`` the code under test
does not catch, as nothing catches SIGKILL. From then on every AWS call of that container
raises it too, so its other threads die at their next write: what the container had in
flight is all it did. A point is hit before its call is sent (the write never happens) or,
with ``after=True``, once DynamoDB or SQS answered (the write happened, the answer is lost).

``Containers`` is the function as Lambda runs it, usable as ``LambdaPoller``'s target: warm
containers are reused, a killed one is gone (the next invocation is a cold start), and a kill
reaches the poller as an ``InvocationKilledError`` (the whole batch comes back). It keeps
every event it was given and every message body the function sent, for the tests to read.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import boto3
import pytest

from devkit.lambda_poller import LambdaPoller, PollerReport, mappings_from_template
from devkit.lambda_runtime import FakeLambdaContext, load_handler
from tests.integration.refresh_world import RefreshWorld

Request = dict[str, Any]
RemainingTime = Callable[[], float] | None
TERMINAL = frozenset({"REFRESHED", "NOT_FOUND", "FAILED", "SKIPPED"})


class ContainerKilled(BaseException):
    """The container was killed (timeout, out of memory): nothing in it runs on."""


class InvocationKilledError(Exception):
    """What the poller sees of a killed container: the invocation failed as a whole."""


@dataclass
class KillPoint:
    """Kill the container at the ``nth`` call of ``operation`` for which ``when`` holds.

    ``when`` reads the call's parameters (DynamoDB's typed JSON, as the store sends them).
    """

    operation: str
    nth: int = 1
    when: Callable[[Request], bool] = lambda _request: True
    after: bool = False
    seen: int = 0
    fired: bool = False


@dataclass(frozen=True)
class CallHook:
    """Run ``before`` / ``after`` (with the call's parameters) around every call of
    ``operation`` for which ``when`` holds: to hold a call at a gate, or to signal one."""

    operation: str
    when: Callable[[Request], bool]
    before: Callable[[Request], object] | None = None
    after: Callable[[Request], object] | None = None


@dataclass
class KillSwitch:
    """Kills containers at chosen calls; counts what the function sent; runs call hooks."""

    points: list[KillPoint] = field(default_factory=list)
    hooks: list[CallHook] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)  # "<operation> #<n>" of each kill
    calls: Counter[str] = field(default_factory=Counter)  # operation -> calls (all containers)
    sent: list[dict[str, Any]] = field(default_factory=list)  # bodies of messages sent
    _dead: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def at(
        self,
        operation: str,
        nth: int = 1,
        when: Callable[[Request], bool] = lambda _request: True,
        *,
        after: bool = False,
    ) -> KillPoint:
        point = KillPoint(operation, nth, when, after)
        self.points.append(point)
        return point

    def on(
        self,
        operation: str,
        when: Callable[[Request], bool] = lambda _request: True,
        *,
        before: Callable[[Request], object] | None = None,
        after: Callable[[Request], object] | None = None,
    ) -> None:
        """Run ``before`` / ``after`` around matching calls of every container (in the
        calling thread, so ``before`` may block the call)."""
        self.hooks.append(CallHook(operation, when, before, after))

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Hook the clients every container creates from now on (never the tests' own)."""
        create = boto3.client

        def client(service_name: str, *args: Any, **kwargs: Any) -> Any:
            made = create(service_name, *args, **kwargs)
            container = getattr(self._local, "container", None)
            if container is not None and service_name in ("dynamodb", "sqs"):
                self._attach(made, container)
            return made

        monkeypatch.setattr(boto3, "client", client)

    @contextmanager
    def inside(self, container: int) -> Iterator[None]:
        """Calls made in this thread belong to ``container`` (its clients are created here)."""
        self._local.container = container
        try:
            yield
        finally:
            self._local.container = None

    def _attach(self, client: Any, container: int) -> None:
        service = client.meta.service_model.service_name

        def before(params: Request, model: Any, **_: Any) -> None:
            operation = model.name
            self._local.kill_after = None
            with self._lock:
                if container in self._dead:
                    raise ContainerKilled(f"{operation}: the container is dead")
            hooks = [h for h in self.hooks if h.operation == operation and h.when(params)]
            self._local.hooked = (hooks, params)
            for hook in hooks:
                if hook.before is not None:
                    hook.before(params)
            with self._lock:
                if container in self._dead:
                    raise ContainerKilled(f"{operation}: the container is dead")
                self.calls[operation] += 1
                if operation == "SendMessageBatch":
                    self.sent += [json.loads(e["MessageBody"]) for e in params["Entries"]]
                hit = self._hit(operation, params)
                if hit is not None and not hit.after:
                    self._dead.add(container)
                    self.kills.append(f"{operation} #{hit.seen}")
                    raise ContainerKilled(f"killed before {operation} #{hit.seen}")
            self._local.kill_after = hit

        def after(model: Any, **_: Any) -> None:
            hooks, params = getattr(self._local, "hooked", ((), {}))
            self._local.hooked = ((), {})
            for hook in hooks:
                if hook.after is not None:
                    hook.after(params)
            hit: KillPoint | None = getattr(self._local, "kill_after", None)
            self._local.kill_after = None
            if hit is None:
                return
            with self._lock:
                self._dead.add(container)
                self.kills.append(f"{model.name} #{hit.seen} (answered)")
            raise ContainerKilled(f"killed after {model.name} #{hit.seen}")

        client.meta.events.register(f"before-parameter-build.{service}", before)
        client.meta.events.register(f"after-call.{service}", after)

    def _hit(self, operation: str, params: Request) -> KillPoint | None:
        for point in self.points:
            if point.fired or point.operation != operation or not point.when(params):
                continue
            point.seen += 1
            if point.seen == point.nth:
                point.fired = True
                return point
        return None


# --- what the store's calls look like (predicates for KillPoint.when) -------------------------


def starts_run(request: Request) -> bool:
    """The transaction that creates a RUN item (and keeps its request beside it)."""
    return any(
        item.get("Put", {}).get("Item", {}).get("sk", {}).get("S") == "RUN"
        for item in request.get("TransactItems", [])
    )


def puts_result(request: Request) -> bool:
    return bool(request["Item"]["sk"]["S"].startswith("KEY#"))


def puts_terminal_result(request: Request) -> bool:
    item = request["Item"]
    return bool(item["sk"]["S"].startswith("KEY#") and item["status"]["S"] in TERMINAL)


def registers_chunk(request: Request) -> bool:
    first = request["TransactItems"][0]
    return "Put" in first and first["Put"]["Item"]["sk"]["S"].startswith("CHUNK#")


def closes_chunk(request: Request) -> bool:
    first = request["TransactItems"][0]
    return "Update" in first and first["Update"]["Key"]["sk"]["S"].startswith("CHUNK#")


def finishes_resolution(request: Request) -> bool:
    return bool(
        request["Key"]["sk"]["S"] == "RUN"
        and request.get("UpdateExpression", "").startswith("REMOVE resolving")
    )


def completes_run(request: Request) -> bool:
    values = request.get("ExpressionAttributeValues", {})
    return bool(request["Key"]["sk"]["S"] == "RUN" and values.get(":done") == {"S": "COMPLETED"})


# --- the function's containers ---------------------------------------------------------------


class Containers:
    """The refresh function's containers: an invocation takes an idle warm one or cold-starts
    one; a killed container is never used again."""

    def __init__(
        self,
        world: RefreshWorld,
        kills: KillSwitch,
        remaining: Callable[[dict[str, Any]], RemainingTime] = lambda _event: None,
    ) -> None:
        self.world = world
        self.kills = kills
        self.remaining = remaining
        self.events: list[dict[str, Any]] = []
        self.cold_starts = 0
        self._idle: list[tuple[int, ModuleType]] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> Any:
        """The poller's target: a kill fails the invocation (the batch comes back)."""
        try:
            return self.invoke(event)
        except ContainerKilled as kill:
            raise InvocationKilledError(str(kill)) from None

    def invoke(self, event: dict[str, Any], remaining: RemainingTime = None) -> Any:
        """One invocation; ``ContainerKilled`` when its container was killed."""
        event = json.loads(json.dumps(event))
        with self._lock:
            self.events.append(event)
            if self._idle:
                number, module = self._idle.pop()
            else:
                number, module = next(self._numbers), None
                self.cold_starts += 1
        with self.kills.inside(number):
            if module is None:
                module = load_handler("refresh", self.world.env())
            context = FakeLambdaContext("refresh", remaining=remaining or self.remaining(event))
            answer = module.handler(event, context)  # a kill leaves the container out
        with self._lock:
            self._idle.append((number, module))
        return answer

    def drain(self, timeout: float = 60.0) -> PollerReport:
        """Lambda's pollers deliver both queues until nothing is left in flight; failed and
        crashed batches come back at once (visibility 0: time compressed, order kept)."""
        with LambdaPoller(
            self.world.stack.client("sqs"),
            mappings_from_template(self.world.stack),
            self,
            poll_interval=0.02,
            redeliver_failed_after=0,
            redeliver_crashed_after=0,
        ) as poller:
            report = poller.drain(timeout)
        assert report.drained, "the queues did not drain"
        return report

    def record_bodies(self) -> list[dict[str, Any]]:
        """The bodies of every SQS record delivered to the function, in delivery order."""
        return [
            json.loads(record["body"])
            for event in self.events
            for record in event.get("Records", [])
        ]
