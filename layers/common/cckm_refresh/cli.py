"""The operator CLI: the same refresh as the Lambda function, run from a shell.

    cckm-refresh refresh ID OCID --dry-run          (``pip install .``; or python -m cckm_refresh)
    cckm-refresh refresh --tenancy prod --dry-run
    cckm-refresh results RUN_ID
    cckm-refresh history KEY_ID

Configuration comes from the same environment variables as the function (CTM_BASE_URL,
CTM_SECRET_ID, RESULTS_TABLE, ...), each overridable by a flag. Every expected failure is
one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from cckm_refresh.config import ConfigError, RefreshSettings
from cckm_refresh.model import RefreshOutcome, Status, Trigger
from cckm_refresh.request import SELECTOR_FIELDS, RequestError, parse_request
from cckm_refresh.triggers import Delivery

if TYPE_CHECKING:
    from cckm_refresh.table.history import KeyHistory

EXIT_OK = 0
EXIT_FAILED_KEYS = 1
EXIT_ERROR = 2
A_DAY = 86_400.0


class CliError(Exception):
    """An expected failure, reported as one line."""


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        # The emulator parses its own options: argparse.REMAINDER refuses "--port 8443".
        args = argparse.Namespace(command=_emulator, emulator_args=argv[1:])
    else:
        args = _parser().parse_args(argv)
    env = dict(os.environ if env is None else env)
    try:
        with _logs_to_stderr(env.get("POWERTOOLS_LOG_LEVEL")):
            code: int = args.command(args, env)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    return code


@contextlib.contextmanager
def _logs_to_stderr(level: str | None) -> Iterator[None]:
    """The package's JSON logs are for CloudWatch: in a shell they would bury the table and
    break ``--json``. They go to stderr, and only when POWERTOOLS_LOG_LEVEL asks for them."""
    from cckm_refresh.observability import logger

    handler = logger.registered_handler
    if not isinstance(handler, logging.StreamHandler):
        yield
        return
    saved_level, saved_stream = handler.level, handler.stream
    handler.setLevel(level.strip().upper() if level else logging.CRITICAL + 1)
    handler.setStream(sys.stderr)
    try:
        yield
    finally:
        handler.setLevel(saved_level)
        handler.setStream(saved_stream)


def _one_line(error: BaseException) -> str:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from cckm_refresh.ctm.errors import CtmError

    if isinstance(error, NoCredentialsError):
        return "no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID...)"
    if isinstance(error, ClientError):
        detail = error.response.get("Error", {})
        return f"AWS {detail.get('Code', 'error')}: {detail.get('Message', '')}".strip()
    if isinstance(error, BotoCoreError):
        return f"AWS: {error}"
    if isinstance(error, CtmError):
        return f"CTM {error.error_code}: {error.message}"
    if isinstance(error, (ConfigError, RequestError, CliError)):
        return str(error)
    return f"{type(error).__name__}: {error}".splitlines()[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cckm-refresh",
        description="Refresh CCKM's cached view of OCI keys, and read the results.",
    )
    commands = parser.add_subparsers(dest="name", required=True)

    refresh = commands.add_parser("refresh", help="refresh keys now, record and show the results")
    refresh.add_argument("keys", nargs="*", metavar="KEY", help="CCKM key id or OCI key OCID")
    refresh.add_argument("--all", action="store_true", help="every OCI key CCKM manages")
    for name in sorted(SELECTOR_FIELDS):
        refresh.add_argument(f"--{name.replace('_', '-')}", dest=f"sel_{name}", metavar="VALUE")
    refresh.add_argument("--dry-run", action="store_true", help="resolve and record, no refresh")
    refresh.add_argument("--reason", help="stored on the run")
    refresh.add_argument("--request-id", help="names the run (a rerun skips finished keys)")
    _add_config_flags(refresh)
    refresh.add_argument("--json", action="store_true", help="print the results as JSON lines")
    refresh.add_argument("--quiet", action="store_true", help="no progress display")
    refresh.set_defaults(command=_refresh)

    results = commands.add_parser("results", help="show a run and its results")
    results.add_argument("run_id")
    results.add_argument("--table", help="results table (default: RESULTS_TABLE)")
    results.add_argument("--json", action="store_true")
    results.set_defaults(command=_results)

    history = commands.add_parser("history", help="show a key's latest state and past results")
    history.add_argument("key_id")
    history.add_argument("--table", help="results table (default: RESULTS_TABLE)")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--json", action="store_true")
    history.set_defaults(command=_history)

    # Dispatched in main() before parsing; listed here for --help.
    emulator = commands.add_parser(
        "emulator", help="the CTM emulator, from a clone only", add_help=False
    )
    emulator.add_argument("emulator_args", nargs=argparse.REMAINDER)
    emulator.set_defaults(command=_emulator)
    return parser


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ctm-url", help="CTM address (default: CTM_BASE_URL)")
    parser.add_argument("--secret-id", help="CTM credentials secret (default: CTM_SECRET_ID)")
    parser.add_argument("--table", help="results table (default: RESULTS_TABLE)")
    parser.add_argument("--concurrency", help="calls in flight (default: REFRESH_CONCURRENCY)")
    parser.add_argument("--rate", help="calls/s per tenancy (default: TENANCY_RATE_LIMIT)")
    parser.add_argument(
        "--insecure", action="store_true", help="do not verify CTM's TLS certificate"
    )


def _settings(args: argparse.Namespace, env: dict[str, str]) -> RefreshSettings:
    overrides = {
        "CTM_BASE_URL": args.ctm_url,
        "CTM_SECRET_ID": args.secret_id,
        "RESULTS_TABLE": args.table,
        "REFRESH_CONCURRENCY": args.concurrency,
        "TENANCY_RATE_LIMIT": args.rate,
        "CTM_VERIFY_TLS": "false" if args.insecure else None,
    }
    merged = env | {k: v for k, v in overrides.items() if v is not None}
    settings = RefreshSettings.from_env(merged)
    # A shell run does every key itself: no fan-out, no hand-off to a queue.
    return replace(settings, work_queue_url=None, dead_letter_queue_url=None)


def _request(args: argparse.Namespace) -> dict[str, Any]:
    request: dict[str, Any] = {}
    if args.keys:
        request["keys"] = list(args.keys)
    selector = {
        name: getattr(args, f"sel_{name}")
        for name in sorted(SELECTOR_FIELDS)
        if getattr(args, f"sel_{name}") is not None
    }
    if args.all:
        if selector:
            raise CliError("--all cannot be combined with selector filters")
        selector = {"all": True}
    if selector:
        request["selector"] = selector
    if not request:
        raise CliError("name keys, or a selector such as --tenancy NAME, or --all")
    for name in ("reason", "request_id"):
        if getattr(args, name):
            request[name] = getattr(args, name)
    if args.dry_run:
        request["dry_run"] = True
    return request


def _require_aws_credentials() -> None:
    """Fail with the real cause up front: the CTM client would report an unreadable secret."""
    import boto3
    from botocore.exceptions import NoCredentialsError

    if boto3.Session().get_credentials() is None:
        raise NoCredentialsError


class _Progress:
    """A one-line progress display on stderr for long runs."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self._stream = stream
        self._enabled = enabled and stream.isatty()
        self._counts: dict[Status, int] = {}
        self._lock = threading.Lock()

    def __call__(self, outcome: RefreshOutcome) -> None:
        with self._lock:
            self._counts[outcome.status] = self._counts.get(outcome.status, 0) + 1
            if self._enabled:
                done = sum(self._counts.values())
                parts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self._counts.items()))
                self._stream.write(f"\r{done} keys: {parts}   ")
                self._stream.flush()

    def close(self) -> None:
        if self._enabled and self._counts:
            self._stream.write("\n")


def _refresh(args: argparse.Namespace, env: dict[str, str]) -> int:
    from cckm_refresh.run.report import Rejection
    from cckm_refresh.run.wiring import refresh_service

    request = _request(args)
    try:
        # Before any AWS or CTM call: a typo is the operator's, not a pipeline's REJECTED item.
        parse_request(request)
    except RequestError as error:
        raise CliError(f"invalid request: {error}") from None
    settings = _settings(args, env)
    _require_aws_credentials()
    progress = _Progress(sys.stderr, not (args.quiet or args.json))
    service = refresh_service(settings, on_outcome=progress)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    delivery = Delivery(
        trigger=Trigger.CLI,
        source_id=f"cli-{uuid.uuid4()}",
        default_run_id=f"cli-{stamp}-{uuid.uuid4().hex[:6]}",
        document=request,
        raw=json.dumps(request),
    )
    try:
        report = service.process(delivery, lambda: A_DAY)
    finally:
        progress.close()
    if isinstance(report, Rejection):
        raise CliError(f"invalid request: {report.error}")
    rows = [r.outcome for r in report.recorded]
    if args.json:
        for outcome in rows:
            print(json.dumps({k: v for k, v in outcome.__dict__.items() if v is not None}))
    else:
        _print_outcomes(rows)
        counts = {s: report.count(s) for s in Status}
        print(
            f"\nrun {report.run_id}: {len(rows)} keys: "
            + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
            + (f"; {report.rotated} rotated" if report.rotated else "")
        )
    failed = report.count(Status.FAILED) + report.count(Status.PENDING) + report.pending
    common = _common_failure(rows)
    if common:
        print(f"error: every key failed: {common}", file=sys.stderr)
    return EXIT_FAILED_KEYS if failed else EXIT_OK


def _common_failure(outcomes: Sequence[RefreshOutcome]) -> str | None:
    """The one cause every key failed with (CTM unreachable, TLS...), as one line; else None."""
    failed = [o for o in outcomes if o.status in (Status.FAILED, Status.PENDING)]
    if not failed or len(failed) != len(outcomes) or len({o.error_code for o in failed}) != 1:
        return None
    first = failed[0]
    detail = f": {first.error_message}" if first.error_message else ""
    return f"CTM {first.error_code}{detail}".splitlines()[0]


def _print_outcomes(outcomes: Sequence[RefreshOutcome]) -> None:
    rows = [
        (
            o.status.value,
            o.display_name or "",
            o.key_id,
            o.tenancy or "",
            _version_label(o.current_key_version),
            o.error_code or "",
        )
        for o in sorted(outcomes, key=lambda o: (o.status.value, o.display_name or ""))
    ]
    _print_table(("STATUS", "NAME", "KEY ID", "TENANCY", "VERSION", "ERROR"), rows)


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _table(args: argparse.Namespace, env: dict[str, str]) -> KeyHistory:
    from cckm_refresh.table.history import KeyHistory
    from cckm_refresh.wiring import aws_client

    name = args.table or env.get("RESULTS_TABLE")
    if not name:
        raise CliError("RESULTS_TABLE is not set (or pass --table)")
    return KeyHistory(aws_client("dynamodb"), name)


def _results(args: argparse.Namespace, env: dict[str, str]) -> int:
    table = _table(args, env)
    run = table.run(args.run_id)
    if run is None:
        raise CliError(f"no run {args.run_id!r} in table {table.table_name}")
    results = list(table.results(args.run_id))
    if args.json:
        print(json.dumps({"run": run, "results": results}, default=_json_default))
        return EXIT_OK
    print(
        f"run {run['run_id']} ({run.get('trigger')}) {run.get('status')}: "
        f"{run.get('requested')} requested, started {run.get('started_at')}"
        + (f", finished {run['finished_at']}" if run.get("finished_at") else "")
    )
    rows = [
        (
            r.get("status"),
            r.get("display_name", ""),
            r.get("key_id"),
            r.get("tenancy", ""),
            "yes" if r.get("version_changed") else "",
            r.get("error_code", ""),
        )
        for r in sorted(results, key=lambda r: (str(r.get("status")), str(r.get("display_name"))))
    ]
    _print_table(("STATUS", "NAME", "KEY ID", "TENANCY", "ROTATED", "ERROR"), rows)
    return EXIT_OK


def _history(args: argparse.Namespace, env: dict[str, str]) -> int:
    table = _table(args, env)
    latest = table.latest(args.key_id)
    results = table.history(args.key_id, args.limit)
    if latest is None and not results:
        raise CliError(f"no history for key {args.key_id!r} in table {table.table_name}")
    if args.json:
        print(json.dumps({"latest": latest, "results": results}, default=_json_default))
        return EXIT_OK
    if latest:
        print(
            f"key {latest['key_id']} {latest.get('display_name', '')} "
            f"({latest.get('tenancy', '?')}/{latest.get('region', '?')}): "
            f"{latest.get('lifecycle_state', '?')}, version {latest.get('current_key_version')}, "
            f"last {latest.get('last_status')} in run {latest.get('last_run_id')}"
        )
    rows = [
        (
            r.get("recorded_at"),
            r.get("run_id"),
            r.get("status"),
            _version_label(r.get("current_key_version")),
            "yes" if r.get("version_changed") else "",
            r.get("error_code", ""),
        )
        for r in results
    ]
    _print_table(("RECORDED", "RUN", "STATUS", "VERSION", "ROTATED", "ERROR"), rows)
    return EXIT_OK


def _emulator(args: argparse.Namespace, env: dict[str, str]) -> int:
    import importlib

    try:
        emulator = importlib.import_module("devkit.ctm_emulator.__main__")
    except ImportError:
        raise CliError(
            "the CTM emulator is a development tool and is not installed with the CLI: "
            "in a clone of the repository, run python -m devkit.ctm_emulator"
        ) from None
    return int(emulator.main(args.emulator_args))


def _version_label(version: object) -> str:
    """The part of a key-version OCID that tells versions apart.

    ``ocid1.keyversion.<realm>.<region>.<vault>.<version>.<key>``: the last part names the key
    and is the same in every version of it.
    """
    if not version:
        return ""
    parts = str(version).split(".")
    return parts[-2] if len(parts) >= 7 and parts[1] == "keyversion" else str(version)[-13:]


def _json_default(value: object) -> object:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)
