"""What the refresh path reads and writes the table with (``run.ports.RunTable``)."""

from __future__ import annotations

from cckm_refresh.table.results import ResultLog
from cckm_refresh.table.runs import RunBook


class ResultStore(RunBook, ResultLog):
    """Runs and chunks (``RunBook``), outcomes and latest states (``ResultLog``)."""
