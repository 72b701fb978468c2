"""A resilience scenario: the real refresh handler against the CTM emulator and moto, a source
that delivers the work queue and the tenancy queue as Lambda's mappings do (redeliveries
included), captured logs, and the secrets that must not leak."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.integration.refresh_world import RefreshWorld
from tests.resilience.promises import (
    CapturedLogs,
    assert_counts_are_the_results,
    assert_no_secret_anywhere,
    assert_one_terminal_result_per_key,
    assert_promises_kept,
)
from tests.resilience.work_queue_source import WorkQueueSource

if TYPE_CHECKING:
    from tests.resilience.lambda_kills import Containers


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


def finished_once(
    scenario: Scenario, containers: Containers, run_id: str, keys: Collection[str]
) -> dict[str, dict[str, Any]]:
    """One terminal result per key, the run completed once with its results' counts, and no
    secret in the logs, the run's items or the messages. Returns the results."""
    results = assert_one_terminal_result_per_key(scenario.world, run_id, keys)
    assert_counts_are_the_results(scenario.world, run_id, results)
    assert_no_secret_anywhere(
        scenario.world,
        scenario.logs,
        scenario.secrets,
        run_ids=[run_id],
        messages=containers.events + containers.kills.sent,
    )
    return results
