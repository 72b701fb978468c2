"""Cold start and footprint of what ``sam build`` ships: handler import time against boto3's,
the layer's size, peak memory.

``make bench`` builds first (``sam build``) and makes ``.venv-lambda``, a python3.13 with only
boto3, as the Lambda runtime has it. Alone, after ``make build lambda-runtime``:
``PYTHONPATH=layers/common:. .venv/bin/python -m bench.footprint [--cold-start]``; with
``--cold-start`` it measures only the cold start and the layer, and rewrites that part of
RESULTS.md.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.drive import Drive, drive, schedule
from bench.figures import (
    IMPORT_RUNS,
    WITH_BYTECODE,
    WITHOUT_BYTECODE,
    ImportTime,
    LayerSize,
    MemoryRun,
)
from bench.results import COLD_START, render_cold_start, write_part
from bench.world import (
    ROOT,
    CtmProcess,
    KeySet,
    PooledInvocation,
    World,
    ctm_calls,
    prepare_process,
)

BUILD = ROOT / ".aws-sam" / "build"  # sam build's output: what is deployed
LAMBDA_PYTHON = ROOT / ".venv-lambda" / "bin" / "python"  # python3.13 + boto3, like the runtime
BUILT_FUNCTIONS = {"refresh": "RefreshFunction", "notify": "NotifyFunction"}
MEMORY_KEYS = 5000
MEMORY_TIMEOUT = 900.0  # seconds the poller may take to drain the run
# What a handler module needs to import (their values are not used until an invocation).
HANDLER_ENV = {
    "CTM_BASE_URL": "https://ctm.example.com",
    "CTM_SECRET_ID": "arn:aws:secretsmanager:us-east-1:123456789012:secret:ctm",
    "RESULTS_TABLE": "results",
    "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:notifications",
}
# Run by the runtime's python3.13 as ``python -I -B``: no PYTHONPATH, no user site, no current
# directory, and no .pyc written (on Lambda /var/task and /opt are read-only). sys.path is then
# Lambda's: /var/task (the function), /opt/python (the layer), then the runtime's own.
# Interpreter start-up, the same for all, is left out. The figure is the CPU time the import
# took: imports are CPU-bound (the files are in the page cache), and CPU time does not count
# the moments another process had the machine's two cores, which wall time does.
_TIME_IMPORT = """
import sys, time
sys.path[:0] = {paths!r}
cpu, wall = time.process_time(), time.perf_counter()
import {module}
print(time.process_time() - cpu, time.perf_counter() - wall)
"""


# --- cold start ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Import:
    name: str
    layer: str
    module: str
    paths: Sequence[str]  # put before the runtime's own sys.path

    def code(self) -> str:
        return _TIME_IMPORT.format(paths=list(self.paths), module=self.module)


def _fresh_python(code: str, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LAMBDA_PYTHON), "-I", "-B", *options, "-c", code],
        cwd=tempfile.gettempdir(),
        env={**os.environ, **HANDLER_ENV},
        capture_output=True,
        text=True,
        check=True,
    )


def _heaviest_imports(code: str, count: int = 6) -> list[tuple[str, float]]:
    """Import time by top-level package (``-X importtime`` self times, summed; the tool's own
    overhead inflates them, so read them as shares, not as absolute figures)."""
    stderr = _fresh_python(code, "-X", "importtime").stderr
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


def _require_build() -> None:
    for needed, how in (
        (BUILD / "CommonLayer" / "python", "make build"),
        (LAMBDA_PYTHON, "make lambda-runtime"),
    ):
        if not needed.exists():
            raise SystemExit(
                f"{needed.relative_to(ROOT)} is missing: run `{how}` (make bench does)"
            )


@contextmanager
def _layer_without_bytecode() -> Iterator[Path]:
    """The built layer minus its .pyc: what a build without compileall ships."""
    with tempfile.TemporaryDirectory(prefix="bench-layer-") as tmp:
        copy = Path(tmp) / "python"
        shutil.copytree(
            BUILD / "CommonLayer" / "python", copy, ignore=shutil.ignore_patterns("__pycache__")
        )
        yield copy


def cold_start() -> list[ImportTime]:
    """``import boto3`` alone, and each built handler with the layer as built and without its
    bytecode, ``IMPORT_RUNS`` rounds, interleaved (a slow moment of the machine hits all)."""
    _require_build()
    with _layer_without_bytecode() as bare_layer:
        imports = [_Import("boto3", "", "boto3", [])]
        built_layer = BUILD / "CommonLayer" / "python"
        for layer, site in ((WITHOUT_BYTECODE, bare_layer), (WITH_BYTECODE, built_layer)):
            for function, logical_id in BUILT_FUNCTIONS.items():
                task = BUILD / logical_id
                imports.append(
                    _Import(f"functions/{function}/app.py", layer, "app", [str(task), str(site)])
                )
        results = [ImportTime(one.name, one.layer, [], []) for one in imports]
        for _ in range(IMPORT_RUNS):
            for result, one in zip(results, imports, strict=True):
                cpu, wall = _fresh_python(one.code()).stdout.split()[-2:]
                result.seconds.append(float(cpu))
                result.wall.append(float(wall))
        boto3 = results[0].seconds
        for result, one in zip(results, imports, strict=True):
            result.ratio = statistics.median(
                s / b for s, b in zip(result.seconds, boto3, strict=True)
            )
            result.heaviest = _heaviest_imports(one.code())
            print(
                f"[cold start] {result.name}{f' ({result.layer})' if result.layer else ''}: "
                f"median {result.median * 1000:.0f} ms CPU ({result.wall_median * 1000:.0f} ms "
                f"wall) over {IMPORT_RUNS} fresh interpreters = {result.ratio:.2f} x boto3; "
                "heaviest (importtime ms): "
                + ", ".join(f"{n} {s * 1000:.0f}" for n, s in result.heaviest),
                flush=True,
            )
    return results


# --- the layer -------------------------------------------------------------------------------


def _tree_bytes(path: Path) -> tuple[int, int]:
    if path.is_file():
        return path.stat().st_size, 1
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def layer_size() -> LayerSize:
    """The layer ``sam build`` made (.aws-sam/build/CommonLayer), unpacked and zipped."""
    _require_build()
    built = BUILD / "CommonLayer"
    unpacked, files = _tree_bytes(built / "python")
    packages = sorted(
        ((entry.name, _tree_bytes(entry)[0]) for entry in (built / "python").iterdir()),
        key=lambda item: -item[1],
    )
    with tempfile.TemporaryDirectory(prefix="bench-layer-") as tmp:
        archive = Path(tmp) / "layer.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as layer_zip:
            for path in sorted((built / "python").rglob("*")):
                layer_zip.write(path, path.relative_to(built))
        size = LayerSize(unpacked, archive.stat().st_size, files, packages[:6])
    print(
        f"[layer] {size.unpacked_bytes / 2**20:.1f} MiB unpacked ({size.files} files), "
        f"{size.zipped_bytes / 2**20:.1f} MiB zipped; largest: "
        + ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in size.packages),
        flush=True,
    )
    return size


# --- peak memory -----------------------------------------------------------------------------


def peak_memory() -> MemoryRun:
    """The refresh function as deployed over 5,000 keys (no latency, no OCI limit,
    ``TENANCY_RATE_LIMIT=100``, template defaults otherwise): the schedule's intake invocation
    lists them and sends them to the tenancy queue in chunks; the poller model delivers the
    chunks to handler containers. What the function's memory must hold: the peak RSS of the
    intake and of the largest chunk invocation."""
    world = World.start()
    try:
        with CtmProcess(KeySet(count=MEMORY_KEYS, seed=5)) as ctm:
            stack = world.fresh_stack(ctm)
            env = stack.refresh_env(CTM_BASE_URL=ctm.base_url, TENANCY_RATE_LIMIT="100")
            run = drive(world, ctm, stack, env, schedule("bench-memory"), timeout=MEMORY_TIMEOUT)
    finally:
        world.stop()
    memory = _memory_figures(run)
    print_memory_run(memory, run)
    return memory


def _memory_figures(run: Drive) -> MemoryRun:
    """The intake and the largest chunk invocation of a driven run, and its calls."""
    intake = next((p for p in run.pool.invocations if p.source == "direct"), None)
    if intake is None:
        raise RuntimeError("the intake invocation did not answer")
    invocations = [("schedule (intake: list, send the chunks)", intake.invocation)]
    largest = _largest_chunk(run.pool.invocations, intake.pid)
    if largest is not None:
        shared = ", in the intake's container" if largest.pid == intake.pid else ""
        invocations.append(
            (f"largest tenancy-queue chunk ({largest.keys} keys{shared})", largest.invocation)
        )
    calls, _ = run.pool.aws()
    return MemoryRun(
        keys=MEMORY_KEYS,
        refreshed=len(run.refreshes()),
        invocations=invocations,
        peak_rss_after_import_kb=intake.after_import_kb,
        ctm=ctm_calls(run.log),
        aws=calls,
    )


def _largest_chunk(pooled: Sequence[PooledInvocation], intake_pid: int) -> PooledInvocation | None:
    """The chunk invocation with the most keys (the highest peak among those). VmHWM counts
    a container's whole life, so one in a container that never ran the intake is preferred:
    its peak is the chunk's own (and its container's earlier chunks')."""
    chunks = [p for p in pooled if p.source != "direct"]
    own = [p for p in chunks if p.pid != intake_pid] or chunks
    return max(own, key=lambda p: (p.keys, p.invocation.peak_rss_kb), default=None)


def print_memory_run(memory: MemoryRun, run: Drive) -> None:
    """The memory run's figures on a few lines."""
    chunks = [p.invocation.peak_rss_kb for p in run.pool.invocations if p.source != "direct"]
    print(
        f"[memory] {memory.refreshed}/{memory.keys} keys refreshed in {run.seconds():.0f} s; "
        f"peak RSS {memory.peak_kb / 1024:.0f} MiB (VmHWM; after import "
        f"{memory.peak_rss_after_import_kb / 1024:.0f} MiB); {len(chunks)} chunk invocations, "
        f"the highest of any {max(chunks, default=0) / 1024:.0f} MiB; "
        f"{run.pool.cold_starts} containers; drained {run.report.drained}",
        flush=True,
    )
    print(f"  AWS calls: dynamodb {memory.aws.of('dynamodb')}, sqs {memory.aws.of('sqs')}")
    print(f"  CTM calls: {memory.ctm}")
    for name, invocation in memory.invocations:
        print(
            f"  {name}: {invocation.wall_seconds:.1f} s, RSS so far "
            f"{invocation.peak_rss_kb / 1024:.0f} MiB, {invocation.response}",
            flush=True,
        )


if __name__ == "__main__":
    prepare_process()
    started = time.perf_counter()
    if "--cold-start" in sys.argv[1:]:  # only the cold start part of RESULTS.md
        write_part(COLD_START, render_cold_start(cold_start(), layer_size()))
    else:
        cold_start()
        layer_size()
        peak_memory()
    print(f"footprint: {time.perf_counter() - started:.0f} s")
