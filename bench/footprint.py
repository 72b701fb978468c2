"""Cold start and footprint: handler import time against boto3's, the layer's size, peak memory.

PYTHONPATH=layers/common:. .venv/bin/python -m bench.footprint
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.world import (
    ROOT,
    AwsCalls,
    Invocation,
    LambdaContainer,
    LocalAws,
    ctm_calls,
    prepare_process,
)

IMPORT_RUNS = 7
MEMORY_KEYS = 5000
MEMORY_CHUNK = "1000"  # FANOUT_CHUNK_SIZE: 5 messages of 1000 keys
SCHEDULED_TIME = "2026-11-28T06:00:00Z"
RUN_ID = f"schedule-{SCHEDULED_TIME}"
SQS_BATCH_SIZE = 5  # template.yaml's WorkQueue event BatchSize
# What a handler module needs to import (their values are not used until an invocation).
HANDLER_ENV = {
    "CTM_BASE_URL": "https://ctm.example.com",
    "CTM_SECRET_ID": "arn:aws:secretsmanager:us-east-1:123456789012:secret:ctm",
    "RESULTS_TABLE": "results",
    "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:notifications",
}
# Timed inside a fresh interpreter, so interpreter start-up (the same for all) is left out.
_TIME_IMPORT = """
import importlib.util, sys, time
started = time.perf_counter()
{body}
print(time.perf_counter() - started)
"""
_IMPORT_BOTO3 = "import boto3"
_IMPORT_HANDLER = """
spec = importlib.util.spec_from_file_location("app", {path!r})
module = importlib.util.module_from_spec(spec)
sys.modules["app"] = module
spec.loader.exec_module(module)
"""


# --- cold start ------------------------------------------------------------------------------


@dataclass
class ImportTime:
    """Median import time of one module over fresh interpreters, and its ratio to boto3's."""

    name: str
    seconds: list[float]
    ratio: float = 0.0
    heaviest: list[tuple[str, float]] = field(default_factory=list)  # top-level, cumulative

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _fresh_python(code: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *options, "-c", code],
        cwd=ROOT,
        env={**os.environ, **HANDLER_ENV, "PYTHONPATH": f"{ROOT / 'layers' / 'common'}:{ROOT}"},
        capture_output=True,
        text=True,
        check=True,
    )


def _heaviest_imports(body: str, count: int = 6) -> list[tuple[str, float]]:
    """Import time by top-level package (``-X importtime`` self times, summed; the tool's own
    overhead inflates them, so read them as shares, not as absolute figures)."""
    stderr = _fresh_python(_TIME_IMPORT.format(body=body), "-X", "importtime").stderr
    costs: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        if not own.strip().isdigit():
            continue  # the header line
        top = name.strip().split(".")[0]
        costs[top] = costs.get(top, 0.0) + int(own) / 1e6
    return sorted(costs.items(), key=lambda item: -item[1])[:count]


def cold_start() -> list[ImportTime]:
    """boto3 alone and each handler module, each imported ``IMPORT_RUNS`` times, interleaved."""
    bodies = {"boto3": _IMPORT_BOTO3}
    for function in ("refresh", "notify"):
        path = ROOT / "functions" / function / "app.py"
        if path.exists():
            bodies[f"functions/{function}/app.py"] = _IMPORT_HANDLER.format(path=str(path))
    times: dict[str, list[float]] = {name: [] for name in bodies}
    for _ in range(IMPORT_RUNS):  # round-robin: a slow moment of the machine hits all alike
        for name, body in bodies.items():
            out = _fresh_python(_TIME_IMPORT.format(body=body)).stdout
            times[name].append(float(out.strip().splitlines()[-1]))
    results = [ImportTime(name, seconds) for name, seconds in times.items()]
    boto3_median = results[0].median
    for result in results:
        result.ratio = result.median / boto3_median
        result.heaviest = _heaviest_imports(bodies[result.name])
        print(
            f"[cold start] {result.name}: median {result.median * 1000:.0f} ms over "
            f"{len(result.seconds)} fresh interpreters = {result.ratio:.2f} x boto3; "
            "heaviest (importtime ms): "
            + ", ".join(f"{n} {s * 1000:.0f}" for n, s in result.heaviest),
            flush=True,
        )
    return results


# --- the layer -------------------------------------------------------------------------------


@dataclass
class LayerSize:
    unpacked_bytes: int
    zipped_bytes: int
    files: int
    packages: list[tuple[str, int]]  # top-level entries of python/, by size


def _tree_bytes(path: Path) -> tuple[int, int]:
    if path.is_file():
        return path.stat().st_size, 1
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def layer_size() -> LayerSize:
    """Build the layer as ``sam build`` would for arm64 / Python 3.13, and measure it."""
    with tempfile.TemporaryDirectory(prefix="bench-layer-") as tmp:
        target = Path(tmp) / "python"
        installed = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(ROOT / "layers" / "common" / "requirements.txt"),
                "-t",
                str(target),
                "--platform",
                "manylinux2014_aarch64",
                "--python-version",
                "3.13",
                "--only-binary=:all:",
            ],
            capture_output=True,  # the machine's pip configuration warns about its mirrors
            text=True,
            check=False,
        )
        if installed.returncode != 0:
            print(installed.stdout + installed.stderr, file=sys.stderr)
            installed.check_returncode()
        shutil.copytree(
            ROOT / "layers" / "common" / "cckm_refresh",
            target / "cckm_refresh",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        unpacked, files = _tree_bytes(target)
        packages = sorted(
            ((entry.name, _tree_bytes(entry)[0]) for entry in target.iterdir()),
            key=lambda item: -item[1],
        )
        archive = Path(tmp) / "layer.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as layer_zip:
            for path in sorted(target.rglob("*")):
                layer_zip.write(path, path.relative_to(tmp))
        size = LayerSize(unpacked, archive.stat().st_size, files, packages[:6])
    print(
        f"[layer] {size.unpacked_bytes / 2**20:.1f} MiB unpacked ({size.files} files), "
        f"{size.zipped_bytes / 2**20:.1f} MiB zipped; largest: "
        + ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in size.packages),
        flush=True,
    )
    return size


# --- peak memory -----------------------------------------------------------------------------


@dataclass
class MemoryRun:
    keys: int
    refreshed: int
    invocations: list[tuple[str, Invocation]]
    peak_rss_after_import_kb: int
    ctm: dict[str, int]
    aws: AwsCalls

    @property
    def peak_kb(self) -> int:
        return max(invocation.peak_rss_kb for _, invocation in self.invocations)


def peak_memory() -> MemoryRun:
    """One container: a schedule selecting 5,000 keys fans out 5 x 1,000; one SQS batch of
    5 messages (the template's BatchSize) then refreshes all 5,000 in one invocation."""
    from devkit.ctm_emulator import CtmEmulator, generate_keys

    aws = LocalAws.start()
    try:
        with CtmEmulator(keys=generate_keys(MEMORY_KEYS, seed=5)) as ctm:
            aws.trust(ctm)
            env = aws.stack.refresh_env(
                CTM_BASE_URL=ctm.base_url,
                TENANCY_RATE_LIMIT="100",
                FANOUT_CHUNK_SIZE=MEMORY_CHUNK,
            )
            container = LambdaContainer("refresh", env)
            invocations: list[tuple[str, Invocation]] = []
            try:
                invocations.append(
                    (
                        "schedule (list, fan out)",
                        container.invoke(
                            {
                                "scheduled_time": SCHEDULED_TIME,
                                "execution_id": "bench-memory",
                                "request": {"selector": {"all": True}},
                            }
                        ),
                    )
                )
                invocations += _drain(aws, container)
            finally:
                container.close()
            run_item = aws.stack.table.get_item(
                Key={"pk": f"RUN#{RUN_ID}", "sk": "RUN"}, ConsistentRead=True
            )["Item"]
            refreshed = int(run_item.get("refreshed", 0))
            run = MemoryRun(
                keys=MEMORY_KEYS,
                refreshed=refreshed,
                invocations=invocations,
                peak_rss_after_import_kb=container.peak_rss_after_import_kb,
                ctm=ctm_calls(ctm.request_log),
                aws=sum((AwsCalls(inv.aws_calls) for _, inv in invocations), AwsCalls({})),
            )
    finally:
        aws.stop()
    print(
        f"[memory] {run.refreshed}/{run.keys} keys refreshed; peak RSS "
        f"{run.peak_kb / 1024:.0f} MiB (VmHWM; after import "
        f"{run.peak_rss_after_import_kb / 1024:.0f} MiB)",
        flush=True,
    )
    print(f"  AWS calls: dynamodb {run.aws.of('dynamodb')}, sqs {run.aws.of('sqs')}")
    print(f"  CTM calls: {run.ctm}")
    for name, invocation in run.invocations:
        print(
            f"  {name}: {invocation.wall_seconds:.1f} s, RSS so far "
            f"{invocation.peak_rss_kb / 1024:.0f} MiB, {invocation.response}",
            flush=True,
        )
    return run


def _drain(aws: LocalAws, container: LambdaContainer) -> list[tuple[str, Invocation]]:
    """Play the SQS event source: batches of ``SQS_BATCH_SIZE`` until the queue is empty."""
    stack = aws.stack
    sqs = stack.client("sqs")
    done: list[tuple[str, Invocation]] = []
    for _ in range(20):
        messages = sqs.receive_message(
            QueueUrl=stack.work_queue_url,
            MaxNumberOfMessages=SQS_BATCH_SIZE,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return done
        invocation = container.invoke(stack.sqs_event(messages))
        failed = {f["itemIdentifier"] for f in invocation.response["batchItemFailures"]}
        stack.delete_messages(
            stack.work_queue_url, [m for m in messages if m["MessageId"] not in failed]
        )
        summary = {"messages": len(messages), "failed_messages": len(failed)}
        done.append(
            (f"SQS batch of {len(messages)} messages", replace_response(invocation, summary))
        )
    raise RuntimeError("the work queue did not drain")


def replace_response(invocation: Invocation, response: dict[str, Any]) -> Invocation:
    """The invocation with a shorter response to print (an SQS answer is message ids)."""
    return replace(invocation, response=response)


if __name__ == "__main__":
    prepare_process()
    started = time.perf_counter()
    cold_start()
    layer_size()
    peak_memory()
    print(f"footprint: {time.perf_counter() - started:.0f} s")
