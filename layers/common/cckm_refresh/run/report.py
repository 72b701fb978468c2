"""What one delivery did to its run, and the verdict on its SQS message, as values the handler
applies (as botocore's retry handler returns a decision)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cckm_refresh import backoff
from cckm_refresh.model import RunStatus, Status
from cckm_refresh.observability import logger
from cckm_refresh.table.items import RecordedResult, RunCounts


class Action(StrEnum):
    DONE = "done"  # delete the message
    RETRY = "retry"  # deliver it again in ``delay`` seconds (keys are PENDING)
    DEAD_LETTER = "dead_letter"  # its last delivery gave up on keys: let SQS dead-letter it


@dataclass(frozen=True)
class MessageVerdict:
    """What happens to the SQS message a delivery came in."""

    action: Action = Action.DONE
    delay: int = 0

    @classmethod
    def retry(cls, receive_count: int) -> MessageVerdict:
        """30 s, 60 s, 120 s... capped at 15 minutes, rather than the visibility timeout."""
        return cls(Action.RETRY, int(backoff.ceiling(receive_count - 1, 30, 900)))


DONE = MessageVerdict()
DEAD_LETTER = MessageVerdict(Action.DEAD_LETTER)


@dataclass(frozen=True)
class Rejection:
    """The delivery's request was invalid: recorded, copied to the DLQ, never retried."""

    source_id: str
    error: str
    verdict: MessageVerdict = DONE


@dataclass(frozen=True)
class RunReport:
    """What one delivery did to its run, and what must happen to its message."""

    run_id: str
    requested: int
    recorded: tuple[RecordedResult, ...] = ()
    pending: int = 0
    handed_off: int = 0
    fanned_out: int = 0
    throttled: int = 0
    gave_up: int = 0
    counts: RunCounts | None = None  # the run's counts once it has completed
    completed_now: bool = False  # this delivery completed the run
    listing_error: tuple[str, str] | None = None  # (error_code, message): the listing failed
    verdict: MessageVerdict = DONE

    @property
    def status(self) -> RunStatus:
        return RunStatus.RUNNING if self.counts is None else RunStatus.COMPLETED

    def count(self, status: Status) -> int:
        return sum(1 for r in self.recorded if r.outcome.status is status)

    @property
    def rotated(self) -> int:
        return sum(1 for r in self.recorded if r.version_changed)

    @property
    def latencies_ms(self) -> tuple[int, ...]:
        """How long each refresh call recorded here took (this delivery's, once each)."""
        return tuple(
            r.outcome.duration_ms for r in self.recorded if r.outcome.status is Status.REFRESHED
        )

    @classmethod
    def replay(cls, run_id: str, counts: RunCounts) -> RunReport:
        """A delivery of a run that has completed: nothing done, the run as it finished."""
        return cls(run_id, counts.requested, counts=counts)


Result = RunReport | Rejection


def log_outcomes(recorded: Sequence[RecordedResult], completed: RunCounts | None) -> None:
    """One line per key that needs a look (rotated, not found, failed, pending), with its id;
    one more when the delivery saw the run ``completed``."""
    for result in recorded:
        outcome = result.outcome
        fields: dict[str, object] = {"key_id": outcome.key_id, "status": str(outcome.status)}
        if outcome.status is Status.REFRESHED and result.version_changed:
            fields["previous_key_version"] = result.previous_key_version
            fields["current_key_version"] = outcome.key.current_key_version
            logger.info("key rotated in OCI", extra=fields)
        elif outcome.status is Status.REFRESHED:
            logger.debug("key refreshed", extra=fields)
        elif outcome.status is not Status.SKIPPED:
            fields["error_code"] = outcome.error_code
            fields["http_status"] = outcome.http_status
            fields["attempts"] = outcome.attempts
            logger.warning("key not refreshed", extra=fields)
    if completed:
        logger.info("run completed", extra={"counts": completed.__dict__})
