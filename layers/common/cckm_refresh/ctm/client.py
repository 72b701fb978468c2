"""The CCKM OCI key operations, named after the CTM API (``reference/ctm-api.md``).

Key ids are validated before any URL is built, so ``../../auth/tokens`` and friends never
reach the network; list filters are restricted to the selector names of CONTRACT 4.1.

Answers are checked: a 2xx refresh/get body that is not a key object is ``BAD_RESPONSE``,
one flagged ``gone`` is ``NOT_FOUND`` (``GONE``), and a malformed list item is skipped and
counted, never fatal to the listing.

Listing (``list_page``) reads pages in a stable order (``sort=createdAt,id``: a refresh
changes ``updatedAt``, never these) and resumes from a ``ListCursor`` = (position, last key
returned). Each page re-reads a small overlap before the position and drops the keys at or
before the last one returned, so keys added, removed or moved while paging are never returned
twice and a key present throughout is never skipped, with memory bounded by one page.

Over 300 lines on purpose: the CCKM operations and the one listing they share (stable order,
resumable cursor, overlap against keys moving between pages), which the operations' callers
must not see the inside of.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

from cckm_refresh.ctm.auth import TokenEndpoint, TokenSource
from cckm_refresh.ctm.credentials import CredentialsCache, SecretLoader
from cckm_refresh.ctm.errors import CtmBadResponseError, CtmNotFoundError
from cckm_refresh.ctm.pacing import UNPACED, Pacer
from cckm_refresh.ctm.retries import GONE_ERROR_CODE, GONE_FIELD, RetryPolicy
from cckm_refresh.ctm.transport import MAX_BODY_BYTES, CtmResponse, Transport
from cckm_refresh.keyids import InvalidKeyIdError, require_cckm_id, require_ocid
from cckm_refresh.model import KeyInfo, MalformedKeyObjectError
from cckm_refresh.observability import logger
from cckm_refresh.runtime import Runtime
from cckm_refresh.selectors import SELECTOR_FILTERS, resource_matches

KEYS_PATH = "/api/v1/cckm/oci/keys"
MAX_PAGE_SIZE = 1000
MAX_FILTER_VALUE = 1024
# A key object is about 2.5 KB, a few KB with many tags. 1 MiB is generous and still keeps
# 64 concurrent refreshes (REFRESH_CONCURRENCY's maximum) under 64 MiB of answers in memory.
MAX_KEY_BODY_BYTES = 1 << 20
# List pages: up to MAX_PAGE_SIZE keys (+ overlap) of a few KB each fit in 8 MiB; one list
# call runs at a time per resolution.
MAX_LIST_BODY_BYTES = MAX_BODY_BYTES
# The stable order pages are read in: fields a refresh never changes (it bumps updatedAt).
LIST_SORT = "createdAt,id"
# Keys re-read before a cursor's position: absorbs that many keys removed before it between
# two page reads without reading back further (more removals: the page steps back further).
LIST_OVERLAP = 20
MAX_CURSOR_FIELD = 255
_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)")

__all__ = [
    "SELECTOR_FILTERS",
    "CtmClient",
    "CtmResponse",
    "KeyPage",
    "ListCursor",
    "resource_matches",
]

SortKey = tuple[str, str]  # (createdAt, id)


@dataclass(frozen=True)
class ListCursor:
    """Where a listing stopped: the position after the last key returned, and that key's
    sort key (None when no well-formed key was returned yet). Round-trips through JSON."""

    skip: int
    after_created_at: str | None = None
    after_id: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.skip, bool) or not isinstance(self.skip, int) or self.skip < 0:
            raise ValueError("cursor skip must be a non-negative integer")
        if (self.after_created_at is None) != (self.after_id is None):
            raise ValueError("cursor after_created_at and after_id go together")
        for value in (self.after_created_at, self.after_id):
            if value is not None and (not isinstance(value, str) or len(value) > MAX_CURSOR_FIELD):
                raise ValueError("cursor sort key fields must be short strings")

    @property
    def after(self) -> SortKey | None:
        if self.after_created_at is None or self.after_id is None:
            return None
        return (self.after_created_at, self.after_id)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (for a queue message); ``from_json`` reads it back."""
        after = None if self.after is None else list(self.after)
        return {"skip": self.skip, "after": after}

    @classmethod
    def from_json(cls, value: object) -> ListCursor:
        """The cursor ``to_json`` wrote; ValueError for anything else."""
        if not isinstance(value, dict) or set(value) != {"skip", "after"}:
            raise ValueError("a list cursor is an object with exactly skip and after")
        after = value["after"]
        if after is None:
            return cls(value["skip"])
        if not isinstance(after, list) or len(after) != 2:
            raise ValueError("a list cursor's after is null or [createdAt, id]")
        return cls(value["skip"], after[0], after[1])


@dataclass(frozen=True)
class KeyPage:
    """One page of a listing: its well-formed keys (unchecked against the selector: use
    ``resource_matches``), how many malformed items were skipped, and where to go on from
    (None when the listing is finished)."""

    resources: tuple[dict[str, Any], ...]
    malformed: int
    next: ListCursor | None


class CtmClient:
    """CCKM OCI key operations over one transport and one token source; thread-safe."""

    def __init__(self, base_url: str, tokens: TokenSource, transport: Transport) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("CTM base URL must be an https:// URL")
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.transport = transport

    @classmethod
    def create(
        cls,
        *,
        base_url: str,
        secret_loader: SecretLoader,
        timeout: float = 20.0,
        max_attempts: int = 4,
        verify_tls: bool = True,
        pool_size: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        wall_clock: Callable[[], float] = time.time,
        adapter: Any = None,
        runtime: Runtime | None = None,
    ) -> CtmClient:
        """Wire a client; no I/O: the secret is loaded and a token obtained at first use.
        ``runtime`` replaces ``clock``, ``sleep`` and ``wall_clock`` when given."""
        if runtime is not None:
            clock, sleep, wall_clock = runtime.monotonic, runtime.sleep, runtime.time
        credentials = CredentialsCache(secret_loader)
        transport = Transport(
            timeout=timeout,
            retry=RetryPolicy(max_attempts=max_attempts),
            verify_tls=verify_tls,
            ca_bundle=credentials.ca_bundle,
            pool_size=pool_size,
            sleep=sleep,
            rng=rng,
            clock=clock,
            adapter=adapter,
        )
        tokens = TokenSource(
            credentials,
            TokenEndpoint(base_url, transport),
            clock=clock,
            wall_clock=wall_clock,
            lock=runtime.condition() if runtime is not None else None,
        )
        return cls(base_url, tokens, transport)

    def __repr__(self) -> str:
        return f"CtmClient({self.base_url!r})"

    def __enter__(self) -> CtmClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def issue_token(self, *, deadline: float | None = None) -> str:
        """A valid bearer JWT (``POST /api/v1/auth/tokens`` when needed, ending before
        ``deadline``). Never log it."""
        with self.transport.within(deadline):
            return self.tokens.bearer()

    def list_oci_keys(
        self,
        filters: Mapping[str, str] | None = None,
        *,
        key_id: str | None = None,
        page_size: int = 100,
        deadline: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield every OCI key matching ``filters`` (and the OCID ``key_id``), page by page.

        Built on ``list_page``; only keys that really match are yielded (CTM may ignore a
        filter). Arguments are validated before the first call (ValueError /
        InvalidKeyIdError), so a bad selector fails without any request. ``deadline`` bounds
        each page's call.
        """
        query = _selector_query(filters)
        if key_id is not None:
            query["key_id"] = require_ocid(key_id)
        _check_page_size(page_size)
        return self._matching(query, page_size, deadline)

    def list_page(
        self,
        filters: Mapping[str, str] | None,
        *,
        cursor: ListCursor | None = None,
        page_size: int = 500,
        deadline: float | None = None,
    ) -> KeyPage:
        """One page of ``GET /api/v1/cckm/oci/keys`` matching ``filters``, from ``cursor``.

        Pages come in a stable order and resume exactly where ``cursor`` says (see the module
        docstring); ``skip`` advances by the keys actually returned. A page that is not a list
        answer is ``CtmBadResponseError``; malformed items are counted in ``malformed``.
        """
        query = _selector_query(filters)
        _check_page_size(page_size)
        return self._read_page(query, cursor, page_size, deadline)

    def get_oci_key(self, key_id: str, *, deadline: float | None = None) -> dict[str, Any]:
        """``GET /api/v1/cckm/oci/keys/{id}``: CCKM's cached copy of the key."""
        answer = self._call(
            "GET", self._key_url(key_id), deadline=deadline, max_body=MAX_KEY_BODY_BYTES
        )
        return _key_object(answer, "GET", require_cckm_id(key_id)).body

    def refresh_oci_key(
        self, key_id: str, *, pacer: Pacer = UNPACED, deadline: float | None = None
    ) -> CtmResponse:
        """``POST /api/v1/cckm/oci/keys/{id}/refresh`` (no body): CCKM re-reads the key from OCI.

        Returns the updated key object with the status and attempts it took; raises a
        CtmError subclass carrying ``error_code``, ``attempts`` and the last ``http_status``:
        ``CtmNotFoundError`` (404, ``gone: true`` as ``GONE``, OCI's
        ``NotAuthorizedOrNotFound``), ``CtmBadResponseError`` (2xx, not this key object),
        ``CtmDeadlineError`` (no attempt fits before ``deadline``, a ``time.monotonic()``
        instant). Retrying a refresh is safe: it only reads OCI.
        """
        answer = self._call(
            "POST",
            self._key_url(key_id) + "/refresh",
            pacer=pacer,
            deadline=deadline,
            max_body=MAX_KEY_BODY_BYTES,
        )
        return _key_object(answer, "POST refresh", require_cckm_id(key_id))

    def close(self) -> None:
        """Release pooled connections and the temporary CA file."""
        self.transport.close()

    def _key_url(self, key_id: str) -> str:
        # require_cckm_id admits only a UUID; quote() is a second lock on the same door.
        return f"{self.base_url}{KEYS_PATH}/{quote(require_cckm_id(key_id), safe='')}"

    def _call(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        pacer: Pacer = UNPACED,
        deadline: float | None = None,
        max_body: int = MAX_BODY_BYTES,
    ) -> CtmResponse:
        return self.transport.call(
            method,
            url,
            params=params,
            auth=self.tokens,
            pacer=pacer,
            deadline=deadline,
            max_body=max_body,
        )

    def _matching(
        self, query: dict[str, str], page_size: int, deadline: float | None
    ) -> Iterator[dict[str, Any]]:
        ocid = query.pop("key_id", None)
        selector = dict(query)
        if ocid is not None:
            query["key_id"] = ocid
        cursor: ListCursor | None = None
        while True:
            page = self._read_page(query, cursor, page_size, deadline)
            if page.malformed:
                logger.warning(
                    "CTM key list held malformed items; skipped", extra={"count": page.malformed}
                )
            for resource in page.resources:
                if resource_matches(selector, resource) and (
                    ocid is None or _oci_key_id(resource) == ocid
                ):
                    yield resource
            if page.next is None:
                return
            cursor = page.next

    def _read_page(
        self,
        query: Mapping[str, str],
        cursor: ListCursor | None,
        page_size: int,
        deadline: float | None,
    ) -> KeyPage:
        position = cursor.skip if cursor is not None else 0
        last = cursor.after if cursor is not None else None
        back = min(LIST_OVERLAP, position) if last is not None else 0
        while True:
            start, items, total = self._window(
                query, position, back, page_size, deadline, after=last
            )
            keys = [_sort_key(item) for item in items]
            _warn_if_unsorted(keys, start)
            resources, malformed, last = _fresh(items, keys, start, position, last)
            end = start + len(items)
            progress = bool(resources or malformed)
            if progress or _listing_done(items, total, end) or _stalled(total, start):
                return _key_page(resources, malformed, items=items, total=total, end=end, last=last)
            # Nothing new yet: the overlap filled CTM's (capped) page. Read on from its end.
            position, back = end, 0

    def _window(
        self,
        query: Mapping[str, str],
        position: int,
        back: int,
        page_size: int,
        deadline: float | None,
        *,
        after: SortKey | None,
    ) -> tuple[int, list[Any], int | None]:
        """``(start, items, total)`` of a page read from ``back`` keys before ``position``.
        When it starts after the last key returned, more than ``back`` keys before it were
        removed since: it looks further back (at most down to 0)."""
        while True:
            start = position - back
            items, total = self._list_call(query, start, page_size + back, deadline)
            first = next((key for key in map(_sort_key, items) if key is not None), None)
            moved = not items or (first is not None and after is not None and first > after)
            if not (back and start > 0 and moved):
                return start, items, total
            back = min(position, 2 * back)

    def _list_call(
        self, query: Mapping[str, str], skip: int, limit: int, deadline: float | None
    ) -> tuple[list[Any], int | None]:
        params: dict[str, str | int] = {**query, "sort": LIST_SORT}
        params.update(skip=skip, limit=min(limit, MAX_PAGE_SIZE))
        answer = self._call(
            "GET",
            self.base_url + KEYS_PATH,
            params=params,
            deadline=deadline,
            max_body=MAX_LIST_BODY_BYTES,
        )
        return _page(answer)


def _key_page(
    resources: list[dict[str, Any]],
    malformed: int,
    *,
    items: Sequence[Any],
    total: int | None,
    end: int,
    last: SortKey | None,
) -> KeyPage:
    """The page, and where the listing goes on from (None when it has ended: an empty page,
    every key read, or CTM repeating a page with no total to go by)."""
    finished = _listing_done(items, total, end) or (not resources and not malformed)
    following = None if finished else ListCursor(end, *(last or (None, None)))
    return KeyPage(tuple(resources), malformed, following)


def _stalled(total: int | None, start: int) -> bool:
    """Nothing new and no total to progress towards: CTM is not honouring skip. Stop."""
    if total is not None:
        return False
    logger.warning("CTM key list repeated a page; stopping", extra={"skip": start})
    return True


def _listing_done(items: Sequence[Any], total: int | None, end: int) -> bool:
    """The listing has ended: an empty page, or as many keys read as CTM says it has."""
    return not items or (total is not None and end >= total)


def _warn_if_unsorted(keys: Sequence[SortKey | None], start: int) -> None:
    if any(b < a for a, b in itertools.pairwise(k for k in keys if k is not None)):
        logger.warning("CTM key list page is not in the order asked", extra={"skip": start})


def _fresh(
    items: Sequence[Any],
    keys: Sequence[SortKey | None],
    start: int,
    position: int,
    last: SortKey | None,
) -> tuple[list[dict[str, Any]], int, SortKey | None]:
    """``(items after last, malformed items not counted before, the new last key)``."""
    resources: list[dict[str, Any]] = []
    malformed = 0
    for offset, (item, key) in enumerate(zip(items, keys, strict=True)):
        if key is None:
            if start + offset >= position:  # not counted again when re-read
                malformed += 1
        elif last is None or key > last:
            resources.append(item)
            last = key
    return resources, malformed, last


def _check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")


def _oci_key_id(resource: Mapping[str, Any]) -> object:
    params = resource.get("oci_params")
    return params.get("key_id") if isinstance(params, dict) else None


def _sort_key(item: object) -> SortKey | None:
    """A list item's (createdAt, id), or None when the item is not a usable key object."""
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
    """An ISO 8601 timestamp as fixed-width UTC text that sorts as time does, or None.

    CTM is written in Go, whose RFC 3339 output drops trailing zeros of the fraction
    (``...01.8767Z`` is after ``...01.876714Z`` as text, before it as time).
    """
    if not isinstance(value, str) or len(value) > MAX_CURSOR_FIELD:
        return None
    match = _TIMESTAMP.fullmatch(value)
    if match is None:
        return None
    seconds, fraction, zone = match.groups()
    if zone not in ("Z", "z", "+00:00", "-00:00"):
        try:
            moment = dt.datetime.fromisoformat(seconds + zone).astimezone(dt.UTC)
        except ValueError:
            return None
        seconds = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{seconds}.{(fraction or '').ljust(9, '0')}Z"


def _key_object(answer: CtmResponse, what: str, key_id: str) -> CtmResponse:
    """``answer`` when it is the key object of ``key_id``; GONE / BAD_RESPONSE otherwise."""
    body = answer.body
    try:
        info = KeyInfo.from_ctm(body)
    except MalformedKeyObjectError as problem:
        raise CtmBadResponseError(
            f"{what} answered HTTP {answer.http_status}: {problem}",
            error_code="BAD_RESPONSE",
            http_status=answer.http_status,
            attempts=answer.attempts,
        ) from None
    if info.key_id != key_id:
        raise CtmBadResponseError(
            f"{what} answered HTTP {answer.http_status} with another key's object",
            error_code="BAD_RESPONSE",
            http_status=answer.http_status,
            attempts=answer.attempts,
        )
    if body.get(GONE_FIELD) is True:
        raise CtmNotFoundError(
            f"{what} answered HTTP {answer.http_status}: the key is gone from OCI",
            error_code=GONE_ERROR_CODE,
            http_status=answer.http_status,
            attempts=answer.attempts,
        )
    return answer


def _selector_query(filters: Mapping[str, str] | None) -> dict[str, str]:
    query: dict[str, str] = {}
    for name, value in (filters or {}).items():
        if name not in SELECTOR_FILTERS:
            raise ValueError(f"unknown key list filter {name[:64]!r}")
        if not isinstance(value, str) or len(value) > MAX_FILTER_VALUE:
            raise ValueError(f"key list filter {name} must be a string of at most 1024 characters")
        query[name] = value
    return query


def _page(answer: CtmResponse) -> tuple[list[Any], int | None]:
    """``(items, total)`` of a list answer; ``CtmBadResponseError`` if it is not one."""
    body = answer.body
    resources = body.get("resources")
    if "resources" not in body or not isinstance(resources, list | None):
        raise CtmBadResponseError(
            f"GET {KEYS_PATH} answered HTTP {answer.http_status} with no key list",
            error_code="BAD_RESPONSE",
            http_status=answer.http_status,
            attempts=answer.attempts,
        )
    total = body.get("total")
    if not isinstance(total, int) or isinstance(total, bool):
        total = None
    return resources or [], total
