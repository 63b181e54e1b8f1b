"""The service's edge: what happens to a request before and around the routes.

BentoML and uvicorn leave four gaps that this module closes:

- **Bodies are read whole.** ``read_body`` streams the body and stops at the limit,
  whether the client sent a Content-Length or a chunked body, so a 200 MB upload costs
  the worker at most the limit. The 413 closes the connection: nothing more is read.
- **Unknown paths are plain text, redirects echo the Host header.** ``fallback`` answers
  every path no route claims: 405 (with ``Allow``) for a known path and the wrong
  method, else 404, both JSON, never a redirect.
- **Metrics by raw path.** BentoML's traffic metrics label each request with its path,
  so random paths grow /metrics without bound; the service turns them off and
  ``RequestCounter`` counts by route, with every unknown path as ``other``.
- **No header-read timeout.** ``limit_header_time`` makes uvicorn close a connection
  whose request line and headers have not all arrived within N seconds (slowloris).

Only the stdlib, Starlette and (lazily) prometheus_client and uvicorn, which BentoML
runs on: this module ships in the Bento.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.schema import RequestError

log = logging.getLogger("modelyard.service")


def error_response(err: RequestError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    if err.retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(err.retry_after)}
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


# BentoML answers a request still running after its traffic timeout (10 s) with its own 504
# (a 5xx for a client's slow body, outside our JSON shape and our counters): the body gets a
# deadline of its own, well inside that, and a slow one is the client's 408.
BODY_TIMEOUT_SECONDS = 8.0


async def read_body(
    request: Request, limit: int, *, timeout: float = BODY_TIMEOUT_SECONDS
) -> bytes:
    """The whole body, or RequestError(413) as soon as more than ``limit`` bytes arrived
    (at once when Content-Length announces more), or RequestError(408) when it has not
    all arrived ``timeout`` seconds after the headers. Never holds more than ``limit``
    bytes plus one chunk."""
    try:
        return await asyncio.wait_for(_read_body(request, limit), timeout)
    except TimeoutError:
        raise RequestError(
            408, "body", f"the request body did not arrive within {timeout:g} s; send it at once"
        ) from None


def check_encoding(headers: Any) -> None:
    """Only plain bodies: a gzip (or any coded) body would otherwise be read as plain JSON
    and refused for the wrong reason; compressed sizes would also dodge the body limit.
    415 names what to send instead."""
    coded = headers.get("content-encoding", "").strip().lower()
    if coded not in ("", "identity"):
        raise RequestError(
            415, "content-encoding", f"{coded} bodies are not accepted; send the JSON uncompressed"
        )
    transfer = [c.strip().lower() for c in headers.get("transfer-encoding", "").split(",")]
    other = [c for c in transfer if c and c not in ("chunked", "identity")]
    if other:
        raise RequestError(
            415,
            "transfer-encoding",
            f"{', '.join(other)} transfer coding is not accepted; send the JSON uncompressed",
        )


async def _read_body(request: Request, limit: int) -> bytes:
    check_encoding(request.headers)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body", f"{declared} bytes; at most {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, "body", f"more than {limit} bytes; at most {limit}")
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "body", "the client closed the connection mid-body") from None
    return b"".join(chunks)


def refuse(err: RequestError) -> JSONResponse:
    """The JSON answer to a refused request. A 413 or 408 also closes the connection, so
    the rest of an oversized or late body is never read."""
    return error_response(err, {"Connection": "close"} if err.status in (408, 413) else None)


def fallback(routes: Mapping[str, frozenset[str]]) -> Callable[[Request], Any]:
    """The endpoint for every path no route claims. ``routes``: path -> allowed methods."""

    async def endpoint(request: Request) -> Response:
        allowed = routes.get(request.url.path)
        if allowed is None:
            return error_response(RequestError(404, "path", "no such route; see /docs.json"))
        methods = sorted(allowed | ({"HEAD"} if "GET" in allowed else set()))
        err = RequestError(405, "method", f"{request.method} not allowed; use {', '.join(methods)}")
        return error_response(err, {"Allow": ", ".join(methods)})

    return endpoint


@cache
def _request_counter() -> Any:
    # Created on first use, in the worker, after it set PROMETHEUS_MULTIPROC_DIR.
    from prometheus_client import Counter

    return Counter(
        "modelyard_http_requests",
        'HTTP requests by route and status (every unknown path is route="other")',
        labelnames=["route", "status"],
    )


class RequestCounter:
    """ASGI middleware: count every response by route and status. The route label is the
    request path when it is one of ``routes``, else ``other``: its values are bounded."""

    def __init__(self, app: ASGIApp, routes: frozenset[str]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                _request_counter().labels(route=route, status=str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


# -- header-read timeout (uvicorn) -----------------------------------------------------------

_TIMER = "_modelyard_header_timer"


def limit_header_time(seconds: float) -> None:
    """Make uvicorn close a connection when a request's line and headers have not all
    arrived ``seconds`` after the connection opened or the previous response ended.

    uvicorn has a keep-alive timeout but none for reading headers: any bytes, however
    slow, reset it, so a client trickling a header byte at a time holds a connection
    forever. This wraps both of uvicorn's HTTP/1.1 protocols (httptools and h11; the
    container may have either). A request whose headers are complete is never cut
    off here (the service's traffic timeout covers it). Idempotent.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    classes: list[type[Any]] = [H11Protocol]
    if importlib.util.find_spec("httptools") is not None:  # else uvicorn uses h11 only
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        classes.append(HttpToolsProtocol)
    for cls in classes:
        if not getattr(cls, "_modelyard_header_timeout", None):
            _wrap(cls)
        cls._modelyard_header_timeout = seconds


def _wrap(cls: Any) -> None:
    made, response_done, lost = cls.connection_made, cls.on_response_complete, cls.connection_lost

    def connection_made(self: Any, transport: asyncio.Transport) -> None:
        made(self, transport)
        _arm(self)

    def on_response_complete(self: Any) -> None:
        response_done(self)
        _arm(self)  # the next request's headers are due within the limit too

    def connection_lost(self: Any, exc: Exception | None) -> None:
        _disarm(self)
        lost(self, exc)

    cls.connection_made = connection_made
    cls.on_response_complete = on_response_complete
    cls.connection_lost = connection_lost


def _arm(proto: Any) -> None:
    _disarm(proto)
    if proto.transport.is_closing():
        return
    loop = asyncio.get_running_loop()
    setattr(proto, _TIMER, loop.call_later(type(proto)._modelyard_header_timeout, _expire, proto))


def _disarm(proto: Any) -> None:
    timer = getattr(proto, _TIMER, None)
    if timer is not None:
        timer.cancel()
        setattr(proto, _TIMER, None)


def _expire(proto: Any) -> None:
    setattr(proto, _TIMER, None)
    cycle = proto.cycle
    if cycle is not None and not cycle.response_complete:
        return  # headers complete, the request is being served
    if not proto.transport.is_closing():
        log.info("closing a connection whose request headers did not arrive in time")
        proto.transport.close()
