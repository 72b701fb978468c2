"""Resolution: a request's CCKM ids, OCIDs and selector pages become chunks of one tenancy each,
streamed to a sink (docs/architecture.md, "One tenancy, one invocation at a time")."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any

from cckm_refresh.ctm.errors import CtmError, CtmNotFoundError
from cckm_refresh.ctm.listing import ListCursor
from cckm_refresh.model import KeyInfo, RefreshOutcome, Status
from cckm_refresh.observability import logger
from cckm_refresh.request import RefreshRequest
from cckm_refresh.runtime import SYSTEM, Deadline, Runtime, map_concurrently
from cckm_refresh.selectors import resource_matches
from cckm_refresh.table.items import KeyEntry

if TYPE_CHECKING:
    from cckm_refresh.ctm.client import CtmClient
    from cckm_refresh.ctm.listing import KeyPage

LOOKUP_WORKERS = 8
SELECTOR_PAGE_SIZE = 500
# A tenancy's first chunk: about 5 s of its calls at 5 keys/s, time enough for its next, full
# chunk to be listed, registered and queued behind it.
FIRST_CHUNK_KEYS = 25


@dataclass(frozen=True)
class Chunk:
    """Keys of one tenancy that travel together in one queue message."""

    chunk_id: str
    tenancy: str | None
    entries: tuple[KeyEntry, ...]


ChunkSink = Callable[[Chunk], None]


@dataclass
class Resolution:
    """What a resolution did: chunks handed to the sink, keys terminal before any refresh
    (missing, or CCKM's copy no key object), and where the listing stopped if the deadline
    came first (``resume``)."""

    terminal: list[RefreshOutcome] = field(default_factory=list)
    keys: int = 0
    mismatched: int = 0  # returned by the list call but not matching the selector
    malformed: int = 0  # list items that were not key objects
    pages: int = 0  # list pages read
    resume: dict[str, Any] | None = None  # None: the resolution finished


@dataclass
class _Chunker:
    """Per-tenancy buffers that become chunks when full; bounded by tenancies x chunk size. A
    tenancy's first chunk leaves with ``FIRST_CHUNK_KEYS`` keys, or at the end of the first
    page that names it (``add_page``), so every tenancy starts refreshing after one page."""

    run_id: str
    size: int
    sink: ChunkSink
    result: Resolution
    buffers: dict[str | None, dict[str, KeyEntry]] = field(default_factory=dict)
    started: set[str | None] = field(default_factory=set)  # tenancies with a chunk sent

    def add(self, entry: KeyEntry) -> None:
        tenancy = entry.known.tenancy if entry.known else None
        buffer = self.buffers.setdefault(tenancy, {})
        if entry.key_id in buffer:
            return
        buffer[entry.key_id] = entry
        full = self.size if tenancy in self.started else min(self.size, FIRST_CHUNK_KEYS)
        if len(buffer) >= full:
            self._emit(tenancy)

    def add_page(self, page: KeyPage, query: Mapping[str, str] | None) -> None:
        """A page's keys: only those that match the selector (CTM may ignore a filter or match
        by wildcard) and are well formed, the others counted; then the first chunk of each
        tenancy that has none sent yet leaves."""
        self.result.malformed += page.malformed
        for resource in page.resources:
            if query and not resource_matches(query, resource):
                self.result.mismatched += 1
                logger.warning(
                    "CTM listed a key that does not match the selector; not refreshed",
                    extra={"key_id": str(resource.get("id"))[:64]},
                )
                continue
            try:
                info = KeyInfo.from_ctm(resource)
            except ValueError:
                self.result.malformed += 1
                continue
            self.add(KeyEntry(info.key_id, info))
        for tenancy in [t for t in self.buffers if t not in self.started]:
            self._emit(tenancy)

    def flush(self) -> None:
        for tenancy in list(self.buffers):
            self._emit(tenancy)

    def _emit(self, tenancy: str | None) -> None:
        entries = tuple(self.buffers.pop(tenancy, {}).values())
        if not entries:
            return
        self.started.add(tenancy)
        self.result.keys += len(entries)
        # The same keys of the same run always make the same chunk (a retried fan-out).
        text = "\n".join([self.run_id, tenancy or "", *(entry.key_id for entry in entries)])
        self.sink(Chunk(hashlib.sha256(text.encode()).hexdigest()[:32], tenancy, entries))


@dataclass(frozen=True)
class Resolver:
    """Turns requests into chunks; built once per container."""

    directory: CtmClient
    latest_of: Callable[[Sequence[str]], Mapping[str, KeyInfo]]
    cursor_from_json: Callable[[dict[str, Any]], Any] = ListCursor.from_json
    _: KW_ONLY
    can_hand_on: bool = True  # whether a continuation message can be sent
    runtime: Runtime = SYSTEM

    def resolve(
        self,
        request: RefreshRequest,
        run_id: str,
        *,
        chunk_size: int,
        sink: ChunkSink,
        list_until: Deadline,
        calls_end_by: Deadline,
    ) -> Resolution:
        """Resolve ``request`` into chunks handed to ``sink``; a list page starts only before
        ``list_until``, and every CTM call ends by ``calls_end_by``."""
        result = Resolution()
        chunker = _Chunker(run_id, chunk_size, sink, result)
        if request.resume is None:  # a continuation has done the ids and OCIDs already
            self._by_id(request.key_ids, calls_end_by, chunker)
            self._by_ocid(request.ocids, calls_end_by, chunker)
        if request.selector is not None:
            query = None if request.selector.all_keys else request.selector.as_query()
            self._select(query, request.resume, chunker, list_until, calls_end_by)
        chunker.flush()
        return result

    def _by_id(self, key_ids: Sequence[str], deadline: Deadline, chunker: _Chunker) -> None:
        if not key_ids:
            return
        latest = self.latest_of(key_ids)
        unseen = [k for k in key_ids if k not in latest or not latest[k].tenancy]
        found = map_concurrently(
            self.runtime, lambda k: self._lookup_id(k, deadline), unseen, LOOKUP_WORKERS, "lookup"
        )
        learnt = dict(zip(unseen, found, strict=True))
        for key_id in key_ids:
            fresh = learnt.get(key_id)
            if isinstance(fresh, RefreshOutcome):
                chunker.result.terminal.append(fresh)
            else:
                chunker.add(KeyEntry(key_id, fresh or latest.get(key_id)))

    def _lookup_id(self, key_id: str, deadline: Deadline) -> KeyInfo | RefreshOutcome | None:
        """The key as CCKM caches it; ``NOT_FOUND`` when CCKM has no such key; ``FAILED`` when
        CTM refuses the lookup for good or its answer is no key object; None when the key is
        gone from OCI (its refresh records ``NOT_FOUND``). A transient error is raised: a key
        is refreshed only in its tenancy's message group, never beside it (the delivery is
        retried, and the last one fails the request's keys, docs/reference.md 4.3)."""
        try:
            return KeyInfo.from_ctm(self.directory.get_oci_key(key_id, deadline=deadline))
        except CtmError as error:
            not_found = isinstance(error, CtmNotFoundError)
            if not_found and error.error_code == "GONE":
                return None  # known to CCKM, gone from OCI: its refresh records NOT_FOUND
            if error.transient:
                raise
            return RefreshOutcome(
                KeyInfo(key_id),
                status=Status.NOT_FOUND if not_found else Status.FAILED,
                attempts=error.attempts,
                http_status=error.http_status,
                error_code=error.error_code,
                error_message=error.message,
            )
        except ValueError as error:
            return RefreshOutcome(
                KeyInfo(key_id),
                status=Status.FAILED,
                error_code="BAD_RESPONSE",
                error_message=f"CCKM's copy of the key is not a key object: {error}"[:512],
            )

    def _by_ocid(self, ocids: Sequence[str], deadline: Deadline, chunker: _Chunker) -> None:
        matches = map_concurrently(
            self.runtime, lambda o: self._lookup_ocid(o, deadline), ocids, LOOKUP_WORKERS, "resolve"
        )
        chunker.result.terminal += [m for m in matches if isinstance(m, RefreshOutcome)]
        for match in matches:
            if isinstance(match, KeyInfo):
                chunker.add(KeyEntry(match.key_id, match))

    def _lookup_ocid(self, ocid: str, deadline: Deadline) -> KeyInfo | RefreshOutcome:
        resource = self.directory.find_oci_key(ocid, deadline=deadline)
        if resource is not None:
            return KeyInfo.from_ctm(resource)
        return RefreshOutcome(
            KeyInfo(ocid, oci_key_id=ocid),
            status=Status.NOT_FOUND,
            error_code="NOT_FOUND",
            error_message="no CCKM key has this OCI key OCID",
        )

    def _select(
        self,
        query: Mapping[str, str] | None,
        resume: dict[str, Any] | None,
        chunker: _Chunker,
        list_until: Deadline,
        calls_end_by: Deadline,
    ) -> None:
        """Page through the selector's keys (``query``; None: all) from ``resume`` into
        ``chunker``; stop at the deadline (``result.resume``: where to go on)."""
        result = chunker.result
        cursor = self.cursor_from_json(resume) if resume else None
        while not list_until.passed():
            try:
                page = self.directory.list_page(
                    query, cursor=cursor, page_size=SELECTOR_PAGE_SIZE, deadline=calls_end_by
                )
            except CtmError as error:
                # Without a page read, the delivery fails and is retried as it came; after
                # some, what was listed is queued and the rest handed on.
                if not error.transient or not result.pages or not self.can_hand_on:
                    raise
                logger.warning("listing interrupted", extra={"error_code": error.error_code})
                break
            result.pages += 1
            chunker.add_page(page, query)
            if page.next is None:
                return
            cursor = page.next
        result.resume = cursor.to_json() if cursor is not None else {}
        logger.info("resolution handed on", extra={"keys_so_far": result.keys})
