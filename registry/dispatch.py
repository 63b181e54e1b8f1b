"""Deploy triggers: GitHub ``repository_dispatch`` when configured, else a local build.

GitHub is configured from the environment (see ``pipelines.github``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from pipelines import github
from pipelines.github import GitHub

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
    """No GitHub configured: build the Bento here (what the deploy workflow would do first)."""

    tracking_uri: str

    def deploy(self, name: str, version: str) -> str:
        from registry.client import Registry
        from services import build

        built = build.build(f"{name}/{version}", Registry(self.tracking_uri))
        log.info("built %s locally for %s v%s", built.bento_tag, name, version)
        return f"local:{built.bento_tag}"


def from_env(tracking_uri: str) -> Dispatcher:
    gh = github.from_env()
    return GitHubDispatch(gh) if gh else LocalBuild(tracking_uri)
