"""Text that travels on: quoted in a log line, a table item, an SQS attribute or a subject.

Names, error messages and request fields come from CTM and from pipelines, so any character
may be in them; SQS refuses control characters in attribute values.
"""

from __future__ import annotations

MAX_MESSAGE = 1000  # an error message as stored and quoted (docs/reference.md 5: error_message)


def printable(text: object, limit: int | None = None, *, replacement: str = "?") -> str:
    """``text`` (its first ``limit`` characters) with every unprintable character replaced."""
    value = str(text) if limit is None else str(text)[:limit]
    return "".join(c if c.isprintable() else replacement for c in value)
