"""The GitHub REST API: the only module that talks to it (dispatches, PR comments).

Configuration comes from the environment (``core.settings``), in ``from_env`` only:
``GITHUB_REPOSITORY`` (owner/name) and ``GITHUB_TOKEN`` select GitHub;
``GITHUB_API_URL`` overrides https://api.github.com (tests point it at a local server
that records what it receives; GitHub itself cannot be reached from a test).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from core import http, settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GitHub:
    repository: str
    token: str
    api_url: str = "https://api.github.com"

    def dispatch(self, event: str, payload: dict[str, str]) -> str:
        """``repository_dispatch``: starts the workflows listening for ``event``."""
        self._call(
            "POST",
            f"/repos/{self.repository}/dispatches",
            {"event_type": event, "client_payload": payload},
        )
        log.info("dispatched %s to %s: %s", event, self.repository, payload)
        return f"github:{event}"

    def upsert_comment(self, pr: int, body: str, marker: str) -> str:
        """Create or update (found by ``marker``) this tool's comment on a pull request."""
        comments = self._call("GET", f"/repos/{self.repository}/issues/{pr}/comments?per_page=100")
        for comment in comments or []:
            if marker in comment.get("body", ""):
                self._call(
                    "PATCH",
                    f"/repos/{self.repository}/issues/comments/{comment['id']}",
                    {"body": body},
                )
                return "updated"
        self._call("POST", f"/repos/{self.repository}/issues/{pr}/comments", {"body": body})
        return "created"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
        return http.request_json(
            method,
            f"{self.api_url.rstrip('/')}{path}",
            body,
            headers=headers,
            what="GitHub (check GITHUB_TOKEN's permissions)",
        )[1]


def from_env() -> GitHub | None:
    """GitHub if GITHUB_REPOSITORY and GITHUB_TOKEN are set, else None."""
    env = settings.current()
    if env.github_repository and env.github_token:
        return GitHub(
            env.github_repository, env.github_token.get_secret_value(), env.github_api_url
        )
    return None
