"""Deploy triggers: GitHub ``repository_dispatch`` when configured, else a local build.

Configuration comes from the environment, read here only:
``GITHUB_REPOSITORY`` (owner/name) and ``GITHUB_TOKEN`` select GitHub;
``GITHUB_API_URL`` overrides https://api.github.com (tests point it at a local server).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Protocol

from pipelines.errors import RegistryError

log = logging.getLogger(__name__)

PROMOTED = "model-promoted"


class Dispatcher(Protocol):
    def deploy(self, name: str, version: str) -> str: ...


@dataclass(frozen=True)
class GitHub:
    repository: str
    token: str
    api_url: str = "https://api.github.com"

    def deploy(self, name: str, version: str) -> str:
        return self.send(PROMOTED, {"name": name, "version": version})

    def send(self, event: str, payload: dict[str, str]) -> str:
        body = json.dumps({"event_type": event, "client_payload": payload}).encode()
        req = urllib.request.Request(
            f"{self.api_url.rstrip('/')}/repos/{self.repository}/dispatches",
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            raise RegistryError(
                f"GitHub refused the {event} dispatch: HTTP {exc.code} {exc.read()[:200]!r}"
            ) from exc
        except OSError as exc:
            raise RegistryError(f"cannot reach GitHub at {self.api_url}: {exc}") from exc
        log.info("dispatched %s to %s (HTTP %s): %s", event, self.repository, status, payload)
        return f"github:{event}"


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
    repo, token = os.environ.get("GITHUB_REPOSITORY"), os.environ.get("GITHUB_TOKEN")
    if repo and token:
        return GitHub(repo, token, os.environ.get("GITHUB_API_URL", "https://api.github.com"))
    return LocalBuild(tracking_uri)
