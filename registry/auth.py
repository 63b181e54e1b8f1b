"""MLflow's basic-auth app over REST: who a login is, users, and per-user grants.

The only module that speaks the auth app's endpoints (``/api/2.0/mlflow/users/...`` and
the 3.x grant API ``/api/3.0/mlflow/users/permissions/...``). Credentials are passed in
explicitly: `users apply` uses the admin's, the review gate checks a reviewer's own.

Absence is not failure here either: only ``RESOURCE_DOES_NOT_EXIST`` means "no such
user"; wrong credentials are ``BadCredentials``; anything else (403 for a non-admin, a
5xx, an unreachable server) raises ``RegistryError`` naming the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from core import http
from core.errors import ExternalServiceError, RegistryError

PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


class BadCredentials(RegistryError):
    """The MLflow server did not accept a username/password (HTTP 401)."""


@dataclass(frozen=True)
class User:
    username: str
    is_admin: bool


@dataclass(frozen=True)
class Grant:
    """One direct grant: ``permission`` on the experiment id or registered model name."""

    resource_type: str  # "experiment" | "registered_model"
    resource_id: str
    permission: str


class AuthAPI:
    def __init__(self, uri: str, credentials: tuple[str, str]) -> None:
        self.uri = uri.rstrip("/")
        self.credentials = credentials

    def current_user(self) -> User:
        """Who these credentials belong to, as the server says (BadCredentials if none)."""
        body = self._call("GET", "/api/2.0/mlflow/users/current", what="check the login")
        user = body["user"]
        return User(str(user["username"]), bool(user.get("is_admin")))

    def get_user(self, username: str) -> User | None:
        status, body = self._send(
            "GET",
            f"/api/2.0/mlflow/users/get?username={quote(username)}",
            what=f"read user {username}",
        )
        if status == 404 and (body or {}).get("error_code") == "RESOURCE_DOES_NOT_EXIST":
            return None
        self._raise_for(status, body, f"read user {username}")
        return User(str(body["user"]["username"]), bool(body["user"].get("is_admin")))

    def create_user(self, username: str, password: str) -> None:
        self._call(
            "POST",
            "/api/2.0/mlflow/users/create",
            {"username": username, "password": password},
            what=f"create user {username}",
        )

    def grants(self, username: str) -> list[Grant]:
        """The user's direct grants (its own ``__user_<id>__`` role), not inherited ones."""
        body = self._call(
            "GET",
            f"/api/3.0/mlflow/users/permissions/list?username={quote(username)}",
            what=f"list the grants of {username}",
        )
        return [
            Grant(str(p["resource_type"]), str(p["resource_pattern"]), str(p["permission"]))
            for p in body.get("permissions", [])
            if str(p.get("role_name", "")).startswith("__user_")
        ]

    def grant(self, username: str, grant: Grant) -> None:
        body = {
            "username": username,
            "resource_type": grant.resource_type,
            "resource_id": grant.resource_id,
            "permission": grant.permission,
        }
        what = f"grant {grant.permission} on {grant.resource_type} {grant.resource_id}"
        self._call(
            "POST", "/api/3.0/mlflow/users/permissions/grant", body, what=f"{what} to {username}"
        )

    def revoke(self, username: str, resource_type: str, resource_id: str) -> None:
        self._call(
            "POST",
            "/api/3.0/mlflow/users/permissions/revoke",
            {"username": username, "resource_type": resource_type, "resource_id": resource_id},
            what=f"revoke {username}'s grant on {resource_type} {resource_id}",
        )

    # -- helpers -------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, *, what: str) -> Any:
        status, reply = self._send(method, path, body, what=what)
        self._raise_for(status, reply, what)
        return reply or {}

    def _send(self, method: str, path: str, body: Any = None, *, what: str) -> tuple[int, Any]:
        try:
            return http.request_json(
                method,
                f"{self.uri}{path}",
                body,
                auth=self.credentials,
                accept=frozenset(range(400, 500)),
                attempts=2,
                what=f"the MLflow server ({what})",
            )
        except ExternalServiceError as exc:
            raise RegistryError(f"cannot {what} on {self.uri}: {exc}") from exc

    def _raise_for(self, status: int, body: Any, what: str) -> None:
        if status < 400:
            return
        if status == 401:
            raise BadCredentials(
                f"{self.uri} did not accept the credentials of {self.credentials[0]!r} "
                f"(HTTP 401) to {what}: check MLFLOW_TRACKING_USERNAME/PASSWORD"
            )
        detail = (body or {}).get("message") if isinstance(body, dict) else None
        hint = " (needs an admin account)" if status == 403 else ""
        raise RegistryError(
            f"cannot {what} on {self.uri}: HTTP {status} {detail or ''}{hint}".rstrip()
        )
