"""The front door and the manual: the README fits on a page and points into docs/, the
manual builds with MkDocs --strict (a page left out of the nav, a broken link between
pages or a missing anchor fails it), and every relative link of both resolves to a file
of the repository (and, into a page, to one of its headings)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """A heading's anchor as MkDocs (Python-Markdown's toc) and GitHub make it."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", text).strip("-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


def broken_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not ours to check here
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_slug_is_the_one_mkdocs_and_github_make() -> None:
    assert slug("Measure: workers per pod") == "measure-workers-per-pod"
    assert slug("Deploy (image, registry, Kubernetes)") == "deploy-image-registry-kubernetes"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    assert not broken_links(page), f"{page.name}: {broken_links(page)}"


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    (tmp_path / "q.md").write_text("# Q\n\n## A part\n")
    page.write_text("[a](q.md#a-part) [b](q.md#no-part) [c](gone.md) [d](https://x.org/y)")
    assert broken_links(page) == [
        "q.md#no-part: no heading #no-part in q.md",
        "gone.md: no such file",
    ]


def test_the_readme_is_a_front_door() -> None:
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines < 250, f"README.md has {lines} lines: move the detail into docs/"
    text = (REPO / "README.md").read_text()
    for page in ("docs/index.md", "docs/security.md", "docs/testing.md"):
        assert f"]({page}" in text, page


@pytest.mark.usefixtures("e2e_tier")
def test_the_manual_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    built = {
        p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("*.html")
    }
    assert {"index.html", "security/index.html", "team/index.html"} <= built
    assert (tmp_path / "site/img/gateway.png").is_file()  # the pictures come along
