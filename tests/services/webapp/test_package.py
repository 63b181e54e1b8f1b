"""The web app ships as its own Bento: what it imports is what its image installs, and
`modelyard webapp build` builds it with its templates and static files, without the model
service."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.conftest import REPO, modelyard

WEBAPP = REPO / "services" / "webapp"
# Installed in every Bento image by BentoML itself (its web framework and its metrics).
PROVIDED = {"bentoml", "starlette", "prometheus_client"}
# Files that run inside the web app's Bento (build.py runs in the build environment).
SHIPPED = [
    REPO / "services/client.py",
    *sorted(p for p in WEBAPP.glob("*.py") if p.name != "build.py"),
]


def _top_level_imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


def test_everything_the_web_app_imports_is_in_its_requirements() -> None:
    imported = set().union(*map(_top_level_imports, SHIPPED))
    third_party = imported - set(sys.stdlib_module_names) - {"services", "__future__"}
    assert "core" not in third_party, "the web app's Bento carries no core/"
    dists = packages_distributions()
    needed = {re.sub(r"[-_.]+", "-", dists[m][0]).lower() for m in third_party - PROVIDED}
    pinned = _pins(WEBAPP / "requirements.txt")
    assert needed - set(pinned) == set(), (
        f"imported but not in requirements.txt: {needed - set(pinned)}"
    )
    # Starlette parses the posted forms with python-multipart (not imported by name).
    assert "python-multipart" in pinned


def test_the_web_apps_pins_are_the_locked_versions() -> None:
    locked = _pins(REPO / "requirements.lock")
    for name, version in _pins(WEBAPP / "requirements.txt").items():
        assert locked.get(name) == version, (
            f"{name}=={version} but requirements.lock has {locked.get(name)}"
        )


def test_the_web_app_imports_nothing_of_the_model_service_or_training() -> None:
    for path in SHIPPED:
        tree = ast.parse(path.read_text())
        modules = {
            n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
        } | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        project = {
            m
            for m in modules
            if m.split(".")[0]
            in {"core", "registry", "pipelines", "monitoring", "modelyard", "services"}
        }
        allowed = {
            "services.client",
            "services.webapp",
            *(f"services.webapp.{p.stem}" for p in SHIPPED),
        }
        assert project <= allowed, f"{path.name} imports {project - allowed}"


@pytest.mark.slow
def test_webapp_build_makes_a_bento_with_the_pages_and_without_the_model_service(
    e2e_tier: None,
    tmp_path: Path,
) -> None:
    env = {"BENTOML_HOME": str(tmp_path / "bentoml")}
    first = modelyard(REPO, "webapp", "build", env=env)
    match = re.search(r"built Bento (modelyard-webapp:[0-9a-f]{12})", first.stdout)
    assert match, first.stdout
    tag = match[1]
    name, version = tag.split(":")
    src = tmp_path / "bentoml" / "bentos" / name / version / "src"
    for rel in (
        "services/client.py",
        "services/webapp/app.py",
        "services/webapp/templates/try.html",
        "services/webapp/static/draw.js",
        "services/webapp/static/style.css",
    ):
        assert (src / rel).is_file(), rel
    assert not (src / "services/service.py").exists()
    assert not (src / "core").exists()
    requirements = (
        tmp_path / "bentoml/bentos" / name / version / "env/python/requirements.txt"
    ).read_text()
    assert "jinja2==3.1.6" in requirements.lower()
    assert "python-multipart==0.0.34" in requirements
    again = modelyard(REPO, "webapp", "build", env=env)
    assert f"up to date: Bento {tag}" in again.stdout
