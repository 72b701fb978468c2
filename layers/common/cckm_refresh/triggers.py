"""Recognise the trigger shapes of docs/reference.md 4.2 and turn each into ``Delivery`` values
(or, for the sweep schedule, ``is_sweep``).

A delivery is one request as it arrived: its raw body (kept for a rejection record), where it
came from, and the run id it gets when the request does not name one (docs/reference.md 4.3).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from cckm_refresh.model import Trigger

_NOT_NAME_CHARS = re.compile(r"[^A-Za-z0-9._:-]")


class UnsupportedEventError(ValueError):
    """The invocation event is none of the shapes the refresh function accepts."""

    def __init__(self) -> None:
        super().__init__(
            "unsupported event: expected an EventBridge Scheduler envelope "
            '{"scheduled_time", "execution_id", "request"}, an EventBridge rule event '
            '{"detail-type", "detail"}, an SQS batch {"Records": [{"eventSource": "aws:sqs"}]}'
            ', or the sweep schedule\'s {"sweep": "stuck-runs"}'
        )


@dataclass(frozen=True)
class Delivery:
    """One request as delivered by a trigger."""

    trigger: Trigger
    source_id: str  # SQS messageId, EventBridge event id or scheduler execution id
    default_run_id: str
    document: object  # the decoded request (for SQS: decoded lazily by the caller)
    raw: str  # the body as received, for the REJECTED record and the dead-letter copy
    receive_count: int = 1
    group: str | None = None  # a FIFO message's MessageGroupId: the tenancy queue's tenancy


SWEEP = "stuck-runs"  # the template's sweep schedule sends {"sweep": "stuck-runs"}


def is_sweep(event: Any) -> bool:
    """The sweep schedule's event (docs/reference.md 4.2): find stuck runs, queue their work."""
    return isinstance(event, dict) and event.get("sweep") == SWEEP


def is_sqs_event(event: Any) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def single_delivery(event: Any) -> Delivery:
    """The delivery of a scheduler or EventBridge rule event, or UnsupportedEventError."""
    if not isinstance(event, dict):
        raise UnsupportedEventError
    if "detail-type" in event and "detail" in event:
        source_id = str(event.get("id") or "unknown")
        trigger, run_id, document = Trigger.EVENT, f"event-{source_id}", event["detail"]
    elif "scheduled_time" in event and "request" in event:
        scheduled = str(event["scheduled_time"])
        source_id = str(event.get("execution_id") or scheduled)
        trigger, run_id, document = Trigger.SCHEDULE, f"schedule-{scheduled}", event["request"]
    else:
        raise UnsupportedEventError
    return Delivery(trigger, source_id, run_name(run_id), document, raw=_dump(document))


def sqs_delivery(
    message_id: str, body: str, receive_count: int, group: str | None = None
) -> Delivery:
    """The delivery of one SQS message; ``document`` is the raw body, decoded by the parser."""
    run_id = run_name(f"sqs-{message_id}")
    return Delivery(Trigger.SQS, message_id, run_id, body, body, receive_count, group)


def sqs_delivery_of(record: dict[str, Any]) -> Delivery:
    """The delivery of one record of a Lambda SQS event."""
    attributes = record.get("attributes") or {}
    group = attributes.get("MessageGroupId")
    return sqs_delivery(
        str(record["messageId"]),
        str(record.get("body") or ""),
        int(attributes.get("ApproximateReceiveCount") or 1),
        str(group) if group else None,
    )


def run_name(candidate: str) -> str:
    """A run id in the contract's alphabet (1-128 of ``[A-Za-z0-9._:-]``) derived from an id."""
    return _NOT_NAME_CHARS.sub("-", candidate)[:128] or "run"


def _dump(document: object) -> str:
    try:
        return json.dumps(document, separators=(",", ":"), default=str)
    except (TypeError, ValueError, RecursionError):
        return repr(document)
