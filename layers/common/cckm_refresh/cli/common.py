"""What every command of the CLI shares: its exit codes, its one-line errors, its tables."""

from __future__ import annotations

from collections.abc import Sequence

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
    """The part of a key-version OCID that tells versions apart.

    ``ocid1.keyversion.<realm>.<region>.<vault>.<version>.<key>``: the last part names the key
    and is the same in every version of it.
    """
    if not version:
        return ""
    parts = str(version).split(".")
    return parts[-2] if len(parts) >= 7 and parts[1] == "keyversion" else str(version)[-13:]


def json_default(value: object) -> object:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)
