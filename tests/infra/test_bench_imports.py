"""bench/'s modules import each other one way, and only public names of anything.

Read with ``ast`` (nothing is imported), lazy imports inside functions included: a cycle that
only a late import keeps from failing is still a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
OURS = ("bench", "cckm_refresh", "devkit")


def imports_of(path: Path) -> Iterator[tuple[str, str | None]]:
    """(module, name) for each name ``path`` imports; name None for ``import module``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield from ((node.module, alias.name) for alias in node.names)


def bench_modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted(BENCH.glob("*.py"))}


def bench_graph() -> dict[str, set[str]]:
    """Module -> the bench modules it imports (``from bench import x`` counts as x)."""
    modules = bench_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = set()
        for module, imported in imports_of(path):
            parts = module.split(".")
            if parts[0] != "bench":
                continue
            target = parts[1] if len(parts) > 1 else imported
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def a_cycle(graph: Mapping[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a path that returns to its start; [] when there is none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        for target in sorted(graph.get(node, ())):
            if found := visit(target, [*path, node]):
                return found
        done.add(node)
        return []

    for start in sorted(graph):
        if found := visit(start, []):
            return found
    return []


def test_a_cycle_is_found_where_there_is_one() -> None:
    assert a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert a_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_bench_modules_import_each_other_one_way() -> None:
    cycle = a_cycle(bench_graph())

    assert not cycle, "bench/ imports in a circle: " + " -> ".join(cycle)


def test_bench_imports_only_public_names_of_bench_the_package_and_devkit() -> None:
    private = [
        f"{path.relative_to(ROOT)}: from {module} import {name}"
        for path in bench_modules().values()
        for module, name in imports_of(path)
        if module.split(".")[0] in OURS
        and any(part.startswith("_") for part in [*module.split("."), name or ""])
    ]

    assert not private, "\n".join(private)
