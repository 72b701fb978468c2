"""``make bench``: run every benchmark, print the figures, rewrite ``bench/RESULTS.md``.

PYTHONPATH=layers/common:. .venv/bin/python -m bench [--no-write]

The simulation's section and the hand-written notes are kept as they are
(``python -m bench.simulation scale``, which ``make bench`` runs next, rewrites the first).
"""

from __future__ import annotations

import sys
import time

from bench import footprint, scale, throughput
from bench.figures import Figures
from bench.results import NOTES, RESULTS, SIMULATION, SOAK, render
from bench.world import ROOT, prepare_process


def main(argv: list[str]) -> int:
    """Run (1) throughput, (2) cold start, layer and memory, (3) costs, (4) scale; write
    RESULTS.md."""
    prepare_process()
    started = time.perf_counter()
    scenarios = throughput.run_all()
    imports = footprint.cold_start()
    layer = footprint.layer_size()
    memory = footprint.peak_memory()
    scaled = scale.run_all()
    figures = Figures(scenarios, imports, layer, memory, time.perf_counter() - started, scaled)
    text = render(figures)
    old = RESULTS.read_text(encoding="utf-8")
    for part in (SIMULATION, SOAK, NOTES):
        text = part.kept(old, text)
    if "--no-write" in argv:
        print(text)
    else:
        scale.plot(scaled)
        RESULTS.write_text(text, encoding="utf-8")
        print(f"bench: {figures.seconds:.0f} s; figures written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
