"""A key listing read completely, page by page, whatever order CTM answers in (docs/reference.md 9
says how): the cursor, the page, and how each page is placed against the one before."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeGuard

from cckm_refresh.ctm.errors import CtmListingError, CtmPermanentError
from cckm_refresh.keyids import InvalidKeyIdError, require_cckm_id
from cckm_refresh.model import KeyInfo, MalformedKeyObjectError

MAX_PAGE_SIZE = 1000
SORTS: tuple[str | None, ...] = ("createdAt,id", "createdAt", None)  # None: CTM's own order
OVERLAP = 16  # keys re-read before a page's position, their ids kept as anchors
MAX_READS = 64  # list calls for one page: fallbacks, look-backs and reads past the overlap
MAX_CURSOR_FIELD = 64
_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)")

IGNORED, BACK, LOST = -1, -2, -3  # a page that cannot be placed: fall back, look back, rewind
Key = tuple[str, str]  # (createdAt as fixed-width UTC text, id)
Reply = tuple[list[Any], int | None]
Fetch = Callable[[str | None, int, int], tuple[list[Any], object]]
"""``(sort, skip, limit)``: one list call's items and ``total``, as CTM gave them."""


@dataclass(frozen=True)
class ListCursor:
    """Where a listing stands: its position, order and tail; round-trips through JSON."""

    skip: int = 0
    sort: str | None = SORTS[0]
    anchors: tuple[str, ...] = ()  # ids of the last keys returned (or re-read), in order
    after: Key | None = None  # the last key returned, in a sorted order
    first: str | None = None  # the createdAt of anchors[0], in a sorted order
    page_cap: int | None = None  # the most keys CTM answered per call, when below the asked
    fallbacks: tuple[str, ...] = ()  # e.g. "createdAt,id refused", "createdAt ignored"
    rewound: bool = False  # read again from the start since the last page placed

    def __post_init__(self) -> None:
        texts = [*self.anchors, *(self.after or ()), self.first or "", *self.fallbacks]
        shaped = (  # no more nor longer texts than a cursor holds
            _count(self.skip),
            self.sort in SORTS,
            len(self.anchors) <= OVERLAP,
            len(self.fallbacks) <= len(SORTS),
            all(isinstance(t, str) and len(t) <= MAX_CURSOR_FIELD for t in texts),
            self.after is None or len(self.after) == 2,
            self.page_cap is None or (_count(self.page_cap) and self.page_cap > 0),
            isinstance(self.rewound, bool),
        )
        if not all(shaped):
            raise ValueError("not a list cursor")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict for a queue message (under 1,500 characters as JSON)."""
        fields = dataclasses.asdict(self)
        return {name: list(v) if isinstance(v, tuple) else v for name, v in fields.items()}

    @classmethod
    def from_json(cls, value: object) -> ListCursor:
        """The cursor ``to_json`` wrote (or an earlier version's ``{skip, after}``)."""
        names = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(value, dict) or not set(value) <= names:
            raise ValueError("not a list cursor")
        fields = dict(value)
        try:
            for name in ("anchors", "fallbacks", "after"):
                if fields.get(name) is not None:
                    fields[name] = tuple(fields[name])
            if set(value) == {"skip", "after"} and fields["after"] is not None:
                fields["anchors"] = fields["after"][1:]  # an earlier cursor: sorted, one anchor
                fields["first"] = fields["after"][0]
            return cls(**fields)
        except TypeError as error:
            raise ValueError("not a list cursor") from error


@dataclass(frozen=True)
class KeyPage:
    """One page's well-formed keys (unchecked against the selector), the malformed items skipped,
    the cursor to go on from (None: the end), and what the listing learnt of CTM."""

    resources: tuple[dict[str, Any], ...]
    malformed: int
    next: ListCursor | None
    sort: str | None = SORTS[0]
    fallbacks: tuple[str, ...] = ()
    page_cap: int | None = None


def read_page(fetch: Fetch, cursor: ListCursor, page_size: int) -> KeyPage:
    """The page after ``cursor``: at most ``page_size`` keys not returned before."""
    state, malformed, counted_to, back = cursor, 0, cursor.skip, _overlap(cursor)
    for _ in range(MAX_READS):
        start, limit = state.skip - back, min(page_size + back, MAX_PAGE_SIZE)
        read = _read(fetch, state, start, limit)
        if read is None:  # the sort refused: the next order, from the same position
            state, back = _fall_back(state, "refused")
            continue
        items = read[0]
        keys = list(map(sort_position, items))
        placed = _placement(state, keys, start, back)
        if placed < 0:  # IGNORED, BACK or LOST: fall back, look back or rewind
            state, back, counted_to = _unplaced(state, placed, back, counted_to, read)
            continue
        fresh = _fresh(state, keys, placed)[:page_size]  # a look-back's page may hold more
        stop = fresh[-1] + 1 if len(fresh) == page_size else len(items)
        malformed += keys[max(0, counted_to - start) : stop].count(None)  # not counted before
        end, cap = start + stop, state.page_cap
        counted_to = max(counted_to, end)
        done = stop == len(items) and _at_end(read, fresh, end, limit, cap)
        state = _learn_cap(state, len(items), stop, limit, done=done)
        if fresh or done:
            return _page(state, (items, keys), fresh, end, malformed, done=done)
        if cap == 1:
            raise _incomplete("CTM answers one key per list call: no page can be checked")
        state = replace(state, skip=end)  # every key was re-read: read on from the page's end
        back = _overlap(state)
    raise _incomplete(f"CTM's key list did not settle in {MAX_READS} calls")


def _read(fetch: Fetch, state: ListCursor, start: int, limit: int) -> Reply | None:
    """One list call's items and total (None unless a count); None when CTM refused a sort (400)
    with one left."""
    try:
        items, total = fetch(state.sort, start, limit)
    except CtmPermanentError as error:
        if error.http_status != 400 or state.sort is None:
            raise
        return None
    return items, total if _count(total) else None


def _placement(state: ListCursor, keys: Sequence[Key | None], start: int, back: int) -> int:
    """Where the keys not returned may start in the page, or why it cannot be placed."""
    if not keys:  # the listing shrank below the position, or was never longer
        return BACK if start > 0 else 0
    return (_place if state.sort else _anchor)(state, keys, start, back)


def _unplaced(
    state: ListCursor, placed: int, back: int, counted_to: int, read: Reply
) -> tuple[ListCursor, int, int]:
    """A page not placed: the next order, a look further back, or a read from the start."""
    if placed == IGNORED:
        return (*_fall_back(state, "ignored"), counted_to)
    if placed == BACK:
        return state, min(state.skip, 2 * back), counted_to
    items, total = read  # a rewind, once after each page placed, unless this read was whole
    if state.rewound and not (state.skip == back and total is not None and len(items) >= total):
        raise _incomplete("CTM lists keys in an order that changes between calls")
    return replace(state, skip=0, anchors=(), rewound=True), 0, 0


def _fresh(state: ListCursor, keys: Sequence[Key | None], placed: int) -> list[int]:
    """The positions of the keys not returned before, from where the page was placed."""
    return [i for i, k in enumerate(keys) if i >= placed and k and _new(state, k)]


def _at_end(read: Reply, fresh: list[int], end: int, limit: int, cap: int | None) -> bool:
    """A page read to its end ends the listing: nothing there, all of a total, or fewer keys
    than a cap CTM answered before (than asked, with no total), whatever a stale total says."""
    items, total = read
    short_of = cap if total is not None else min(limit, cap or limit)
    reached = total is not None and end >= total
    return not items or reached or (not fresh and short_of is not None and len(items) < short_of)


def _learn_cap(state: ListCursor, count: int, stop: int, limit: int, *, done: bool) -> ListCursor:
    """With CTM's cap per call, when a page read to its end, not the listing's, fell short."""
    learnt = stop == count < limit and not done
    return replace(state, page_cap=min(count, state.page_cap or count)) if learnt else state


def _incomplete(why: str) -> CtmListingError:
    message = f"{why}, and the listing does not fit one page: it cannot be read completely"
    return CtmListingError(message, error_code="LISTING_INCOMPLETE")


def _place(state: ListCursor, keys: Sequence[Key | None], start: int, back: int) -> int:
    """Sorted: where the keys not returned may start in the page; ``IGNORED`` when the page is
    out of the order asked, ``BACK`` when it starts past the last key returned."""
    if any(b < a for a, b in itertools.pairwise(_rank(state, k) for k in keys if k)):
        return IGNORED
    return 0 if state.after is None else _past_returned(state, state.after, keys, start)


def _past_returned(state: ListCursor, last: Key, keys: Sequence[Key | None], start: int) -> int:
    """Sorted, after a page returned up to ``last``: past the keys of the page returned before."""
    after = _rank(state, last)
    low = _rank(state, (state.first or "", state.anchors[0] if state.anchors else ""))
    seen = -1
    for i, k in enumerate(keys):
        if k is None or _new(state, k):
            continue
        if low < _rank(state, k) < after and k[1] not in state.anchors:
            return IGNORED  # a key never returned, inside what was returned
        seen = i
    return BACK if seen < 0 and start > 0 else seen + 1


def _anchor(state: ListCursor, keys: Sequence[Key | None], start: int, back: int) -> int:
    """CTM's own order: after the last anchor found, when at least half of those re-read (two,
    when more) are found in order; ``BACK`` when too few are, ``LOST`` when out of order."""
    anchors = state.anchors[-back:] if back else ()
    if not anchors:
        return 0
    found = _positions(anchors, keys)  # of the anchors in the page, in the anchors' order
    if found != sorted(found):
        return LOST
    if len(found) < (1 if len(anchors) == 1 else max(2, math.ceil(len(anchors) / 2))):
        return BACK if start > 0 else LOST
    return found[-1] + 1


def _positions(anchors: Sequence[str], keys: Sequence[Key | None]) -> list[int]:
    at = {k[1]: i for i, k in enumerate(keys) if k}
    return [at[a] for a in anchors if a in at]


def _new(state: ListCursor, key: Key) -> bool:
    """Not returned before: sorted, after the last key returned (a tie in ``createdAt`` alone:
    not one of the anchors)."""
    if state.sort is None or state.after is None:
        return True
    rank, after = _rank(state, key), _rank(state, state.after)
    return rank > after or (rank == after and key[1] not in state.anchors)


def _page(
    state: ListCursor,
    page: tuple[Sequence[Any], Sequence[Key | None]],
    fresh: Sequence[int],
    end: int,
    malformed: int,
    *,
    done: bool,
) -> KeyPage:
    items, keys = page
    following = None
    if not done:
        tail = [k for k in keys[: fresh[-1] + 1] if k][-OVERLAP:]
        sorted_ = state.sort is not None
        following = replace(
            state,
            skip=end,
            anchors=tuple(k[1] for k in tail),
            after=keys[fresh[-1]] if sorted_ else None,
            first=tail[0][0] if sorted_ else None,
            rewound=state.rewound and not state.anchors,  # placed by anchors: the order held
        )
    resources = tuple(items[i] for i in fresh)
    return KeyPage(resources, malformed, following, state.sort, state.fallbacks, state.page_cap)


def _fall_back(state: ListCursor, why: str) -> tuple[ListCursor, int]:
    """The next order, from the same position: the anchors still place it (a sort CTM ignored
    was its own order all along; in a refused one nothing was read)."""
    following = SORTS[SORTS.index(state.sort) + 1]
    state = replace(state, sort=following, fallbacks=(*state.fallbacks, f"{state.sort} {why}"))
    return state, _overlap(state)


def _overlap(state: ListCursor) -> int:
    """Keys re-read before the position: below a measured cap, so every page can progress."""
    return min(state.skip, max(1, min(OVERLAP, (state.page_cap or 2 * OVERLAP) // 2)))


def _rank(state: ListCursor, key: Key) -> tuple[str, ...]:
    return key if state.sort == SORTS[0] else key[:1]


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def sort_position(item: object) -> Key | None:
    """A list item's place in ``createdAt,id`` order; None when it is not a usable key."""
    if not isinstance(item, dict):
        return None
    try:
        KeyInfo.from_ctm(item)
        key_id = require_cckm_id(item["id"])
    except (MalformedKeyObjectError, InvalidKeyIdError):
        return None
    created = _sortable_instant(item.get("createdAt"))
    return None if created is None else (created, key_id)


def _sortable_instant(value: object) -> str | None:
    """An ISO 8601 instant as fixed-width UTC text that sorts as time does. Not a datetime:
    CTM is written in Go, whose RFC 3339 has nanoseconds and drops trailing zeros."""
    if not isinstance(value, str) or (match := _TIMESTAMP.fullmatch(value)) is None:
        return None
    seconds, fraction, zone = match.groups()
    if zone not in ("Z", "z", "+00:00", "-00:00"):
        try:
            moment = datetime.fromisoformat(seconds + zone).astimezone(UTC)
        except ValueError:
            return None
        seconds = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{seconds}.{(fraction or '').ljust(9, '0')}Z"
