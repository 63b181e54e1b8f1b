"""Deploy triggers: GitHub ``repository_dispatch`` when configured, else a local build.

GitHub is configured from the environment (see ``core.github``). The local build is
handed in by the caller (the CLI passes ``services.build``): the registry never imports
the serving code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from core import github
from core.github import GitHub

log = logging.getLogger(__name__)

PROMOTED = "model-promoted"


class Dispatcher(Protocol):
    def deploy(self, name: str, version: str) -> str: ...


@dataclass(frozen=True)
class GitHubDispatch:
    github: GitHub

    def deploy(self, name: str, version: str) -> str:
        return self.github.dispatch(PROMOTED, {"name": name, "version": version})


@dataclass(frozen=True)
class LocalBuild:
    """No GitHub configured: build here what the deploy workflow would build first.

    ``build`` takes ``NAME/VERSION`` and returns what it built (a Bento tag)."""

    build: Callable[[str], str]

    def deploy(self, name: str, version: str) -> str:
        built = self.build(f"{name}/{version}")
        log.info("built %s locally for %s v%s", built, name, version)
        return f"local:{built}"


def from_env(local_build: Callable[[str], str]) -> Dispatcher:
    """GitHub when GITHUB_REPOSITORY and GITHUB_TOKEN are set, else ``local_build``."""
    gh = github.from_env()
    return GitHubDispatch(gh) if gh else LocalBuild(local_build)
