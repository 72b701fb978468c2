"""What every benchmark stands on: a quiet environment, local AWS, the CTM emulator, counters.

Benchmarks print figures; they assert nothing. The handler under test is the real one
(``functions/refresh/app.py``) loaded as Lambda would, talking to moto over HTTP and to the
CTM emulator over HTTPS with the emulator's CA in the secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TENANCIES = 3
KEY_SEED = 2  # generate_keys' tenancy spread is random: we take an equal share of each
FUNCTION_TIMEOUT = 300.0  # template.yaml's refresh function Timeout

# Never reach a real AWS account; keep Powertools from printing a line per retry or a metrics
# blob per invocation between the figures.
QUIET_ENVIRONMENT: Mapping[str, str] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "POWERTOOLS_TRACE_DISABLED": "1",
    "POWERTOOLS_METRICS_NAMESPACE": "CckmOciRefreshBench",
    "POWERTOOLS_SERVICE_NAME": "cckm-oci-refresh-bench",
    "POWERTOOLS_LOG_LEVEL": "ERROR",
    "POWERTOOLS_METRICS_DISABLED": "true",
}
# The machine's package-proxy CA overrides; Lambda sets none, and the handler trusts the
# emulator through the secret's ca_bundle.
CA_OVERRIDES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "AWS_CA_BUNDLE")


def prepare_process() -> None:
    """Set the quiet, offline environment for this process and the subprocesses it starts."""
    os.environ.update(QUIET_ENVIRONMENT)
    os.environ.pop("AWS_PROFILE", None)
    for name in CA_OVERRIDES:
        os.environ.pop(name, None)


def balanced_keys(
    per_tenancy: int, seed: int = KEY_SEED, tenancies: int = TENANCIES
) -> list[dict[str, Any]]:
    """``per_tenancy`` keys of each tenancy, so the ceiling is exactly tenancies x rate."""
    from devkit.ctm_emulator import generate_keys

    pool = generate_keys(per_tenancy * tenancies * 3, tenancies=tenancies, seed=seed)
    taken: Counter[str] = Counter()
    keys = []
    for key in pool:
        if taken[key["tenancy"]] < per_tenancy:
            taken[key["tenancy"]] += 1
            keys.append(key)
    if len(keys) != per_tenancy * tenancies:
        raise RuntimeError("the generated pool is too uneven to balance")
    return keys


@dataclass
class AwsCallCounter:
    """Counts AWS API calls (not HTTP retries) by ``service.Operation`` while ``counting``.

    Hooked on ``before-call`` of boto3's default session, which every client the handler
    creates with ``boto3.client(...)`` inherits.
    """

    calls: Counter[str] = field(default_factory=Counter)
    items: Counter[str] = field(default_factory=Counter)  # items (messages) the calls carried
    counting: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def install(cls) -> AwsCallCounter:
        """Register on the default session; call before the handler creates its clients."""
        import boto3

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        counter = cls()
        assert boto3.DEFAULT_SESSION is not None
        boto3.DEFAULT_SESSION.events.register("before-call", counter._seen)
        boto3.DEFAULT_SESSION.events.register("before-parameter-build", counter._asked)
        boto3.DEFAULT_SESSION.events.register("after-call.dynamodb.Query", counter._answered)
        return counter

    def _seen(self, event_name: str, **details: Any) -> None:
        if not self.counting:
            return
        service, operation = event_name.split(".", 2)[1:]
        with self._lock:
            self.calls[f"{service}.{operation}"] += 1

    def _asked(self, event_name: str, params: Mapping[str, Any], **details: Any) -> None:
        """Items a request carries: keys asked for, items written, messages sent."""
        if not self.counting:
            return
        service, operation = event_name.split(".", 2)[1:]
        count = _request_items(operation, params)
        if count is not None:
            with self._lock:
                self.items[f"{service}.{operation}"] += count

    def _answered(self, parsed: Mapping[str, Any] | None = None, **details: Any) -> None:
        """A Query's items are what it returned."""
        if self.counting and parsed is not None:
            with self._lock:
                self.items["dynamodb.Query"] += int(parsed.get("Count", 0))

    @contextmanager
    def window(self) -> Iterator[None]:
        """Count the calls made inside the block (and only those)."""
        self.counting = True
        try:
            yield
        finally:
            self.counting = False


DYNAMODB_WRITES = ("PutItem", "UpdateItem", "BatchWriteItem", "DeleteItem", "TransactWriteItems")
_SINGLE_ITEM = ("PutItem", "UpdateItem", "DeleteItem", "GetItem", "SendMessage")


def _request_items(operation: str, params: Mapping[str, Any]) -> int | None:
    """How many items a request names (None: counted from its answer, or not an item call)."""
    if operation in _SINGLE_ITEM:
        return 1
    if operation == "BatchGetItem":
        return sum(len(table["Keys"]) for table in params.get("RequestItems", {}).values())
    if operation == "BatchWriteItem":
        return sum(len(requests) for requests in params.get("RequestItems", {}).values())
    if operation in ("TransactWriteItems", "TransactGetItems"):
        return len(params.get("TransactItems", []))
    if operation == "SendMessageBatch":
        return len(params.get("Entries", []))
    return None


@dataclass(frozen=True)
class AwsCalls:
    """Counted AWS calls, ``service.Operation`` -> calls."""

    calls: Mapping[str, int]

    def of(self, service: str) -> dict[str, int]:
        """Operation -> calls of one service."""
        prefix = f"{service}."
        return {k[len(prefix) :]: v for k, v in sorted(self.calls.items()) if k.startswith(prefix)}

    def __add__(self, other: AwsCalls) -> AwsCalls:
        return AwsCalls(dict(Counter(self.calls) + Counter(other.calls)))


def ctm_calls(entries: list[Any]) -> dict[str, int]:
    """Emulator request log -> calls by operation (token, list, get, refresh), plus throttled."""
    counted: Counter[str] = Counter(entry.operation or "other" for entry in entries)
    counted["throttled"] = sum(1 for entry in entries if entry.throttled)
    return dict(sorted(counted.items()))


@dataclass
class Invocation:
    """What one invocation of a container answered and cost."""

    response: dict[str, Any]
    wall_seconds: float
    aws_calls: dict[str, int]
    peak_rss_kb: int  # the container's VmHWM so far
    ru_maxrss_kb: int  # what getrusage says (includes the driver's memory: see the container)
    aws_items: dict[str, int] = field(default_factory=dict)  # items (messages) the calls carried


class LambdaContainer:
    """The driver's handle on ``bench/lambda_container.py``: a handler in its own process."""

    def __init__(
        self,
        function: str,
        env: Mapping[str, str],
        program: Sequence[str] = ("-m", "bench.lambda_container"),
        timeout_seconds: float | None = None,
    ) -> None:
        timeout = [f"--timeout={timeout_seconds}"] if timeout_seconds is not None else []
        self._process = subprocess.Popen(
            [sys.executable, *program, function, *timeout],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": f"{ROOT / 'layers' / 'common'}:{ROOT}"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the handler's own errors, if any, reach the console
            text=True,
        )
        cold = self._answer()
        self.import_seconds = float(cold["import_seconds"])
        self.peak_rss_after_import_kb = int(cold["peak_rss_kb"])

    def _answer(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the container exited ({self._process.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def invoke(self, event: Mapping[str, Any]) -> Invocation:
        """Send one event and wait for the handler's answer."""
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(event) + "\n")
        self._process.stdin.flush()
        answer = self._answer()
        return Invocation(
            answer["response"],
            float(answer["wall_seconds"]),
            dict(answer["aws_calls"]),
            int(answer["peak_rss_kb"]),
            int(answer["ru_maxrss_kb"]),
            dict(answer.get("aws_items", {})),
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def cpu_seconds(self) -> float:
        """CPU (user + system) the container has used so far; 0 once it is gone."""
        return process_cpu_seconds(self._process.pid)

    def kill(self) -> None:
        """SIGKILL, as Lambda ends a timed-out or out-of-memory environment."""
        self._process.kill()

    def close(self) -> None:
        """End the container (EOF on its stdin) and wait for it."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=30)
        if self._process.stdout is not None:
            self._process.stdout.close()


# --- the scale benchmarks: every party in a process of its own --------------------------------
#
# With moto, the CTM emulator, the poller and the containers in separate processes, no two of
# them share a GIL, and /proc says how much CPU each one used.


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / tick, sum(values) / tick


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# What a long-polling receive returns at once for: a message sent.
_SQS_SENDS = frozenset({"AmazonSQS.SendMessage", "AmazonSQS.SendMessageBatch"})


def serve_moto(port: int, sends_to: int | None = None) -> None:
    """moto's server app, one request at a time (run in a process of its own).

    moto's SQS and DynamoDB backends are not thread-safe (a DeleteMessage racing a SendMessage
    can lose the sent message; two conditional updates of one item can both pass): AWS
    serialises what must be, so here every request is. A long-polling receive would hold
    that one slot, so long polling is modelled instead: after each SQS send, a datagram to
    ``sends_to`` (``SendSignal``) wakes the Lambda poller at once.
    """
    import logging

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    from devkit.moto_dynamodb import isolate_writes

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    isolate_writes()
    _update_expression_checks_once()
    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    signal = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def one_at_a_time(environ: Any, start_response: Any) -> Any:
        with lock:
            answer = list(app(environ, start_response))
        if sends_to is not None and environ.get("HTTP_X_AMZ_TARGET") in _SQS_SENDS:
            signal.sendto(b".", ("127.0.0.1", sends_to))
        return answer

    server = make_server(
        "127.0.0.1", port, one_at_a_time, threaded=True, request_handler=MotoRequestHandler
    )
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    profile_to = os.environ.get("BENCH_MOTO_PROFILE")  # a path: where moto's CPU went
    if profile_to:
        server.app = _profiled(app, lock, profile_to)  # type: ignore[attr-defined]
    server.serve_forever()


def _profiled(app: Any, lock: threading.Lock, profile_to: str) -> Any:
    """``app`` one request at a time under cProfile; SIGTERM writes the profile to
    ``profile_to`` and ends the process."""
    import cProfile
    import signal

    profiler = cProfile.Profile()

    def one_at_a_time_profiled(environ: Any, start_response: Any) -> Any:
        with lock:
            profiler.enable()
            try:
                return list(app(environ, start_response))
            finally:
                profiler.disable()

    def dump(*_: object) -> None:
        profiler.dump_stats(profile_to)
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)
    return one_at_a_time_profiled


def _exit_with_parent() -> None:
    """End this process when the benchmark that started it is gone (killed, crashed)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def _update_expression_checks_once() -> None:
    """Make moto check an UpdateExpression's clause counts and overlapping paths once, and
    parse each distinct expression once.

    moto (5.2) runs both checks on every sub-expression of the parsed expression, and each
    walks the whole sub-tree: O(n^2) in the number of clauses, ~30 ms of CPU for a 20-clause
    update here, which made moto, not the function, the benchmark's bottleneck. Checking the
    root alone raises exactly when some sub-expression would (its clauses are a superset).
    """
    from moto.dynamodb.parsing import validators
    from moto.dynamodb.parsing.ast_nodes import UpdateExpression

    def check_root(self: Any, node: Any) -> Any:
        return self.process(node) if isinstance(node, UpdateExpression) else node

    validators.ActionCountValidator.traverse = check_root  # type: ignore[method-assign]
    validators.OverlappingPathsValidator.traverse = check_root  # type: ignore[method-assign]
    _update_expressions_parsed_once()


def _update_expressions_parsed_once() -> None:
    """Parse each distinct UpdateExpression once (moto parses it twice per request).

    Safe to share: moto only reads the parsed tree, and its validator works on a deep copy.
    """
    import functools

    from moto.dynamodb import models, responses

    parser = responses.UpdateExpressionParser
    parse = functools.lru_cache(maxsize=256)(parser.make)

    class _Parser:
        make = staticmethod(parse)

    responses.UpdateExpressionParser = _Parser  # type: ignore[attr-defined,misc,assignment]
    models.UpdateExpressionParser = _Parser  # type: ignore[attr-defined,misc,assignment]


class SendSignal:
    """Datagrams moto's process sends after each SQS send (``serve_moto``): what a Lambda
    poller's long-polling receive would return for at once. Nothing blocks if no one waits."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])

    def wait(self, seconds: float) -> bool:
        """Up to ``seconds`` for a send; True when there was one (all pending ones consumed)."""
        ready, _, _ = select.select([self._socket], [], [], seconds)
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while self._socket.recv(16, socket.MSG_DONTWAIT):
                pass
        return True

    def close(self) -> None:
        self._socket.close()


class MotoProcess:
    """moto's server in a process of its own (``serve_moto``), on a free port; ``sends``
    says when a message was sent to any queue."""

    def __init__(self) -> None:
        self._port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self.sends = SendSignal()

    def start(self) -> None:
        serve = f"serve_moto({self._port}, sends_to={self.sends.port})"
        self._process = subprocess.Popen(
            [sys.executable, "-c", f"from bench.world import serve_moto; {serve}"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{ROOT / 'layers' / 'common'}:{ROOT}"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self._port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto did not start")

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
        self.sends.close()


@dataclass(frozen=True)
class KeySet:
    """Which keys the emulator holds: ``per_tenancy`` x ``tenancies`` balanced, or ``count``
    spread as ``generate_keys`` spreads them."""

    tenancies: int = TENANCIES
    per_tenancy: int = 0
    count: int = 0
    seed: int = KEY_SEED

    def build(self) -> list[dict[str, Any]]:
        from devkit.ctm_emulator import generate_keys

        if self.per_tenancy:
            return balanced_keys(self.per_tenancy, self.seed, self.tenancies)
        return generate_keys(self.count, tenancies=self.tenancies, seed=self.seed)


def _serve_ctm(channel: Any, keys: KeySet) -> None:
    """The CTM emulator in a child process, answering the parent's requests on ``channel``."""
    from devkit.ctm_emulator import CtmEmulator

    prepare_process()
    with CtmEmulator(keys=keys.build()) as emulator:
        channel.send(
            {
                "base_url": emulator.base_url,
                "ca_pem": emulator.ca_pem,
                "ca_file": emulator.ca_file,
                "username": emulator.username,
                "password": emulator.password,
            }
        )
        while (request := channel.recv()) is not None:
            operation, name, argument = request
            try:
                if operation == "faults":
                    for switch, value in argument.items():
                        setattr(emulator.faults, switch, value)
                    answer: Any = None
                elif operation == "get":
                    answer = getattr(emulator, name)
                elif operation == "keys":
                    answer = [(key["id"], key["tenancy"]) for key in emulator.keys]
                else:
                    answer = getattr(emulator, name)(*argument)
            except Exception as error:  # the parent re-raises it
                channel.send(("error", repr(error)))
            else:
                channel.send(("ok", answer))


class CtmProcess:
    """The CTM emulator in a process of its own, with the parts of ``CtmEmulator``'s API the
    benchmarks use (``base_url``, ``ca_pem``, credentials, faults, the request log)."""

    def __init__(self, keys: KeySet) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._channel, child = context.Pipe()
        self._process = context.Process(target=_serve_ctm, args=(child, keys), daemon=True)
        self._process.start()
        self._lock = threading.Lock()
        ready = self._channel.recv()
        self.base_url: str = ready["base_url"]
        self.ca_pem: str = ready["ca_pem"]
        self.ca_file: str = ready["ca_file"]
        self.username: str = ready["username"]
        self.password: str = ready["password"]

    def _ask(self, operation: str, name: str = "", argument: Any = ()) -> Any:
        with self._lock:
            self._channel.send((operation, name, argument))
            status, answer = self._channel.recv()
        if status != "ok":
            raise RuntimeError(f"the emulator refused {operation} {name}: {answer}")
        return answer

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def set_faults(self, **switches: Any) -> None:
        """Set ``emulator.faults`` attributes (latency, tenancy_read_limit, ...)."""
        self._ask("faults", argument=switches)

    def key_tenancies(self) -> list[tuple[str, str]]:
        """(key id, tenancy) of every key, in the emulator's order."""
        return list(self._ask("keys"))

    @property
    def request_log(self) -> list[Any]:
        return list(self._ask("get", "request_log"))

    def reset_log(self) -> None:
        self._ask("call", "reset_log")

    def reset_throttle(self) -> None:
        self._ask("call", "reset_throttle")

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._channel.send(None)
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()

    def __enter__(self) -> CtmProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class World:
    """moto in a process of its own, and a fresh stack of ``template.yaml`` on it per run."""

    moto: MotoProcess
    mappings: list[str]  # the template's SQS events, as the poller runs them

    @classmethod
    def start(cls) -> World:
        prepare_process()
        moto = MotoProcess()
        moto.start()
        os.environ["AWS_ENDPOINT_URL"] = moto.endpoint_url
        from devkit.aws_local import LocalAwsStack
        from devkit.lambda_poller import mappings_from_template

        stack = LocalAwsStack.create(moto.endpoint_url, prefix=f"b{uuid.uuid4().hex[:10]}")
        mappings = [
            f"{m.label} ({'FIFO' if m.fifo else 'standard'}): BatchSize {m.batch_size}, "
            f"MaximumConcurrency {m.maximum_concurrency}"
            + (
                f", batching window {m.batching_window_seconds:.0f} s"
                if m.batching_window_seconds and not m.fifo
                else ""
            )
            for m in mappings_from_template(stack)
        ]
        return cls(moto, mappings)

    def stop(self) -> None:
        self.moto.stop()

    def fresh_stack(self, ctm: CtmProcess, max_receive_count: int | None = None) -> Any:
        """Another stack on the same server (an empty table and queues) whose CTM secret holds
        the emulator's credentials and CA."""
        from devkit.aws_local import LocalAwsStack

        stack = LocalAwsStack.create(
            self.moto.endpoint_url,
            prefix=f"b{uuid.uuid4().hex[:10]}",
            max_receive_count=max_receive_count,
        )
        stack.put_secret(
            {"username": ctm.username, "password": ctm.password, "ca_bundle": ctm.ca_pem}
        )
        return stack


@dataclass(frozen=True)
class PooledInvocation:
    """One invocation of a pooled container: what it was given (its queue, or ``direct``)."""

    source: str
    pid: int
    started: float
    invocation: Invocation
    keys: int = 0  # keys the event's queue messages carried (0 for a direct invocation)
    after_import_kb: int = 0  # the container's VmHWM once its handler was imported


class ContainerPool:
    """Lambda's execution environments for one function: the poller's target in benchmarks.

    Each concurrent invocation gets a container process of its own (``LambdaContainer``): an
    idle warm one, else a new one (a cold start). A container whose process died (killed)
    raises, which the poller reads as a crashed invocation, and is never reused.
    """

    def __init__(
        self, function: str, env: Mapping[str, str], timeout_seconds: float | None = None
    ) -> None:
        self._function = function
        self._env = dict(env)
        self._timeout = timeout_seconds
        self._lock = threading.Lock()
        self._idle: list[LambdaContainer] = []
        self._busy: dict[int, tuple[LambdaContainer, Mapping[str, Any]]] = {}
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds last seen
        self.invocations: list[PooledInvocation] = []
        self.cold_starts = 0
        self.kills = 0

    def __call__(self, event: dict[str, Any]) -> Any:
        container = self._take()
        source = _event_source(event)
        started = time.monotonic()
        with self._lock:
            self._busy[container.pid] = (container, event)
        try:
            invocation = container.invoke(event)
        except (RuntimeError, OSError, ValueError):
            with self._lock:
                self._busy.pop(container.pid, None)
            raise
        with self._lock:
            self._busy.pop(container.pid, None)
            self._cpu[container.pid] = container.cpu_seconds()
            self.invocations.append(
                PooledInvocation(
                    source,
                    container.pid,
                    started,
                    invocation,
                    _event_keys(event),
                    container.peak_rss_after_import_kb,
                )
            )
            self._idle.append(container)
        return invocation.response

    def _take(self) -> LambdaContainer:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.cold_starts += 1
        return LambdaContainer(self._function, self._env, timeout_seconds=self._timeout)

    def kill_busy(self, source: str) -> int | None:
        """SIGKILL one container busy with an event from ``source``; its pid, or None."""
        with self._lock:
            for pid, (container, event) in self._busy.items():
                if _event_source(event) == source:
                    self._cpu[pid] = container.cpu_seconds()
                    container.kill()
                    self.kills += 1
                    return pid
        return None

    def cpu_seconds(self) -> float:
        """CPU used by every container the pool started (live ones read now)."""
        with self._lock:
            for container in [*self._idle, *(c for c, _ in self._busy.values())]:
                self._cpu[container.pid] = container.cpu_seconds() or self._cpu.get(
                    container.pid, 0.0
                )
            return sum(self._cpu.values())

    def close(self) -> None:
        self.cpu_seconds()
        with self._lock:
            idle, self._idle = self._idle, []
        for container in idle:
            container.close()

    def aws(self) -> tuple[AwsCalls, AwsCalls]:
        """(calls, items) of every invocation so far, summed."""
        calls: Counter[str] = Counter()
        items: Counter[str] = Counter()
        for pooled in self.invocations:
            calls.update(pooled.invocation.aws_calls)
            items.update(pooled.invocation.aws_items)
        return AwsCalls(dict(calls)), AwsCalls(dict(items))


def _event_source(event: Mapping[str, Any]) -> str:
    records = event.get("Records") or [{}]
    return str(records[0].get("eventSourceARN", "direct"))


def _event_keys(event: Mapping[str, Any]) -> int:
    """Keys the event's queue messages name (a chunk's ``keys``); 0 for anything else."""
    keys = 0
    for record in event.get("Records") or []:
        try:
            body = json.loads(record.get("body", ""))
        except ValueError:
            continue
        if isinstance(body, dict) and isinstance(body.get("keys"), list):
            keys += len(body["keys"])
    return keys
