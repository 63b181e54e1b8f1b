"""The house rules that code review keeps forgetting, checked from the code itself:
packages depend one way, and each DVC stage lists exactly the code it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.layout import ORDER, REPO, closure, package_edges, project_files


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


def tag_literals(path: Path, keys: set[str]) -> list[str]:
    """Where ``path`` spells one of ``keys`` as a plain string constant (line: key)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value}")
    return found


def test_every_tag_key_is_spelled_once_in_core_tagkeys() -> None:
    """A tag key written as a literal in two modules is a contract nobody owns
    (`deployed.image` was defined twice): every product module imports it from
    core/tagkeys.py."""
    from core import tagkeys

    keys = {member.value for group in tagkeys.ALL for member in group}
    assert {"git.commit", "deployed.image", "approval.signature"} <= keys
    spelled = [
        hit
        for path in project_files()
        if path != REPO / "core/tagkeys.py"
        for hit in tag_literals(path, keys)
    ]
    assert not spelled, f"import these from core.tagkeys: {spelled}"
