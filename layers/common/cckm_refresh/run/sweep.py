"""The sweep: runs with no progress for longer than their deliveries can take are stuck; their
work is queued again (docs/reference.md 4.3) and counted (the ``RunsStuck`` metric).

Work is lost between two writes: a container killed after registering a chunk and before
sending its message, or after handing a listing on and before sending the continuation, or
after closing a run's last chunk and before completing the run (its message then dead-lettered),
or a schedule whose invocations all failed. The sweep finds those runs by their ``progress_at``
(moved by every registration, close and hand-on) among the runs still open, sends each open
chunk and an unfinished resolution again (queues de-duplicate nothing here: a chunk's keys
already terminal are skipped, not refreshed twice) and marks the run swept; a run with nothing
left to send, it completes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cckm_refresh.config import RefreshSettings
from cckm_refresh.observability import logger
from cckm_refresh.ratelimit import UNKNOWN_TENANCY
from cckm_refresh.request import chunk_message
from cckm_refresh.runtime import SYSTEM, Runtime
from cckm_refresh.table.items import RunState, resume_of
from cckm_refresh.workqueue import QueueMessage

if TYPE_CHECKING:
    from cckm_refresh.run.ports import RunQueues, RunTable


@dataclass(frozen=True)
class SweepReport:
    open_runs: int = 0
    stuck: tuple[str, ...] = ()  # run ids
    chunks_queued: int = 0
    listings_queued: int = 0
    completed: tuple[str, ...] = ()  # stuck runs that owed nothing: completed by the sweep


class Sweeper:
    """Finds stuck runs and queues their work again; built once per container."""

    def __init__(
        self,
        settings: RefreshSettings,
        store: RunTable,
        queue: RunQueues,
        runtime: Runtime = SYSTEM,
    ) -> None:
        self._settings = settings
        self._store = store
        self._queue = queue
        self._runtime = runtime

    def sweep(self) -> SweepReport:
        now = int(self._runtime.time())
        runs = self._store.open_runs()
        stuck = [
            r for r in runs if now - (r.progress_at or now) >= self._settings.stuck_after_seconds
        ]
        chunks = listings = 0
        completed: list[str] = []
        for run in stuck:
            sent_chunks, sent_listing = self._queue_again(run)
            chunks += sent_chunks
            listings += sent_listing
            if not sent_chunks + sent_listing and self._store.complete_if_done(run.run_id):
                completed.append(run.run_id)
        if stuck:
            logger.error(
                "stuck runs found: their work is queued again",
                extra={
                    "runs": [r.run_id for r in stuck][:20],
                    "count": len(stuck),
                    "completed": completed[:20],
                },
            )
        return SweepReport(
            len(runs), tuple(r.run_id for r in stuck), chunks, listings, tuple(completed)
        )

    def _queue_again(self, run: RunState) -> tuple[int, int]:
        """Send the run's open chunks and its unfinished resolution again; (chunks, listings).
        A run with neither is marked swept all the same: the caller completes it."""
        sweep = run.sweeps + 1
        messages = [
            QueueMessage(
                chunk_message(
                    list(chunk.key_ids),
                    run_id=run.run_id,
                    chunk=chunk.chunk_id,
                    reason=run.reason,
                    dry_run=run.dry_run,
                ),
                chunk.tenancy or UNKNOWN_TENANCY,
                f"{chunk.chunk_id}:sweep-{sweep}",
            )
            for chunk in self._store.open_chunks(run.run_id)
        ]
        listing = self._resolution_of(run, sweep)
        if listing is not None:
            messages.append(listing)
        if messages:
            self._queue.send(messages)
        self._store.swept(run.run_id, sweep)
        return len(messages) - (listing is not None), int(listing is not None)

    def _resolution_of(self, run: RunState, sweep: int) -> QueueMessage | None:
        """The message that resolves the run again from where its resolution stopped."""
        if run.resolving is None:
            return None
        kept = self._store.kept_request(run.run_id)
        if kept is None:
            logger.error("a stuck run's request was not kept", extra={"run_id": run.run_id})
            return None
        body = json.loads(kept) | {"run_id": run.run_id}
        resume = resume_of(run.resolving)
        if resume is not None:
            kept_fields = ("run_id", "selector", "reason", "dry_run")
            body = {name: body[name] for name in kept_fields if name in body} | {"resume": resume}
        return QueueMessage(body, f"resolve:{run.run_id}", f"{run.run_id}:sweep-{sweep}"[:128])
