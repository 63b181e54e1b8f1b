"""The one outbound HTTP client (GitHub's API, the alert webhook, the model service in
simulate-traffic): httpx for the request, tenacity for retries, one place for the timeout
and the error messages.

Retries (exponential backoff) only where a retry cannot do a thing twice: the connection
was refused or could not be opened, or the server answered 502/503/504. Any other HTTP
error is final and raised as ``ExternalServiceError`` with the server's own words.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from tenacity import (
    RetryError,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from core.errors import ExternalServiceError

RETRY_STATUS = frozenset({502, 503, 504})
# Connections kept alive across requests: pass one as ``client`` to ``request_json``.
Session = httpx.Client


class _Retryable(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def redact(url: str) -> str:
    """The URL as an error message may show it: scheme, host and port only. Webhook URLs
    (Slack, Teams, ...) carry their secret in the path or the query."""
    parts = httpx.URL(url)
    shown = f"{parts.scheme}://{parts.host}" + (f":{parts.port}" if parts.port else "")
    return shown + ("/..." if parts.raw_path not in (b"", b"/") else "")


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Retryable | httpx.ConnectError | httpx.ConnectTimeout)


def request_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    accept: frozenset[int] = frozenset(),
    timeout: float = 15.0,
    attempts: int = 3,
    what: str = "",
    client: httpx.Client | None = None,
) -> tuple[int, Any]:
    """Send ``body`` as JSON (with HTTP basic ``auth`` if given); return (status,
    parsed reply or None). A caller that sends many requests passes its ``client``: one
    connection kept alive, not a new client (TLS context, pool, connection) per request.

    Raises ExternalServiceError naming ``what`` (else the URL) on an HTTP error other than
    the ``accept``-ed statuses (a caller that tells a 401 from an outage), an unreachable
    server after ``attempts`` tries, or a reply that is not JSON.
    """
    shown = redact(url)
    name = what or shown
    content = json.dumps(body, default=str).encode() if body is not None else None

    @retry(
        retry=retry_if_exception(_retryable),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=False,
    )
    def send() -> httpx.Response:
        response = (client or httpx).request(
            method,
            url,
            content=content,
            headers={"Content-Type": "application/json", **(headers or {})},
            auth=auth,
            timeout=timeout,
        )
        if response.status_code in RETRY_STATUS:
            raise _Retryable(response)
        return response

    try:
        response = send()
    except RetryError as exc:
        last = exc.last_attempt.exception()
        if isinstance(last, _Retryable):
            response = last.response
        else:
            raise ExternalServiceError(
                f"cannot reach {name} at {shown} after {attempts} tries: {last}"
            ) from last
    except httpx.HTTPError as exc:
        raise ExternalServiceError(f"cannot reach {name} at {shown}: {exc}") from exc
    if response.is_error and response.status_code not in accept:
        raise ExternalServiceError(
            f"{name} refused {method} {shown}: HTTP {response.status_code} {response.text[:300]!r}"
        )
    if not response.content.strip():
        return response.status_code, None
    try:
        return response.status_code, response.json()
    except ValueError as exc:
        if response.status_code in accept:
            return response.status_code, None
        raise ExternalServiceError(
            f"{name} answered {method} {shown} with something that is not JSON: "
            f"{response.text[:200]!r}"
        ) from exc


def is_up(url: str, *, timeout: float = 2.0) -> bool:
    """A readiness probe: whether GET ``url`` answers 200 now (one try, no retries)."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False
