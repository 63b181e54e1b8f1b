"""The project's import graph, read from the code (AST, every import statement, including
the lazy ones inside functions): which project module imports which."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The dependency order: a package may import only packages before it (and itself).
ORDER: dict[str, int] = {
    "core": 0,
    "registry": 1,
    "pipelines": 2,
    "services": 2,
    "monitoring": 3,
    "modelyard": 4,
}


def module_file(name: str) -> Path | None:
    """The file of project module ``name`` (``a.b`` -> a/b.py or a/b/__init__.py)."""
    if name.split(".")[0] not in ORDER:
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _has_code(init: Path) -> bool:
    body = ast.parse(init.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def _with_parents(name: str) -> set[Path]:
    """The module's file plus its packages' __init__.py files that hold code."""
    out: set[Path] = set()
    parts = name.split(".")
    for i in range(1, len(parts)):
        init = module_file(".".join(parts[:i]))
        if init is not None and init.name == "__init__.py" and _has_code(init):
            out.add(init)
    found = module_file(name)
    if found is not None and (found.name != "__init__.py" or _has_code(found)):
        out.add(found)
    return out


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def imports(path: Path) -> frozenset[Path]:
    """The project files that ``path`` imports directly (anywhere in it)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (
        _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    )
    out: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out |= _with_parents(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            out |= _with_parents(mod)
            for alias in node.names:  # `from pkg import submodule`
                sub = f"{mod}.{alias.name}"
                if module_file(sub) is not None:
                    out |= _with_parents(sub)
    out.discard(path)
    return frozenset(out)


def closure(path: Path) -> set[Path]:
    """``path`` and every project file it imports, transitively."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(imports(current) - seen)
    return seen


def project_files() -> list[Path]:
    return sorted(p for pkg in ORDER for p in (REPO / pkg).rglob("*.py"))


def package_of(path: Path) -> str:
    return path.relative_to(REPO).parts[0]


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> the importing files, for every edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in project_files():
        for dep in imports(path):
            a, b = package_of(path), package_of(dep)
            if a != b:
                edges.setdefault((a, b), []).append(str(path.relative_to(REPO)))
    return edges
