"""``cckm-refresh refresh``: the same refresh as the Lambda function, with progress and a table."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from cckm_refresh.cli.common import (
    A_DAY,
    EXIT_FAILED_KEYS,
    EXIT_OK,
    CliError,
    print_table,
    version_label,
)
from cckm_refresh.config import RefreshSettings
from cckm_refresh.model import RefreshOutcome, Status, Trigger
from cckm_refresh.request import RequestError, parse_request
from cckm_refresh.runtime import Deadline
from cckm_refresh.selectors import SELECTOR_FILTERS
from cckm_refresh.triggers import Delivery

if TYPE_CHECKING:  # the run package is imported when a refresh starts, not for every command
    from cckm_refresh.run.report import RunReport


def settings_from(
    args: argparse.Namespace, env: dict[str, str], stand_ins: dict[str, str] | None = None
) -> RefreshSettings:
    """The function's settings from ``env``, each overridden by its flag; ``stand_ins`` fill
    variables a command does not use (doctor: ``RESULTS_TABLE``) when they are unset."""
    overrides = {
        "CTM_BASE_URL": args.ctm_url,
        "CTM_SECRET_ID": args.secret_id,
        "RESULTS_TABLE": getattr(args, "table", None),
        "REFRESH_CONCURRENCY": args.concurrency,
        "TENANCY_RATE_LIMIT": args.rate,
        "CTM_VERIFY_TLS": "false" if args.insecure else None,
    }
    merged = env | {k: v for k, v in overrides.items() if v is not None}
    merged |= {k: v for k, v in (stand_ins or {}).items() if not merged.get(k, "").strip()}
    settings = RefreshSettings.from_env(merged)
    # A shell run does every key itself: no fan-out, no hand-off to a queue.
    return replace(settings, work_queue_url=None, dead_letter_queue_url=None)


def _request(args: argparse.Namespace) -> dict[str, Any]:
    """The request the options ask for, validated as the function would validate it."""
    fields = {
        "keys": list(args.keys),
        "selector": selector_from(args),
        "reason": args.reason,
        "request_id": args.request_id,
        "dry_run": args.dry_run,
    }
    request = {name: value for name, value in fields.items() if value}
    if "keys" not in request and "selector" not in request:
        raise CliError("name keys, or a selector such as --tenancy NAME, or --all")
    try:
        # Before any AWS or CTM call: a typo is the operator's, not a pipeline's REJECTED item.
        parse_request(request)
    except RequestError as error:
        raise CliError(f"invalid request: {error}") from None
    return request


def selector_from(args: argparse.Namespace) -> dict[str, Any]:
    """The request's selector: the filter options given, or ``{"all": true}`` for --all."""
    selector: dict[str, Any] = {
        name: getattr(args, f"sel_{name}")
        for name in sorted(SELECTOR_FILTERS)
        if getattr(args, f"sel_{name}") is not None
    }
    if args.all:
        if selector:
            raise CliError("--all cannot be combined with selector filters")
        selector = {"all": True}
    return selector


def _require_aws_credentials() -> None:
    """Fail with the real cause up front: the CTM client would report an unreadable secret."""
    import boto3
    from botocore.exceptions import NoCredentialsError

    if boto3.Session().get_credentials() is None:
        raise NoCredentialsError


class Progress:
    """A one-line progress display on stderr for long runs."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self._stream = stream
        self._enabled = enabled and stream.isatty()
        self._counts: Counter[Status] = Counter()
        self._lock = threading.Lock()

    def __call__(self, outcome: RefreshOutcome) -> None:
        with self._lock:
            self._counts[outcome.status] += 1
            if self._enabled:
                parts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(self._counts.items()))
                self._stream.write(f"\r{self._counts.total()} keys: {parts}   ")
                self._stream.flush()

    def close(self) -> None:
        if self._enabled and self._counts:
            self._stream.write("\n")


def refresh(args: argparse.Namespace, env: dict[str, str]) -> int:
    from cckm_refresh.run.report import Rejection
    from cckm_refresh.run.wiring import refresh_service

    request = _request(args)
    settings = settings_from(args, env)
    _require_aws_credentials()
    progress = Progress(sys.stderr, not (args.quiet or args.json))
    service = refresh_service(settings, on_outcome=progress)
    delivery = _delivery(request)
    try:
        report = service.process(delivery, Deadline.within(A_DAY))
    finally:
        progress.close()
    if isinstance(report, Rejection):
        raise CliError(f"invalid request: {report.error}")
    if report.listing_error is not None and not report.recorded:
        code, message = report.listing_error
        raise CliError(f"CTM {code}: {message}")
    rows = [r.outcome for r in report.recorded]
    if args.json:
        _print_json_lines(rows)
    else:
        _print_outcomes(rows)
        _print_summary(report, rows)
    failed = report.count(Status.FAILED) + report.count(Status.PENDING) + report.pending
    common = _common_failure(rows)
    if common:
        print(f"error: every key failed: {common}", file=sys.stderr)
    if report.listing_error is not None:
        code, message = report.listing_error
        print(f"error: the listing was incomplete: CTM {code}: {message}", file=sys.stderr)
        failed += 1
    return EXIT_FAILED_KEYS if failed else EXIT_OK


def _delivery(request: dict[str, Any]) -> Delivery:
    """The request as the function would receive it, from a trigger of its own (CLI)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Delivery(
        trigger=Trigger.CLI,
        source_id=f"cli-{uuid.uuid4()}",
        default_run_id=f"cli-{stamp}-{uuid.uuid4().hex[:6]}",
        document=request,
        raw=json.dumps(request),
    )


def _print_json_lines(outcomes: Sequence[RefreshOutcome]) -> None:
    """One JSON object per key: its description and its outcome, without empty fields."""
    for outcome in outcomes:
        fields = outcome.key.__dict__ | outcome.__dict__
        print(json.dumps({k: v for k, v in fields.items() if v is not None and k != "key"}))


def _print_summary(report: RunReport, outcomes: Sequence[RefreshOutcome]) -> None:
    print(
        f"\nrun {report.run_id}: {len(outcomes)} keys: "
        + ", ".join(f"{n} {s.lower()}" for s in Status if (n := report.count(s)))
        + (f"; {report.rotated} rotated" if report.rotated else "")
    )


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
            o.key.display_name or "",
            o.key_id,
            o.key.tenancy or "",
            version_label(o.key.current_key_version),
            o.error_code or "",
        )
        for o in sorted(outcomes, key=lambda o: (o.status.value, o.key.display_name or ""))
    ]
    print_table(("STATUS", "NAME", "KEY ID", "TENANCY", "VERSION", "ERROR"), rows)
