"""What protects the web app: CSRF tokens, signed prediction ids, a per-client rate
limit, and security headers on every response.

- **CSRF**: a random token in an HttpOnly, SameSite=Strict cookie; every form carries
  HMAC(secret, token). A post is accepted only when the form's value matches the
  cookie's, so another site can neither read nor forge it (and a cookie planted from a
  sibling domain is useless without the secret). Browsers that say a request is
  cross-site (``Sec-Fetch-Site``) are refused outright.
- **Signed ids**: the feedback form carries the prediction id with its HMAC, so feedback
  through this app is only ever about a prediction this app showed.
- **Metrics**: every response counted by route and status; the route label is one of the
  app's routes or ``other``, so random paths cannot grow ``/metrics`` without bound
  (BentoML's own per-path metrics are off for this service).
- **Rate limit**: a token bucket per client (``burst`` at once, ``rate`` per minute after
  that); static files and ``/metrics`` are not counted. Over it: 429 with ``Retry-After``. The client is
  the peer address, or with N trusted proxies in front the address the first of them saw
  (X-Forwarded-For, counted from the right, so a client cannot pick its own).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_COOKIE = "modelyard_csrf"
CSRF_FIELD = "csrf"
HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def sign(secret: bytes, value: str) -> str:
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()


def new_csrf_cookie() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(
    secret: bytes, cookie: str | None, submitted: str | None, fetch_site: str | None
) -> bool:
    """Whether a posted form comes from a page this app served to this browser."""
    if fetch_site == "cross-site":
        return False
    if not cookie or not submitted:
        return False
    return hmac.compare_digest(sign(secret, cookie), submitted)


def signed_ok(secret: bytes, value: str, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, value), signature)


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets per client key; remembers at most ``max_clients`` (least recently
    seen forgotten first: a forgotten client simply starts with a full bucket)."""

    def __init__(
        self,
        per_minute: float,
        burst: int,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1, burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """0 if the request may go ahead, else the seconds until it may."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate if self.rate > 0 else math.inf


def client_key(scope: Scope, proxy_hops: int) -> str:
    peer = scope.get("client")
    address = peer[0] if peer else "unknown"
    if proxy_hops <= 0:
        return str(address)
    forwarded = Headers(scope=scope).get("x-forwarded-for", "")
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    # The last proxy appended what it saw; with N proxies the client is N from the right.
    return hops[-proxy_hops] if len(hops) >= proxy_hops else str(address)


@cache
def counters() -> tuple[Any, Any]:
    """(requests by route and status, model API failures by kind). Created on first use,
    in the worker, after BentoML set PROMETHEUS_MULTIPROC_DIR."""
    from prometheus_client import Counter

    requests = Counter(
        "modelyard_webapp_requests",
        'Web app responses by route and status (unknown paths: route="other")',
        labelnames=["route", "status"],
    )
    api_errors = Counter(
        "modelyard_webapp_api_errors",
        "Model API calls that failed, by kind (unavailable, unauthorized, refused, bad_response)",
        labelnames=["kind"],
    )
    return requests, api_errors


class Guard:
    """ASGI middleware: the rate limit (a 429 page from ``too_many``) and security headers.

    ``limits`` gives the limiter and the number of trusted proxies; it is called per
    request because the app reads its settings when it starts, after this is built."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: Callable[[], tuple[RateLimiter, int] | None],
        too_many: Callable[[Scope, float], ASGIApp],
        routes: frozenset[str],
        exempt: tuple[str, ...] = ("/static/",),
    ) -> None:
        self.app = app
        self.limits = limits
        self.too_many = too_many
        self.routes = routes
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        static = path.startswith(self.exempt)
        headers = [
            (k.encode(), v.encode())
            for k, v in HEADERS.items()
            if not (static and k == "cache-control")
        ]

        route = "/static" if static else (path if path in self.routes else "other")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                counters()[0].labels(route=route, status=str(message["status"])).inc()
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in headers if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        # Static files and Prometheus' scrapes do not count against a client's rate.
        limits = None if static or path == "/metrics" else self.limits()
        if limits is not None:
            limiter, hops = limits
            wait = limiter.take(client_key(scope, hops))
            if wait > 0:
                await self.too_many(scope, wait)(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)
