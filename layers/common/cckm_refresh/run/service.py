"""The run story on one page (docs/reference.md 4.3 and 4.4): a delivery is a request to take
in or a chunk to refresh, and each SQS message gets a ``MessageVerdict`` the handler applies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cckm_refresh.model import RunInfo, Trigger
from cckm_refresh.observability import logger
from cckm_refresh.request import RefreshRequest, RequestError, parse_request, parse_request_body
from cckm_refresh.run.report import Rejection, Result
from cckm_refresh.runtime import Deadline
from cckm_refresh.triggers import Delivery

if TYPE_CHECKING:  # built by run.wiring on the first invocation: not imported at cold start
    from cckm_refresh.run.chunks import ChunkJob
    from cckm_refresh.run.intake import Intake
    from cckm_refresh.run.sweep import Sweeper, SweepReport


@dataclass(frozen=True)
class RefreshService:
    """Processes deliveries; built once per container and shared by its invocations."""

    intake: Intake  # and its worker, table and queues
    sweeper: Sweeper

    def process(self, delivery: Delivery, end: Deadline) -> Result:
        """Process one delivery; ``end`` is when the invocation ends."""
        return self.process_batch([delivery], end)[0]

    def process_batch(self, deliveries: Sequence[Delivery], end: Deadline) -> list[Result]:
        """Process the records of one SQS batch (or one delivery): requests are taken in one
        by one, then every chunk goes through one engine pass. One result per delivery."""
        worker = self.intake.worker
        results: dict[int, Result] = {}
        jobs: dict[int, ChunkJob] = {}
        for index, delivery in enumerate(deliveries):
            request = self._parse(delivery)
            if isinstance(request, Rejection):
                results[index] = request
                continue
            run = run_of(delivery, request)
            logger.append_keys(run_id=run.run_id, trigger=str(run.trigger))
            if request.chunk is not None:
                jobs[index] = worker.job(
                    delivery, run, request.chunk, request.key_ids, request.handoffs
                )
            else:
                results[index] = self.intake.take(delivery, request, run, end)
        if jobs:
            done = worker.work(list(jobs.values()), end)
            for n, (index, job) in enumerate(jobs.items()):
                # The pass's throttles are counted once: on the batch's first report.
                results[index] = worker.report(job, done.throttled if n == 0 else 0)
        return [results[index] for index in range(len(deliveries))]

    def sweep(self) -> SweepReport:
        """Find the runs stuck without progress and queue their work again."""
        return self.sweeper.sweep()

    def retry_later(self, queue_arn: str, receipt_handle: str, delay: int) -> int:
        """Make a message still owing keys (from the queue ``queue_arn``) visible again in
        ``delay`` seconds; 0 when SQS refused (the visibility timeout then applies)."""
        queue = self.intake.queue
        return delay if queue.retry_later(queue.url_of(queue_arn), receipt_handle, delay) else 0

    def _parse(self, delivery: Delivery) -> RefreshRequest | Rejection:
        """The delivery's request; an invalid one is recorded, copied to the DLQ, rejected."""
        try:
            if delivery.trigger is Trigger.SQS:
                return parse_request_body(delivery.raw)
            return parse_request(delivery.document)
        except RequestError as error:
            logger.warning(
                "request rejected", extra={"source_id": delivery.source_id, "error": str(error)}
            )
            self.intake.store.record_rejected(delivery.source_id, str(error), delivery.raw)
            self.intake.queue.dead_letter(delivery.raw, str(error))
            return Rejection(delivery.source_id, str(error))


def run_of(delivery: Delivery, request: RefreshRequest) -> RunInfo:
    """The run a request belongs to (docs/reference.md 4.3)."""
    return RunInfo(
        run_id=request.run_id or request.request_id or delivery.default_run_id,
        trigger=delivery.trigger,
        request_id=request.request_id,
        reason=request.reason,
        dry_run=request.dry_run,
    )
