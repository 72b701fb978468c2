"""Capped exponential back-off, the one shape every wait between two tries takes here (CTM
retries, the webhook's, DynamoDB's unprocessed items, a message's next delivery).

As botocore's ``retries/standard.py``: the ceiling doubles from ``base`` up to ``cap``; with
full jitter the wait is uniform below it, so clients that failed together retry apart.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_EXPONENT = 62  # 2 ** 62 seconds is already beyond any cap; larger would overflow floats


def ceiling(attempt: int, base: float, cap: float) -> float:
    """The longest wait before retry number ``attempt`` (0 for the first retry)."""
    return min(cap, base * 2.0 ** min(max(attempt, 0), MAX_EXPONENT))


def full_jitter(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """A wait uniform in ``[0, ceiling)``, ``rng`` uniform in ``[0, 1)``."""
    return rng() * ceiling(attempt, base, cap)
