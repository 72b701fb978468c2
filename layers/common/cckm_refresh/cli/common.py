"""What every command of the CLI shares: its exit codes, its one-line errors, its tables."""

from __future__ import annotations

from collections.abc import Sequence

from cckm_refresh.keyids import version_part

EXIT_OK = 0
EXIT_FAILED_KEYS = 1
EXIT_CHECK_FAILED = 1  # doctor: the same code, a check that failed is what keys failing are
EXIT_ERROR = 2
A_DAY = 86_400.0


class CliError(Exception):
    """An expected failure, reported as one line."""


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "") -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def version_label(version: object) -> str:
    """A key version as the CLI shows it: the part that tells versions apart."""
    if not version:
        return ""
    part = version_part(str(version))
    return part if part is not None else str(version)[-13:]


def json_default(value: object) -> object:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)
