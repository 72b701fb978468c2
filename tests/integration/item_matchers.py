"""Expected values for table items whose contract is a shape, not one value.

An expected item is a dict of attribute -> value; where the contract promises a shape (an ISO
time, a positive TTL, the boolean ``True``, no such attribute) the value is a ``Matches``.
``attributes(item, expected)`` picks the same attributes from the item, so one ``==`` checks
them all and pytest's diff names each attribute that is not as promised.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


class Matches:
    """Equal to each value that ``test`` accepts; shown in a diff as ``<description>``."""

    __hash__ = None  # type: ignore[assignment]  # equal to many values, so unhashable

    def __init__(self, description: str, test: Callable[[Any], bool]) -> None:
        self.description = description
        self.test = test

    def __eq__(self, other: object) -> bool:
        try:
            return bool(self.test(other))
        except (TypeError, ValueError, AttributeError):
            return False  # not even a value of the right kind (a number, some text)

    def __repr__(self) -> str:
        return f"<{self.description}>"


class _Absent:
    """What ``attributes`` reports for an attribute the item does not have."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()
ISO_TIME = Matches("an ISO 8601 UTC time", lambda value: ISO_Z.fullmatch(value) is not None)
POSITIVE = Matches("a number above 0", lambda value: int(value) > 0)
NOT_NEGATIVE = Matches("a number of 0 or more", lambda value: value >= 0)
TRUE = Matches("the boolean True", lambda value: value is True)
FALSE = Matches("the boolean False", lambda value: value is False)


def starting(prefix: str) -> Matches:
    """Text that starts with ``prefix``."""
    return Matches(f"text starting {prefix!r}", lambda value: value.startswith(prefix))


def attributes(item: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The item's value of each of ``names``, ``ABSENT`` where it has none."""
    return {name: item.get(name, ABSENT) for name in names}
