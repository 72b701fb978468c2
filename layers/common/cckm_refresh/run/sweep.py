"""The sweep: runs with no progress for longer than their deliveries can take are stuck, and their
work is queued again, or the run completed when it owes nothing (docs/architecture.md, "Every
run completes"; the ``RunsStuck`` metric)."""

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


@dataclass(frozen=True)
class Sweeper:
    """Finds stuck runs and queues their work again; built once per container."""

    settings: RefreshSettings
    store: RunTable
    queue: RunQueues
    runtime: Runtime = SYSTEM

    def sweep(self) -> SweepReport:
        now = int(self.runtime.time())
        runs = self.store.open_runs()
        stuck = [
            r for r in runs if now - (r.progress_at or now) >= self.settings.stuck_after_seconds
        ]
        ids = tuple(r.run_id for r in stuck)
        chunks = listings = 0
        completed: list[str] = []
        for run in stuck:
            sent_chunks, sent_listing = self._queue_again(run)
            chunks += sent_chunks
            listings += sent_listing
            if not sent_chunks + sent_listing and self.store.complete_if_done(run.run_id):
                completed.append(run.run_id)
        if stuck:
            logger.error(
                "stuck runs found: their work is queued again",
                extra={"runs": list(ids[:20]), "count": len(ids), "completed": completed[:20]},
            )
        return SweepReport(len(runs), ids, chunks, listings, tuple(completed))

    def _queue_again(self, run: RunState) -> tuple[int, int]:
        """Send the run's open chunks and its unfinished resolution again; (chunks, listings).
        A run with neither is marked swept all the same: the caller completes it."""
        sweep = run.sweeps + 1
        messages = [
            QueueMessage(
                chunk_message(run, chunk.chunk_id, chunk.key_ids),
                chunk.tenancy or UNKNOWN_TENANCY,
                f"{chunk.chunk_id}:sweep-{sweep}",
            )
            for chunk in self.store.open_chunks(run.run_id)
        ]
        listing = self._resolution_of(run, sweep)
        if listing is not None:
            messages.append(listing)
        if messages:  # a chunk's keys already terminal are skipped, not refreshed twice
            self.queue.send(messages)
        self.store.swept(run.run_id, sweep)
        return len(messages) - (listing is not None), int(listing is not None)

    def _resolution_of(self, run: RunState, sweep: int) -> QueueMessage | None:
        """The message that resolves the run again from where its resolution stopped."""
        if run.resolving is None:
            return None
        kept = self.store.kept_request(run.run_id)
        if kept is None:
            logger.error("a stuck run's request was not kept", extra={"run_id": run.run_id})
            return None
        body = json.loads(kept) | {"run_id": run.run_id}
        resume = resume_of(run.resolving)
        if resume is not None:
            kept_fields = ("run_id", "selector", "reason", "dry_run")
            body = {name: body[name] for name in kept_fields if name in body} | {"resume": resume}
        return QueueMessage(body, f"resolve:{run.run_id}", f"{run.run_id}:sweep-{sweep}"[:128])
