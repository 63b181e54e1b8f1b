"""The web app's settings, read from the environment in one place (``Settings.from_env``).

| variable | default | what |
|---|---|---|
| ``MODELYARD_API_URL`` | (required) | base URL of the model API, e.g. http://modelyard-api:3000 |
| ``MODELYARD_API_KEY`` | none | the key the web app sends; never reaches the browser |
| ``MODELYARD_WEBAPP_SECRET`` | random per process | signs CSRF tokens and prediction ids; set it when running several replicas |
| ``MODELYARD_WEBAPP_RATE`` | 60 | requests per minute per client (static files excluded) |
| ``MODELYARD_WEBAPP_BURST`` | 20 | requests a client may make at once before the rate applies |
| ``MODELYARD_WEBAPP_PROXY_HOPS`` | 0 | trusted proxies in front (the Ingress: 1): the client is then read from X-Forwarded-For |
| ``MODELYARD_WEBAPP_MAX_UPLOAD_BYTES`` | 2097152 | largest CSV accepted for batch scoring |
| ``MODELYARD_WEBAPP_MAX_ROWS`` | 10000 | most rows in one CSV |
| ``MODELYARD_WEBAPP_METADATA_TTL`` | 30 | seconds the model's metadata is cached (a new version shows up after this) |
| ``MODELYARD_WEBAPP_API_TIMEOUT`` | 10 | seconds per API call |
| ``MODELYARD_WEBAPP_API_TRIES`` | 3 | tries per API call (connection errors, 502/503) |
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    api_url: str
    api_key: str | None = None
    secret: bytes = b""
    rate_per_minute: float = 60.0
    burst: int = 20
    proxy_hops: int = 0
    max_upload_bytes: int = 2 * 1024 * 1024
    max_rows: int = 10_000
    metadata_ttl: float = 30.0
    api_timeout: float = 10.0
    api_tries: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        url = env.get("MODELYARD_API_URL", "").strip()
        if not url.startswith(("http://", "https://")):
            raise SettingsError(
                f"MODELYARD_API_URL must be the model API's base URL (http://HOST:PORT), got {url!r}"
            )
        secret = env.get("MODELYARD_WEBAPP_SECRET", "")
        if not secret:
            log.warning(
                "MODELYARD_WEBAPP_SECRET is not set: using a random one, so forms stop working "
                "across restarts and replicas"
            )
        return cls(
            api_url=url,
            api_key=env.get("MODELYARD_API_KEY") or None,
            secret=secret.encode() if secret else secrets.token_bytes(32),
            rate_per_minute=_number(env, "MODELYARD_WEBAPP_RATE", 60.0),
            burst=int(_number(env, "MODELYARD_WEBAPP_BURST", 20)),
            proxy_hops=int(_number(env, "MODELYARD_WEBAPP_PROXY_HOPS", 0)),
            max_upload_bytes=int(
                _number(env, "MODELYARD_WEBAPP_MAX_UPLOAD_BYTES", 2 * 1024 * 1024)
            ),
            max_rows=int(_number(env, "MODELYARD_WEBAPP_MAX_ROWS", 10_000)),
            metadata_ttl=_number(env, "MODELYARD_WEBAPP_METADATA_TTL", 30.0),
            api_timeout=_number(env, "MODELYARD_WEBAPP_API_TIMEOUT", 10.0),
            api_tries=int(_number(env, "MODELYARD_WEBAPP_API_TRIES", 3)),
        )


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise SettingsError(f"{name} must not be negative, got {raw!r}")
    return value
