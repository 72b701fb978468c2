"""A resilience scenario: the real refresh handler against the CTM emulator and moto, a source
that delivers the work queue and the tenancy queue as Lambda's mappings do (redeliveries
included), captured logs, and the secrets that must not leak."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.integration.refresh_world import RefreshWorld
from tests.resilience.promises import CapturedLogs, assert_promises_kept
from tests.resilience.work_queue_source import WorkQueueSource


@dataclass
class Scenario:
    world: RefreshWorld
    logs: CapturedLogs
    secrets: tuple[str, ...]
    source: WorkQueueSource = field(init=False)

    def __post_init__(self) -> None:
        self.source = WorkQueueSource(self.world)

    @property
    def ctm(self) -> Any:
        return self.world.ctm

    def key_ids(self, count: int | None = None) -> list[str]:
        """CCKM ids of the emulator's keys, in list order (interleaved over tenancies)."""
        ids = [key["id"] for key in self.ctm.keys]
        return ids[:count] if count is not None else ids

    def promises_kept(
        self, runs: Mapping[str, Collection[str]], *, written_once: bool = True
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """Assert the three promises for ``runs`` (run id -> requested key ids)."""
        return assert_promises_kept(
            self.world, self.source, self.logs, self.secrets, runs, written_once=written_once
        )
