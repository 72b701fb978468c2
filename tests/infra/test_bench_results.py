"""bench/RESULTS.md's marked parts: what writes a part replaces it, every other run keeps it."""

from __future__ import annotations

from bench.results import COLD_START, NOTES, SCALE, SIMULATION, SOAK, Part


def marked(part: Part, *lines: str) -> str:
    return "\n".join([part.begin, *lines, part.end])


OLD = "\n\n".join(
    [
        "# Benchmark results\n\nold figures",
        marked(SCALE, "old scale"),
        marked(SIMULATION, "the night"),
        marked(SOAK, "the schedules"),
        marked(NOTES, "written by hand"),
    ]
)


def test_make_bench_keeps_the_simulation_the_soak_and_the_notes_and_ends_with_the_notes() -> None:
    new = "# Benchmark results\n\nnew figures\n\n" + marked(SCALE, "new scale") + "\n"

    for part in (SIMULATION, SOAK, NOTES):  # as bench/__main__.py does
        new = part.kept(OLD, new)

    assert SIMULATION.of(new) == SIMULATION.of(OLD)
    assert SOAK.of(new) == SOAK.of(OLD) is not None
    assert NOTES.of(new) == NOTES.of(OLD)
    assert new.rstrip().endswith(NOTES.end)
    assert "old scale" not in new


def test_a_part_is_replaced_where_it_stands_and_nothing_else_changes() -> None:
    new = SCALE.replaced(OLD, marked(SCALE, "new scale"))

    assert new == OLD.replace("old scale", "new scale")


def test_a_part_the_file_lacks_goes_before_the_notes() -> None:
    new = COLD_START.replaced(OLD, marked(COLD_START, "imports"))

    assert new.index(COLD_START.end) < new.index(NOTES.begin)
    assert NOTES.of(new) == NOTES.of(OLD)


def test_a_part_is_found_by_its_name_whatever_its_marker_says_wrote_it() -> None:
    old = OLD.replace(NOTES.begin, "<!-- notes: written by hand; copy them back -->")

    found = NOTES.of(old)

    assert found is not None
    assert found.startswith("<!-- notes: written by hand; copy them back -->")
    assert found.endswith(f"written by hand\n{NOTES.end}")
