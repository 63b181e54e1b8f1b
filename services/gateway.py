"""The API gateway inside the service: named keys with scopes, rate limits, daily quotas,
and load shedding (seed, section 3.2.3: unified management, monitoring and protection).

**Keys.** ``modelyard keys create NAME`` writes a key file (``MODELYARD_API_KEY_FILE``):
per key its name, the sha256 of the key (never the key: it is shown once, at creation),
its scopes (``predict``, ``feedback``, ``metadata``), an optional rate (a token bucket:
``50/s``, ``3000/min``, with a burst) and an optional daily quota (``100000/day``, UTC
days). The service reads the file at start and again when it changes (checked at most
once a second, on the request path: a Kubernetes Secret mounted as a folder updates in
place), so ``keys revoke`` takes effect without a restart. A file that turns unreadable
keeps the keys it last read, with an error logged. ``MODELYARD_API_KEYS`` keeps working:
each of its keys is named ``env-1``, ``env-2``, ... with every scope and no limit.

**Limits hold per worker process** (the Kubernetes deployment runs two per pod, `modelyard
serve` one): N workers in all allow N times the rate and quota, and a restart starts the
day's count again. A cluster-wide limit is the Ingress's
(the overlays set NGINX's per-client rate limit); this one is per key, which no Ingress
knows. A refused request is a 403 (scope) or a 429 with ``Retry-After`` (rate: when a
token is back; quota: the next UTC midnight), in the API's JSON error shape, and counted
by key name and outcome (``modelyard_api_key_requests_total``), never by the key itself.

**Load shedding.** ``Load`` counts the requests in flight in this worker; past
``MODELYARD_MAX_INFLIGHT`` a request is answered 503 with ``Retry-After`` at once, before
its body is read, instead of joining a queue whose wait only grows, and ``/readyz`` (answered by whichever worker takes the probe) says
"not ready" while that worker is at its bound or shed within the last second, so
Kubernetes routes to other pods.

Only the stdlib (and prometheus_client, lazily): this module ships in the Bento.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from services.schema import RequestError

log = logging.getLogger("modelyard.service")

SCOPES = ("predict", "feedback", "metadata")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
KEY_PREFIX = "myk_"
FILE_VERSION = 1
RELOAD_EVERY_SECONDS = 1.0  # how often the key file is looked at for a change
SHED_RETRY_AFTER_SECONDS = 1
UNREADY_AFTER_SHED_SECONDS = 1.0  # /readyz stays "not ready" this long after a shed
# benchmarks/gateway.py: sheds nothing at 0.75x load and keeps p99 under 0.1 s at 2x; a
# closed loop of 16 connections (wrk -c16) is never shed. 4 or 8: lower latency, earlier
# shedding of bursts.
DEFAULT_MAX_INFLIGHT = 16
DAY = 86_400
UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


class KeyFileError(ValueError):
    """The key file, or a value for it, is not usable; the message says what to fix."""


# -- rates and quotas ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """A token bucket: ``per_second`` tokens a second, at most ``burst`` saved up."""

    per_second: float
    burst: int
    text: str

    @classmethod
    def parse(cls, text: str, *, burst: int | None = None) -> Rate:
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*", text.lower())
        if found is None or found[2] not in UNITS or float(found[1]) <= 0:
            raise KeyFileError(
                f"rate {text!r}: write a positive number of requests per s, min or h, "
                "for example 50/s or 3000/min"
            )
        per_second = float(found[1]) / UNITS[found[2]]
        size = burst if burst is not None else max(1, math.ceil(per_second))
        if size < 1:
            raise KeyFileError(f"burst {size}: at least 1 (the requests allowed at once)")
        return cls(per_second, size, text.strip())


def parse_quota(text: str) -> int:
    """``100000/day`` (or ``/d``) -> 100000."""
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(day|d)\s*", text.lower())
    if found is None or int(found[1]) < 1:
        raise KeyFileError(
            f"quota {text!r}: write a positive number of requests per day, for example 100000/day"
        )
    return int(found[1])


class Bucket:
    """One key's token bucket in this process. ``take`` answers 0.0 (allowed, a token
    spent) or the seconds until a token is back (refused, nothing spent)."""

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate.burst)
        self.at = now

    def take(self, now: float) -> float:
        self.tokens = min(
            float(self.rate.burst), self.tokens + (now - self.at) * self.rate.per_second
        )
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate.per_second


class DailyCount:
    """Requests a key made in this process on the current UTC day."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.day = -1
        self.used = 0

    def take(self, wall: float) -> float:
        """0.0 (counted) or the seconds until the next UTC day (refused)."""
        day = int(wall // DAY)
        if day != self.day:
            self.day, self.used = day, 0
        if self.used >= self.limit:
            return (day + 1) * DAY - wall
        self.used += 1
        return 0.0


# -- the key file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiKey:
    """One key as the file keeps it: everything but the key itself."""

    name: str
    sha256: str
    scopes: tuple[str, ...]
    created: str
    shown: str = ""  # the key's first characters, to tell keys apart in `keys list`
    rate: str | None = None
    burst: int | None = None
    quota: int | None = None
    revoked: str | None = None

    def limiter(self) -> Rate | None:
        return Rate.parse(self.rate, burst=self.burst) if self.rate else None


def digest(key: str | bytes) -> str:
    # Keys are 256 random bits: a plain sha256 cannot be reversed by guessing.
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def check_scopes(scopes: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise KeyFileError(
            f"scopes {', '.join(scopes) or '(none)'}: choose from {', '.join(SCOPES)}"
        )
    return tuple(s for s in SCOPES if s in scopes)


def read_keys(path: Path) -> list[ApiKey]:
    """Every key in the file, revoked ones too; KeyFileError says what is wrong."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: no such key file; create one with `modelyard keys create NAME`"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{path}: not a readable key file ({exc})") from None
    return parse_keys(text, source=str(path))


def parse_keys(text: str, *, source: str) -> list[ApiKey]:
    """The keys a key file's ``text`` holds (``source`` names it in errors)."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise KeyFileError(f"{source}: not a readable key file ({exc})") from None
    if not isinstance(raw, dict) or raw.get("version") != FILE_VERSION:
        raise KeyFileError(f"{source}: not a modelyard key file (version {FILE_VERSION})")
    keys: list[ApiKey] = []
    for i, entry in enumerate(raw.get("keys", [])):
        try:
            key = ApiKey(**{**entry, "scopes": tuple(entry["scopes"])})
            check_scopes(key.scopes)
            key.limiter()
            if not NAME.match(key.name) or not re.fullmatch(r"[0-9a-f]{64}", key.sha256):
                raise KeyFileError("bad name or sha256")
            if key.quota is not None and key.quota < 1:
                raise KeyFileError("quota below 1")
        except (TypeError, KeyError, KeyFileError) as exc:
            raise KeyFileError(f"{source}: key #{i + 1} is not valid ({exc})") from None
        keys.append(key)
    return keys


def write_keys(path: Path, keys: list[ApiKey]) -> None:
    """Replace the file at once (a reader sees the old file or the new one), owner-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"version": FILE_VERSION, "keys": [asdict(k) for k in keys]}, indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(body + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_key(
    path: Path,
    name: str,
    *,
    scopes: list[str],
    rate: str | None = None,
    burst: int | None = None,
    quota: str | None = None,
    now: Callable[[], float] = time.time,
) -> tuple[str, ApiKey]:
    """A new key, added to the file (made if missing): the key itself (to show once) and
    its record. A name in use by a key that is not revoked is refused."""
    if not NAME.match(name):
        raise KeyFileError(
            f"name {name!r}: lower-case letters, digits, '.', '_' and '-', at most 63, "
            "starting with a letter or digit (it becomes a metric label)"
        )
    keys = read_keys(path) if path.exists() else []
    if any(k.name == name and k.revoked is None for k in keys):
        raise KeyFileError(f"a key named {name!r} exists; revoke it first or choose another name")
    if rate is not None:
        Rate.parse(rate, burst=burst)
    elif burst is not None:
        raise KeyFileError("--burst needs --rate")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        name=name,
        sha256=digest(secret),
        scopes=check_scopes(scopes),
        created=_stamp(now()),
        shown=secret[: len(KEY_PREFIX) + 4],
        rate=rate.strip() if rate else None,
        burst=burst,
        quota=parse_quota(quota) if quota else None,
    )
    write_keys(path, [*keys, record])
    return secret, record


def revoke_key(path: Path, name: str, *, now: Callable[[], float] = time.time) -> ApiKey:
    keys = read_keys(path)
    live = [k for k in keys if k.name == name and k.revoked is None]
    if not live:
        known = sorted({k.name for k in keys if k.revoked is None})
        raise KeyFileError(
            f"no live key named {name!r} in {path}"
            + (f"; live keys: {', '.join(known)}" if known else "")
        )
    revoked = replace(live[0], revoked=_stamp(now()))
    write_keys(path, [revoked if k is live[0] else k for k in keys])
    return revoked


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# -- admission -------------------------------------------------------------------------------


@dataclass
class _Live:
    """A key the service accepts, with its limiters in this process."""

    key: ApiKey
    bucket: Bucket | None
    quota: DailyCount | None


@dataclass
class Gateway:
    """Who may call which route how often, in this process.

    ``env_keys``: MODELYARD_API_KEYS's keys; ``file``: MODELYARD_API_KEY_FILE. With
    neither, the API is open (``enabled`` False). ``clock`` (monotonic) drives the
    buckets and the reload checks, ``wall`` (epoch seconds) the UTC days.
    """

    env_keys: list[bytes]
    file: Path | None = None
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _by_digest: dict[str, _Live] = field(default_factory=dict)
    _seen: tuple[int, int, int] | None = None
    _checked: float = -math.inf
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.file is not None:
            self._load(read_keys(self.file), self._stat())  # unreadable at start: refused
        else:
            self._load([], None)

    @property
    def enabled(self) -> bool:
        return bool(self.env_keys) or self.file is not None

    def names(self) -> list[str]:
        return sorted(live.key.name for live in self._by_digest.values())

    def admit(self, headers: Any, scope: str) -> str | None:
        """The name of the key that may make this request (None when the API is open), or
        RequestError: 401 (missing, unknown, or two different keys), 403 (the key lacks
        ``scope``), 429 with ``retry_after`` (rate or daily quota)."""
        if not self.enabled:
            return None
        self._maybe_reload()
        supplied = credentials(headers)
        if not supplied:
            raise RequestError(401, "authorization", "missing API key")
        table = self._by_digest
        matched = [table.get(digest(c)) for c in supplied]
        if None in matched:
            raise RequestError(401, "authorization", "invalid API key")
        live = matched[0]
        assert live is not None
        if any(other is not live for other in matched):
            raise RequestError(
                401, "authorization", "the request carries two different API keys; send one"
            )
        name = live.key.name
        if scope not in live.key.scopes:
            _count(name, "scope")
            raise RequestError(
                403,
                "authorization",
                f"the key {name!r} may not call {scope} (its scopes: "
                f"{', '.join(live.key.scopes)}); ask for a key with the {scope} scope",
            )
        with self._lock:
            wait = live.bucket.take(self.clock()) if live.bucket else 0.0
            if wait:
                _count(name, "rate")
                raise RequestError(
                    429,
                    "rate",
                    f"the key {name!r} is limited to {live.key.rate} (burst "
                    f"{live.bucket.rate.burst if live.bucket else 0}) per worker; "
                    f"retry in {wait:.2f} s",
                    retry_after=max(1, math.ceil(wait)),
                )
            wait = live.quota.take(self.wall()) if live.quota else 0.0
            if wait:
                _count(name, "quota")
                raise RequestError(
                    429,
                    "quota",
                    f"the key {name!r} used its quota of {live.key.quota} requests today "
                    "(UTC, per worker); it starts again at 00:00 UTC",
                    retry_after=max(1, math.ceil(wait)),
                )
        _count(name, "accepted")
        return name

    # -- the key file ----------------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.file is not None
        try:
            st = self.file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _maybe_reload(self) -> None:
        if self.file is None:
            return
        now = self.clock()
        if now - self._checked < RELOAD_EVERY_SECONDS:
            return
        with self._lock:
            if now - self._checked < RELOAD_EVERY_SECONDS:
                return
            self._checked = now
            seen = self._stat()
            if seen == self._seen:
                return
            try:
                keys = read_keys(self.file)
            except KeyFileError as exc:
                log.error(
                    "API keys: keeping the %d keys read before: %s", len(self._by_digest), exc
                )
                self._seen = seen  # said once per change of the file
                return
            self._load(keys, seen)
            log.info("API keys: reloaded %s (%d live keys)", self.file, len(self._by_digest))

    def _load(self, keys: list[ApiKey], seen: tuple[int, int, int] | None) -> None:
        before = {live.key.name: live for live in self._by_digest.values()}
        table: dict[str, _Live] = {}
        for i, raw in enumerate(self.env_keys, start=1):
            env = ApiKey(name=f"env-{i}", sha256=digest(raw), scopes=SCOPES, created="")
            table[env.sha256] = _Live(env, None, None)
        now = self.clock()
        for key in keys:
            if key.revoked is not None:
                continue
            # A reload keeps what a key has used (same key, same limits), so editing the
            # file (another key revoked) does not hand everyone a fresh bucket and day.
            old = before.get(key.name)
            same = old if old is not None and old.key.sha256 == key.sha256 else None
            rate = key.limiter()
            bucket = Bucket(rate, now) if rate else None
            if same is not None and same.bucket is not None and same.bucket.rate == rate:
                bucket = same.bucket
            quota = DailyCount(key.quota) if key.quota else None
            if same is not None and same.quota is not None and same.quota.limit == key.quota:
                quota = same.quota
            table[key.sha256] = _Live(key, bucket, quota)
        self._by_digest, self._seen = table, seen


def credentials(headers: Any) -> list[bytes]:
    """The API keys a request presents: every ``X-API-Key`` header and an
    ``Authorization: Bearer`` token. One rule: an empty value counts as absent, and every
    non-empty one must be a valid key (an empty ``X-API-Key`` never hides a valid Bearer
    token; a second, wrong ``X-API-Key`` is refused, not skipped)."""
    getlist = getattr(headers, "getlist", None)
    keys = list(getlist("x-api-key")) if getlist else [headers.get("x-api-key") or ""]
    for auth in list(getlist("authorization")) if getlist else [headers.get("authorization") or ""]:
        if auth[:7].lower() == "bearer ":
            keys.append(auth[7:])
    return [k.strip().encode() for k in keys if k and k.strip()]


@functools.cache
def _counter() -> Any:
    # Created on first use, in the worker, after it set PROMETHEUS_MULTIPROC_DIR.
    from prometheus_client import Counter

    return Counter(
        "modelyard_api_key_requests",
        "Requests by API key name and outcome (accepted, scope, rate, quota)",
        labelnames=["key", "outcome"],
    )


def _count(name: str, outcome: str) -> None:
    _counter().labels(key=name, outcome=outcome).inc()


# -- load shedding ---------------------------------------------------------------------------


class Load:
    """Requests in flight in this worker, and whether to take one more. ``limit`` 0: no
    bound (every request is taken)."""

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 0:
            raise ValueError(f"MODELYARD_MAX_INFLIGHT is {limit}: use 0 (no bound) or more")
        self.limit = limit
        self.in_flight = 0
        self.shed = 0
        self._last_shed = -math.inf
        self._clock = clock

    def enter(self) -> bool:
        """Take the request (True; call ``leave`` when it is answered) or shed it."""
        if self.limit and self.in_flight >= self.limit:
            self.shed += 1
            self._last_shed = self._clock()
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    def ready(self) -> bool:
        """False while at the bound or within a moment of the last shed request."""
        if not self.limit:
            return True
        saturated = self.in_flight >= self.limit
        return not saturated and self._clock() - self._last_shed >= UNREADY_AFTER_SHED_SECONDS

    def refusal(self) -> RequestError:
        return RequestError(
            503,
            "load",
            f"this replica is at its bound of {self.limit} requests in flight; retry in "
            f"{SHED_RETRY_AFTER_SECONDS} s",
            retry_after=SHED_RETRY_AFTER_SECONDS,
        )
