"""How a selector's listing becomes chunks (``Resolver``): with a fake directory that pages, so
the moment each chunk leaves (which page it left with) is visible."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cckm_refresh.request import parse_request
from cckm_refresh.run.resolution import FIRST_CHUNK_KEYS, Chunk, Resolver
from cckm_refresh.runtime import Deadline


def key_object(key_id: str, tenancy: str) -> dict[str, Any]:
    return {
        "id": key_id,
        "tenancy": tenancy,
        "region": "us-ashburn-1",
        "createdAt": "2026-01-01T00:00:00Z",
        "oci_params": {"key_id": f"ocid1.key.oc1.iad.{key_id}", "current_key_version": "v1"},
    }


@dataclass(frozen=True)
class Cursor:
    page: int

    def to_json(self) -> dict[str, Any]:
        return {"page": self.page}


@dataclass(frozen=True)
class Page:
    resources: tuple[dict[str, Any], ...]
    next: Cursor | None
    malformed: int = 0


class PagedDirectory:
    """Lists ``pages`` (each a list of (key id, tenancy)) one per call; counts the calls."""

    def __init__(self, pages: list[list[tuple[str, str]]]) -> None:
        self._pages = pages
        self.calls = 0

    def list_page(self, query: Any, *, cursor: Cursor | None = None, **_: Any) -> Page:
        self.calls += 1
        number = cursor.page if cursor else 0
        keys = tuple(key_object(k, t) for k, t in self._pages[number])
        more = number + 1 < len(self._pages)
        return Page(keys, Cursor(number + 1) if more else None)

    def list_oci_keys(self, *_: Any, **__: Any) -> list[dict[str, Any]]:
        return []

    def get_oci_key(self, key_id: str, **_: Any) -> dict[str, Any]:
        raise AssertionError("a selector needs no lookup")


def resolve_all(pages: list[list[tuple[str, str]]], chunk_size: int) -> list[tuple[int, str, str]]:
    """(pages listed when the chunk left, tenancy, its keys joined) for each chunk, in order."""
    directory = PagedDirectory(pages)
    sent: list[tuple[int, str, str]] = []

    def sink(chunk: Chunk) -> None:
        keys = ",".join(entry.key_id for entry in chunk.entries)
        sent.append((directory.calls, str(chunk.tenancy), keys))

    resolver = Resolver(directory, lambda _: {}, lambda resume: Cursor(int(resume["page"])))
    request = parse_request({"selector": {"all": True}})
    soon = Deadline.within(60.0)
    resolver.resolve(
        request, "r", chunk_size=chunk_size, sink=sink, list_until=soon, calls_end_by=soon
    )
    return sent


def test_each_tenancy_starts_after_its_first_page_and_later_chunks_wait_to_be_full() -> None:
    # Given three pages over three tenancies, chunks of at most 4 keys
    pages = [
        [("a1", "t1"), ("a2", "t1"), ("b1", "t2")],
        [("a3", "t1"), ("a4", "t1"), ("a5", "t1"), ("a6", "t1"), ("b2", "t2")],
        [("c1", "t3"), ("a7", "t1"), ("b3", "t2"), ("b4", "t2"), ("b5", "t2")],
    ]

    # When the selector is resolved
    sent = resolve_all(pages, chunk_size=4)

    # Then t1 and t2 leave with page 1 though not full, and t3 with page 3, the first that
    # names it; after its first chunk a tenancy's keys wait for a full chunk (t1's a3-a6
    # during page 2, t2's b2-b5 during page 3) or the end of the listing (t1's a7)
    assert sent == [
        (1, "t1", "a1,a2"),
        (1, "t2", "b1"),
        (2, "t1", "a3,a4,a5,a6"),
        (3, "t2", "b2,b3,b4,b5"),
        (3, "t3", "c1"),
        (3, "t1", "a7"),
    ]


def test_a_listing_of_one_page_makes_one_chunk_per_tenancy_as_before() -> None:
    pages = [[("a1", "t1"), ("b1", "t2"), ("a2", "t1")]]
    assert resolve_all(pages, chunk_size=4) == [(1, "t1", "a1,a2"), (1, "t2", "b1")]


def test_a_first_chunk_leaves_small_as_soon_as_it_has_its_keys_then_chunks_are_full() -> None:
    # Given one page of 110 keys of t1 with 10 of t2 among them, chunks of at most 40 keys
    t1 = [(f"a{n:03}", "t1") for n in range(110)]
    t2 = [(f"b{n:03}", "t2") for n in range(10)]
    pages = [t1[:50] + t2 + t1[50:]]

    # When the selector is resolved
    sent = resolve_all(pages, chunk_size=40)

    # Then t1's first chunk leaves with its first FIRST_CHUNK_KEYS keys, before anything else
    # of the page is looked at; its later chunks are full, the rest leaves at the end; t2's
    # only chunk leaves at the end of the page
    first = FIRST_CHUNK_KEYS
    assert [(tenancy, len(keys.split(","))) for _, tenancy, keys in sent] == [
        ("t1", first),
        ("t1", 40),
        ("t1", 40),
        ("t2", 10),
        ("t1", 110 - first - 80),
    ]
    assert sent[0][2] == ",".join(key for key, _ in t1[:first])
