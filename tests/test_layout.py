"""The house rules that code review keeps forgetting, checked from the code itself:
packages depend one way, and each DVC stage lists exactly the code it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.layout import ORDER, REPO, closure, package_edges


def find_cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    """A cycle in the directed graph, as the list of its nodes, or None."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({("a", "b"), ("b", "c"), ("c", "a")}) == ["a", "b", "c", "a"]
    assert find_cycle({("a", "b"), ("b", "c"), ("a", "c")}) is None


def test_the_package_graph_has_no_cycle() -> None:
    edges = package_edges()
    cycle = find_cycle(set(edges))
    where = {f"{a} -> {b}": files for (a, b), files in edges.items()}
    assert cycle is None, f"import cycle {' -> '.join(cycle or [])}: {where}"


def test_packages_import_only_packages_before_them() -> None:
    wrong = {
        f"{a} -> {b}": files for (a, b), files in package_edges().items() if ORDER[b] >= ORDER[a]
    }
    order = " -> ".join(sorted(ORDER, key=ORDER.__getitem__))
    assert not wrong, f"dependencies must run {order}; these go the other way: {wrong}"


def _stages() -> dict[str, dict[str, object]]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _code_deps(deps: list[str]) -> set[Path]:
    out: set[Path] = set()
    for dep in deps:
        path = REPO / dep
        if dep.startswith("${") or path.parts[len(REPO.parts)] not in ORDER:
            continue  # data and reports, not code
        out |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return out


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_each_stage_lists_exactly_the_code_it_imports(stage: str) -> None:
    spec = _stages()[stage]
    assert spec["cmd"] == f"modelyard {stage}", "stage = module = command"
    module = REPO / "pipelines" / "stages" / f"{stage}.py"
    needed = closure(module)
    listed = _code_deps(list(spec["deps"]))  # type: ignore[call-overload]
    rel = lambda paths: sorted(str(p.relative_to(REPO)) for p in paths)  # noqa: E731
    assert not needed - listed, f"dvc.yaml {stage}: add to deps {rel(needed - listed)}"
    assert not listed - needed, f"dvc.yaml {stage}: not imported, drop {rel(listed - needed)}"
