"""The operator CLI, ``cckm-refresh`` (or ``python -m cckm_refresh``): the refresh function's
refresh, its results and a preflight, run from a shell (docs/reference.md 7). The settings are the
function's variables, each overridable by a flag; every expected failure is one line on stderr
and a non-zero exit code, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence

from cckm_refresh.cli.common import EXIT_ERROR, EXIT_FAILED_KEYS, EXIT_OK, CliError
from cckm_refresh.cli.doctor import FUNCTION_TIMEOUT_SECONDS
from cckm_refresh.cli.doctor import doctor as run_doctor
from cckm_refresh.cli.refresh import refresh as run_refresh
from cckm_refresh.cli.show import history as show_history
from cckm_refresh.cli.show import results as show_results
from cckm_refresh.config import ConfigError
from cckm_refresh.observability import logger
from cckm_refresh.request import RequestError
from cckm_refresh.selectors import SELECTOR_FILTERS

__all__ = ["EXIT_ERROR", "EXIT_FAILED_KEYS", "EXIT_OK", "CliError", "main"]


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = _parser().parse_args(argv)  # None: sys.argv[1:]
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
    _add_selector_flags(refresh)
    refresh.add_argument("--dry-run", action="store_true", help="resolve and record, no refresh")
    refresh.add_argument("--reason", help="stored on the run")
    refresh.add_argument("--request-id", help="names the run (a rerun skips finished keys)")
    _add_config_flags(refresh)
    refresh.add_argument("--json", action="store_true", help="print the results as JSON lines")
    refresh.add_argument("--quiet", action="store_true", help="no progress display")
    refresh.set_defaults(command=run_refresh)

    results = commands.add_parser("results", help="show a run and its results")
    results.add_argument("run_id")
    results.add_argument("--table", help="results table (default: RESULTS_TABLE)")
    results.add_argument("--json", action="store_true")
    results.set_defaults(command=show_results)

    history = commands.add_parser("history", help="show a key's latest state and past results")
    history.add_argument("key_id")
    history.add_argument("--table", help="results table (default: RESULTS_TABLE)")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--json", action="store_true")
    history.set_defaults(command=show_history)

    doctor = commands.add_parser(
        "doctor", help="check the settings, the secret and CTM as the function will use them"
    )
    _add_selector_flags(doctor, "count every OCI key CCKM manages, by tenancy and vault")
    doctor.add_argument("--secret-file", metavar="PATH", help="read the CTM secret from a file")
    doctor.add_argument(
        "--function-timeout",
        type=float,
        default=FUNCTION_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"the function's Timeout (default: the template's, {FUNCTION_TIMEOUT_SECONDS})",
    )
    doctor.add_argument("--canary", metavar="KEY", help="refresh this one key, for real")
    _add_config_flags(doctor, table=False)
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON lines")
    doctor.set_defaults(command=run_doctor)
    return parser


def _add_selector_flags(
    parser: argparse.ArgumentParser, all_help: str = "every OCI key CCKM manages"
) -> None:
    parser.add_argument("--all", action="store_true", help=all_help)
    for name in sorted(SELECTOR_FILTERS):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"sel_{name}", metavar="VALUE")


def _add_config_flags(parser: argparse.ArgumentParser, *, table: bool = True) -> None:
    parser.add_argument("--ctm-url", help="CTM address (default: CTM_BASE_URL)")
    parser.add_argument("--secret-id", help="CTM credentials secret (default: CTM_SECRET_ID)")
    if table:
        parser.add_argument("--table", help="results table (default: RESULTS_TABLE)")
    parser.add_argument("--concurrency", help="calls in flight (default: REFRESH_CONCURRENCY)")
    parser.add_argument("--rate", help="calls/s per tenancy (default: TENANCY_RATE_LIMIT)")
    parser.add_argument(
        "--insecure", action="store_true", help="do not verify CTM's TLS certificate"
    )
