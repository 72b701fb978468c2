"""``cckm-refresh results`` and ``history``: a run and its results, a key over time."""

from __future__ import annotations

import argparse
import json
from typing import Any

from cckm_refresh.cli.common import EXIT_OK, CliError, json_default, print_table, version_label
from cckm_refresh.table.items import BY_KEY_INDEX, key_pk, plain
from cckm_refresh.table.reads import TableReader


class KeyHistory(TableReader):
    """The table as ``results`` and ``history`` read it: a key's results over time come from
    the ``by-key`` index (kept out of ``reads``, so the notify function's role reaches none)."""

    def history(self, key_id: str, limit: int) -> list[dict[str, Any]]:
        """A key's last ``limit`` results, newest first."""
        answer = self._db.query(
            TableName=self.table_name,
            IndexName=BY_KEY_INDEX,
            KeyConditionExpression="gsi1pk = :k",
            ExpressionAttributeValues={":k": {"S": key_pk(key_id)}},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [plain(item) for item in answer.get("Items", [])]


def _table(args: argparse.Namespace, env: dict[str, str]) -> KeyHistory:
    from cckm_refresh.wiring import aws_client

    name = args.table or env.get("RESULTS_TABLE")
    if not name:
        raise CliError("RESULTS_TABLE is not set (or pass --table)")
    return KeyHistory(aws_client("dynamodb"), name)


def results(args: argparse.Namespace, env: dict[str, str]) -> int:
    table = _table(args, env)
    run = table.run(args.run_id)
    if run is None:
        raise CliError(f"no run {args.run_id!r} in table {table.table_name}")
    results = list(table.results(args.run_id))
    if args.json:
        print(json.dumps({"run": run, "results": results}, default=json_default))
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
    print_table(("STATUS", "NAME", "KEY ID", "TENANCY", "ROTATED", "ERROR"), rows)
    return EXIT_OK


def history(args: argparse.Namespace, env: dict[str, str]) -> int:
    table = _table(args, env)
    latest = table.latest(args.key_id)
    results = table.history(args.key_id, args.limit)
    if latest is None and not results:
        raise CliError(f"no history for key {args.key_id!r} in table {table.table_name}")
    if args.json:
        print(json.dumps({"latest": latest, "results": results}, default=json_default))
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
            version_label(r.get("current_key_version")),
            "yes" if r.get("version_changed") else "",
            r.get("error_code", ""),
        )
        for r in results
    ]
    print_table(("RECORDED", "RUN", "STATUS", "VERSION", "ROTATED", "ERROR"), rows)
    return EXIT_OK
