"""What every benchmark stands on: a quiet environment, local AWS, the CTM emulator, counters.

Benchmarks print figures; they assert nothing. The handler under test is the real one
(``functions/refresh/app.py``) loaded as Lambda would, talking to moto over HTTP and to the
CTM emulator over HTTPS with the emulator's CA in the secret.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
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


def balanced_keys(per_tenancy: int, seed: int = KEY_SEED) -> list[dict[str, Any]]:
    """``per_tenancy`` keys of each of three tenancies, so the ceiling is exactly 3 x rate."""
    from devkit.ctm_emulator import generate_keys

    pool = generate_keys(per_tenancy * TENANCIES * 2, tenancies=TENANCIES, seed=seed)
    taken: Counter[str] = Counter()
    keys = []
    for key in pool:
        if taken[key["tenancy"]] < per_tenancy:
            taken[key["tenancy"]] += 1
            keys.append(key)
    if len(keys) != per_tenancy * TENANCIES:
        raise RuntimeError("the generated pool is too uneven to balance")
    return keys


@dataclass
class AwsCallCounter:
    """Counts AWS API calls (not HTTP retries) by ``service.Operation`` while ``counting``.

    Hooked on ``before-call`` of boto3's default session, which every client the handler
    creates with ``boto3.client(...)`` inherits.
    """

    calls: Counter[str] = field(default_factory=Counter)
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
        return counter

    def _seen(self, event_name: str, **details: Any) -> None:
        if not self.counting:
            return
        service, operation = event_name.split(".", 2)[1:]
        with self._lock:
            self.calls[f"{service}.{operation}"] += 1

    @contextmanager
    def window(self) -> Iterator[None]:
        """Count the calls made inside the block (and only those)."""
        self.counting = True
        try:
            yield
        finally:
            self.counting = False


DYNAMODB_WRITES = ("PutItem", "UpdateItem", "BatchWriteItem", "DeleteItem", "TransactWriteItems")


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
class LocalAws:
    """One moto server and a stack of ``template.yaml`` on it."""

    server: Any  # devkit.aws_local.MotoServer
    stack: Any  # devkit.aws_local.LocalStack

    @classmethod
    def start(cls) -> LocalAws:
        from devkit.aws_local import LocalStack, MotoServer

        server = MotoServer()
        server.start()
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint_url
        stack = LocalStack.create(server.endpoint_url, prefix=f"b{uuid.uuid4().hex[:10]}")
        return cls(server, stack)

    def fresh_stack(self) -> Any:
        """Another stack on the same server (an empty table and queues)."""
        from devkit.aws_local import LocalStack

        self.stack = LocalStack.create(self.server.endpoint_url, prefix=f"b{uuid.uuid4().hex[:10]}")
        return self.stack

    def trust(self, ctm: Any) -> None:
        """Store the emulator's credentials and CA in the stack's CTM secret."""
        self.stack.put_secret(
            {"username": ctm.username, "password": ctm.password, "ca_bundle": ctm.ca_pem}
        )

    def stop(self) -> None:
        self.server.stop()


@dataclass
class Invocation:
    """What one invocation of a container answered and cost."""

    response: dict[str, Any]
    wall_seconds: float
    aws_calls: dict[str, int]
    peak_rss_kb: int  # the container's VmHWM so far
    ru_maxrss_kb: int  # what getrusage says (includes the driver's memory: see the container)


class LambdaContainer:
    """The driver's handle on ``bench/lambda_container.py``: a handler in its own process."""

    def __init__(
        self,
        function: str,
        env: Mapping[str, str],
        program: Sequence[str] = ("-m", "bench.lambda_container"),
    ) -> None:
        self._process = subprocess.Popen(
            [sys.executable, *program, function],
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
        )

    def close(self) -> None:
        """End the container (EOF on its stdin) and wait for it."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=30)
        if self._process.stdout is not None:
            self._process.stdout.close()
