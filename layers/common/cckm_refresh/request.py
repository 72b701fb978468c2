"""The request object of docs/reference.md 4.1: parsed and validated before any HTTP call is made.

Every rejection names the field at fault (``keys[3]``, ``selector.region``, ``reason``...)
and never echoes the offending value, which may be large or hostile.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cckm_refresh.keyids import InvalidKeyIdError, KeyIdKind, classify_key_id
from cckm_refresh.selectors import SELECTOR_FILTERS, value_problem
from cckm_refresh.text import printable

MAX_KEYS = 1000
MAX_REASON = 256
NAME_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_FIELDS = frozenset({"keys", "selector", "request_id", "run_id", "reason", "dry_run"})
# Only the function itself sends these, on messages that continue a run (``run_id`` set):
# ``chunk`` names the registered chunk a message carries, ``resume`` where a selector's
# listing stopped when its resolution was handed on, ``handoffs`` how many invocations in a
# row handed the work on without recording an outcome (each counts as a delivery).
INTERNAL_FIELDS = frozenset({"chunk", "resume", "handoffs"})
MAX_HANDOFFS = 1000
CHUNK_PATTERN = re.compile(r"[0-9a-f]{8,64}")
MAX_RESUME = 2048


class RequestError(ValueError):
    """The request is invalid; ``field`` names what is wrong."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name


@dataclass(frozen=True)
class Selector:
    """CCKM list filters; ``all_keys`` means every OCI key (``{"all": true}``)."""

    filters: tuple[tuple[str, str], ...] = ()
    all_keys: bool = False

    def as_query(self) -> dict[str, str]:
        return dict(self.filters)


@dataclass(frozen=True)
class RefreshRequest:
    """A validated request: CCKM ids and OCIDs (de-duplicated, in order) and/or a selector."""

    key_ids: tuple[str, ...] = ()
    ocids: tuple[str, ...] = ()
    selector: Selector | None = None
    request_id: str | None = None
    run_id: str | None = None
    reason: str | None = None
    dry_run: bool = False
    chunk: str | None = None
    resume: dict[str, Any] | None = None
    handoffs: int = 0


def parse_request_body(body: str) -> RefreshRequest:
    """Parse a JSON text (an SQS message body) into a request, or raise RequestError."""
    try:
        document = json.loads(body)
    # ValueError, not just JSONDecodeError: a number longer than Python's int-conversion
    # limit (4300 digits) raises a bare ValueError, which SQS would redeliver until the DLQ.
    except (ValueError, TypeError, RecursionError):
        raise RequestError("body", "is not valid JSON") from None
    return parse_request(document)


def parse_request(document: object) -> RefreshRequest:
    """Validate a decoded request object (docs/reference.md 4.1), or raise RequestError."""
    if not isinstance(document, dict):
        raise RequestError("request", "must be a JSON object")
    _check_fields(document)
    key_ids, ocids = _parse_keys(document["keys"]) if "keys" in document else ((), ())
    dry_run = document.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise RequestError("dry_run", "must be true or false")
    return RefreshRequest(
        key_ids=key_ids,
        ocids=ocids,
        selector=_parse_selector(document["selector"]) if "selector" in document else None,
        request_id=_parse_name(document, "request_id"),
        run_id=_parse_name(document, "run_id"),
        reason=_parse_reason(document["reason"]) if "reason" in document else None,
        dry_run=dry_run,
        chunk=_parse_chunk(document),
        resume=_parse_resume(document),
        handoffs=_parse_handoffs(document),
    )


def _check_fields(document: Mapping[str, object]) -> None:
    """Every field is known (the internal ones only with ``run_id``); keys or selector is set."""
    allowed = REQUEST_FIELDS | INTERNAL_FIELDS if "run_id" in document else REQUEST_FIELDS
    unknown = sorted(str(name) for name in document if name not in allowed)
    if unknown:
        raise RequestError(_field_name(unknown[0]), "is not a known field")
    if "keys" not in document and "selector" not in document:
        raise RequestError("keys", "or selector is required")


def _parse_chunk(document: Mapping[str, object]) -> str | None:
    chunk = document.get("chunk")
    if chunk is None:
        return None
    if not isinstance(chunk, str) or not CHUNK_PATTERN.fullmatch(chunk) or "keys" not in document:
        raise RequestError("chunk", "must be a chunk id, with keys")
    return chunk


def _parse_handoffs(document: Mapping[str, object]) -> int:
    if "handoffs" not in document:
        return 0
    handoffs = document["handoffs"]
    if (
        not isinstance(handoffs, int)
        or isinstance(handoffs, bool)
        or not 0 <= handoffs <= MAX_HANDOFFS
        or ("chunk" not in document and "resume" not in document)
    ):
        raise RequestError("handoffs", "must be a count of hand-offs, with a chunk or a resume")
    return handoffs


def _parse_resume(document: Mapping[str, object]) -> dict[str, Any] | None:
    resume = document.get("resume")
    if resume is None:
        return None
    if (
        not isinstance(resume, dict)
        or "selector" not in document
        or len(json.dumps(resume, default=str)) > MAX_RESUME
    ):
        raise RequestError("resume", "must be a listing position, with a selector")
    return resume


def _field_name(name: object) -> str:
    """An unknown field's name as an error may quote it: printable, at most 64 characters
    (it travels on in a log line, a table item and an SQS message attribute)."""
    return printable(name, 64) or "?"


def _parse_keys(value: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not isinstance(value, list):
        raise RequestError("keys", "must be a list of key ids")
    if not 1 <= len(value) <= MAX_KEYS:
        raise RequestError("keys", f"must hold 1 to {MAX_KEYS} key ids")
    key_ids: dict[str, None] = {}
    ocids: dict[str, None] = {}
    for index, item in enumerate(value):
        try:
            kind, canonical = classify_key_id(item)
        except InvalidKeyIdError:
            raise RequestError(
                f"keys[{index}]", "must be a CCKM resource id (UUID) or an OCI key OCID"
            ) from None
        (key_ids if kind is KeyIdKind.CCKM else ocids)[canonical] = None
    return tuple(key_ids), tuple(ocids)


def _parse_selector(value: object) -> Selector:
    if not isinstance(value, dict):
        raise RequestError("selector", "must be an object of CCKM list filters")
    if not value:
        raise RequestError("selector", 'must not be empty (use {"all": true} for every key)')
    if "all" in value:
        if len(value) != 1 or value["all"] is not True:
            raise RequestError("selector.all", 'must be exactly {"all": true}, alone')
        return Selector(all_keys=True)
    filters: list[tuple[str, str]] = []
    for name in sorted(value, key=str):
        if name not in SELECTOR_FILTERS:
            raise RequestError(f"selector.{_field_name(name)}", "is not a known filter")
        problem = value_problem(value[name])
        if problem is not None:
            raise RequestError(f"selector.{name}", problem)
        filters.append((name, str(value[name])))
    return Selector(filters=tuple(filters))


def _parse_name(document: Mapping[str, object], name: str) -> str | None:
    if name not in document:
        return None
    value = document[name]
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise RequestError(name, "must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")
    return value


def _parse_reason(value: object) -> str:
    if not isinstance(value, str):
        raise RequestError("reason", "must be a string")
    if len(value) > MAX_REASON:
        raise RequestError("reason", f"must be at most {MAX_REASON} characters")
    return value


class RunFields(Protocol):
    """What a message that continues a run repeats of it (``RunInfo`` and ``RunState`` do)."""

    @property
    def run_id(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def dry_run(self) -> bool: ...


def chunk_message(
    run: RunFields, chunk: str, key_ids: Sequence[str], handoffs: int = 0
) -> dict[str, Any]:
    """The body of a queue message that carries one registered chunk of ``run``."""
    return _continuing(run, {"chunk": chunk, "keys": list(key_ids)}, handoffs)


def continuation_message(
    run: RunFields, selector: Selector, resume: dict[str, Any], handoffs: int = 0
) -> dict[str, Any]:
    """The body that continues resolving ``selector`` for ``run`` where it stopped."""
    filters = {"all": True} if selector.all_keys else selector.as_query()
    return _continuing(run, {"selector": filters, "resume": resume}, handoffs)


def _continuing(run: RunFields, fields: dict[str, Any], handoffs: int) -> dict[str, Any]:
    optional = {"handoffs": handoffs, "reason": run.reason, "dry_run": run.dry_run}
    return {"run_id": run.run_id, **fields, **{k: v for k, v in optional.items() if v}}
