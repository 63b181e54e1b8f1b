"""JSON over HTTP for the few outbound calls (GitHub's API, the alert webhook, the service
in simulate-traffic): one place for the request, the timeout and the error messages."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from pipelines.errors import ExternalServiceError


def request_json(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
                 timeout: float = 15, what: str = "") -> tuple[int, Any]:  # fmt: skip
    """Send ``body`` as JSON; return (status, parsed reply or None). Raises
    ExternalServiceError naming ``what`` on an HTTP error or a connection failure."""
    data = json.dumps(body, default=str).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    name = what or url
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw.strip() else None
    except urllib.error.HTTPError as exc:
        raise ExternalServiceError(
            f"{name} refused {method} {url}: HTTP {exc.code} {exc.read()[:300]!r}"
        ) from exc
    except OSError as exc:
        raise ExternalServiceError(f"cannot reach {name} at {url}: {exc}") from exc
