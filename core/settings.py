"""Settings read from the environment: the one place that reads it (pydantic-settings).

Secrets and service addresses come from here, never from params.yaml. An empty variable
counts as unset. Read afresh on each call (``current()``), so a test or a workflow step
that changes the environment is seen; nothing is read at import time.

The model service is the one exception: it ships alone in the Bento and reads its own
variables (``MODELYARD_API_KEYS``, ``MODELYARD_LOG_DIR``, ...) in one typed place,
``services/config.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

GITHUB_API = "https://api.github.com"


class Settings(BaseSettings):
    """Every environment variable modelyard's commands read (the names are the aliases)."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=True, env_ignore_empty=True
    )

    mlflow_tracking_uri: str | None = Field(None, validation_alias="MLFLOW_TRACKING_URI")
    # Who this process is on a team server (basic-auth): a person, the CI trainer, the gate.
    mlflow_username: str | None = Field(None, validation_alias="MLFLOW_TRACKING_USERNAME")
    mlflow_password: SecretStr | None = Field(None, validation_alias="MLFLOW_TRACKING_PASSWORD")
    # `modelyard registry server`: the admin password the auth app creates the admin with.
    mlflow_admin_password: SecretStr | None = Field(
        None, validation_alias="MLFLOW_AUTH_ADMIN_PASSWORD"
    )
    # The review gate (team mode): its Ed25519 private key (the gate only), its own
    # database, where it listens. Everything else verifies with the public key.
    gate_key: SecretStr | None = Field(None, validation_alias="MODELYARD_GATE_KEY")
    gate_public_key: str | None = Field(None, validation_alias="MODELYARD_GATE_PUBLIC_KEY")
    # Public keys that still verify (comma-separated), while a rotation re-signs.
    gate_previous_keys: str | None = Field(None, validation_alias="MODELYARD_GATE_PREVIOUS_KEYS")
    # The HMAC keys approvals were signed with before Ed25519: only the gate reads them,
    # only so `registry resign` can move those approvals to the Ed25519 key.
    gate_legacy_hmac_keys: SecretStr | None = Field(
        None, validation_alias="MODELYARD_GATE_LEGACY_HMAC_KEYS"
    )
    gate_database_url: SecretStr | None = Field(
        None, validation_alias="MODELYARD_GATE_DATABASE_URL"
    )
    gate_url: str | None = Field(None, validation_alias="MODELYARD_GATE_URL")
    # Where the gate reads reviewed commits (a git URL or path) and their data (the DVC
    # remote): it scores candidates on the test rows the commit's dvc.lock names.
    gate_repo: str | None = Field(None, validation_alias="MODELYARD_GATE_REPO")
    gate_dvc_remote: str | None = Field(None, validation_alias="MODELYARD_GATE_DVC_REMOTE")
    gate_branch: str = Field("main", validation_alias="MODELYARD_GATE_BRANCH")
    github_repository: str | None = Field(None, validation_alias="GITHUB_REPOSITORY")
    github_token: SecretStr | None = Field(None, validation_alias="GITHUB_TOKEN")
    github_api_url: str = Field(GITHUB_API, validation_alias="GITHUB_API_URL")
    github_output: Path | None = Field(None, validation_alias="GITHUB_OUTPUT")
    github_actor: str | None = Field(None, validation_alias="GITHUB_ACTOR")
    user: str | None = Field(None, validation_alias="USER")
    webhook_secret: SecretStr | None = Field(None, validation_alias="MODELYARD_WEBHOOK_SECRET")
    log_dir: Path | None = Field(None, validation_alias="MODELYARD_LOG_DIR")
    alert_webhook_url: str | None = Field(None, validation_alias="MODELYARD_ALERT_WEBHOOK_URL")
    api_keys: str | None = Field(None, validation_alias="MODELYARD_API_KEYS")
    # Named keys with scopes and limits (`modelyard keys`; services/gateway.py reads it).
    api_key_file: Path | None = Field(None, validation_alias="MODELYARD_API_KEY_FILE")
    # `deploy apply --webapp-image`: the web application's replicas share it (form signing).
    webapp_secret: SecretStr | None = Field(None, validation_alias="MODELYARD_WEBAPP_SECRET")
    # The service's prediction-id key (services/ids.py): deploy puts it in the API's Secret.
    id_key: SecretStr | None = Field(None, validation_alias="MODELYARD_ID_KEY")
    dvc_remote_url: str | None = Field(None, validation_alias="DVC_REMOTE_URL")
    kube_config: SecretStr | None = Field(None, validation_alias="KUBE_CONFIG")
    # `deploy render|apply`: where the environment lives (deploy.yml: its variables).
    deploy_host: str | None = Field(None, validation_alias="MODELYARD_HOST")
    tls_issuer: str | None = Field(None, validation_alias="MODELYARD_TLS_ISSUER")
    storage_class: str | None = Field(None, validation_alias="MODELYARD_STORAGE_CLASS")

    @property
    def first_api_key(self) -> str | None:
        keys = [k.strip() for k in (self.api_keys or "").split(",") if k.strip()]
        return keys[0] if keys else None

    def mlflow_credentials(self) -> tuple[str, str] | None:
        """(username, password) for the MLflow server, if both are set."""
        if self.mlflow_username and self.mlflow_password:
            return self.mlflow_username, self.mlflow_password.get_secret_value()
        return None

    def actor(self, given: str | None = None) -> str:
        """Who runs a command, for an audit entry: given, else the CI actor, else $USER."""
        return given or self.github_actor or self.user or "unknown"


def current() -> Settings:
    """The environment as it is now."""
    return Settings()


def variable(name: str) -> str | None:
    """One variable whose name is data, not code (a team member's ``password_env``);
    empty counts as unset, as above."""
    return os.environ.get(name) or None
