"""The typed client that consuming services use to call the model API (``/v1``).

    from services.client import Client

    with Client("https://models.example.com", api_key=os.environ["MODELYARD_API_KEY"]) as api:
        for p in api.predict(rows):            # any number of rows: sent in batches
            print(p.label, p.probabilities[p.label])
        api.feedback(p.id, 3)                  # the true label, when it is known

Self-contained on purpose: only httpx, tenacity and the standard library, so a consuming
service (and the web application's own Bento) can copy or install it without the rest of
modelyard.

- **Retries** with exponential backoff where a retry cannot do a thing twice: the
  connection could not be opened, or the server (or the Ingress in front of it) answered
  502 or 503 (a replica shedding load), or 429 for the key's rate (not its daily quota).
  A ``Retry-After`` header is waited for (at most ``max_retry_after`` seconds; a longer
  one is final). Everything else is final.
- **Batching**: ``predict`` splits its rows into requests of at most the server's
  ``max_batch`` (read once from ``/v1/metadata``), and smaller when a request would
  exceed the server's ``max_body_bytes``.
- **Errors** are one hierarchy (nothing else escapes, apart from ``ValueError`` for rows
  that cannot be sent at all)::

      ApiError
       ├── ServiceUnavailable   not reachable, timed out, or 502/503 after the retries
       ├── RequestRefused       4xx: the server's ``status``, ``field`` and ``message``
       │    ├── Unauthorized    401: missing or invalid API key
       │    └── RateLimited     429: the key's rate or daily quota; ``retry_after``
       └── BadResponse          any other 5xx, or a reply that is not the documented JSON
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

log = logging.getLogger(__name__)

Label = int | str
RETRY_STATUS = frozenset({502, 503})
_ROW = re.compile(r"^inputs\[(\d+)\]")


class ApiError(Exception):
    """Every error this client raises about the API."""


class ServiceUnavailable(ApiError):
    """The API could not be reached, timed out, or stayed 502/503 through every retry."""


class RequestRefused(ApiError):
    """The API refused the request (4xx). ``field`` says where (``inputs[3][20]``,
    ``label``, ``body``, ``authorization``) and ``message`` what was wrong, both as the
    server wrote them. ``offset`` is the index, in the rows given to ``predict``, of the
    first row of the refused request; ``row`` is the offending row in those rows."""

    def __init__(self, status: int, field: str, message: str, *, offset: int = 0) -> None:
        super().__init__(f"HTTP {status}: {field}: {message}")
        self.status = status
        self.field = field
        self.message = message
        self.offset = offset

    @property
    def row(self) -> int | None:
        match = _ROW.match(self.field)
        return self.offset + int(match[1]) if match else None

    @property
    def column(self) -> int | None:
        match = re.match(r"^inputs\[\d+\]\[(\d+)\]", self.field)
        return int(match[1]) if match else None


class Unauthorized(RequestRefused):
    """401: the API key is missing or not one the server accepts."""


class RateLimited(RequestRefused):
    """429: the key's rate limit (``field`` "rate") or daily quota ("quota") is used up;
    ``retry_after`` is the server's Retry-After in seconds (None if it sent none)."""

    def __init__(
        self,
        status: int,
        field: str,
        message: str,
        *,
        offset: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, field, message, offset=offset)
        self.retry_after = retry_after


class BadResponse(ApiError):
    """A 5xx other than 502/503, or an answer that is not the documented JSON."""


class _Retry(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


@dataclass(frozen=True)
class Feature:
    """One input column: its name and the range the model was trained on (None: open)."""

    name: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Metadata:
    """What ``/v1/metadata`` says about the served model version."""

    name: str
    version: str
    features: tuple[str, ...]
    classes: tuple[Label, ...]
    max_batch: int
    variant: str = "fp32"
    git_commit: str | None = None
    data_md5: str | None = None
    onnx_sha256: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    max_body_bytes: int | None = None
    auth: str = ""
    # Fields this client does not know yet (newer servers), kept as sent.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @classmethod
    def parse(cls, data: Any) -> Metadata:
        if not isinstance(data, dict):
            raise BadResponse(f"/v1/metadata is not a JSON object: {_short(data)}")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        try:
            features = tuple(f["name"] if isinstance(f, dict) else str(f) for f in data["features"])
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                features=features,
                classes=tuple(data["classes"]),
                max_batch=int(data["max_batch"]),
                variant=str(data.get("variant") or "fp32"),
                git_commit=data.get("git_commit"),
                data_md5=data.get("data_md5"),
                onnx_sha256=str(data.get("onnx_sha256") or ""),
                metrics={str(k): float(v) for k, v in (data.get("metrics") or {}).items()},
                max_body_bytes=(
                    int(data["max_body_bytes"]) if data.get("max_body_bytes") else None
                ),
                auth=str(data.get("auth") or ""),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadResponse(f"/v1/metadata lacks or mistypes {exc}: {_short(data)}") from None


@dataclass(frozen=True)
class Prediction:
    """One row's answer. ``id`` is what ``feedback`` takes; ``probabilities`` maps every
    class to its probability; ``model`` is NAME/VERSION of the version that answered."""

    id: str
    label: Label
    probabilities: dict[Label, float]
    model: str


class Client:
    """A connection pool to one model API. Thread-safe; close it (or use ``with``)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        max_retry_after: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``retries`` is the number of tries in all (1: no retry); the waits between
        them grow from ``backoff`` seconds, doubling, at most 5 s each, or are the
        server's Retry-After when it says more (a Retry-After above ``max_retry_after``
        is not waited for: the error is raised)."""
        self.base_url = base_url.rstrip("/")
        self.retries = max(1, retries)
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        headers = {"Accept": "application/json", "User-Agent": "modelyard-client"}
        if api_key:
            headers["X-API-Key"] = api_key
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._metadata: Metadata | None = None
        self._raw_features: list[Any] = []

    # -- the API ------------------------------------------------------------------------

    def metadata(self, *, refresh: bool = False) -> Metadata:
        """The served version's metadata (fetched once; ``refresh`` fetches it again)."""
        if self._metadata is None or refresh:
            raw = self._send("GET", "/v1/metadata")
            self._metadata = Metadata.parse(raw)
            self._raw_features = raw.get("features") or []
        return self._metadata

    def feature_schema(self) -> list[Feature]:
        """The features in order, with their training ranges where the server publishes
        them (in ``/v1/metadata`` or in the OpenAPI document ``/docs.json``)."""
        meta = self.metadata()
        raw = self._raw_features
        if raw and all(isinstance(f, dict) for f in raw):
            return [Feature(f["name"], _num(f.get("min")), _num(f.get("max"))) for f in raw]
        try:
            doc = self._send("GET", "/docs.json")
        except (RequestRefused, BadResponse):
            doc = {}
        items = _dig(doc, "components", "schemas", "Row", "prefixItems")
        if isinstance(items, list) and len(items) == len(meta.features):
            return [
                Feature(name, _num(item.get("minimum")), _num(item.get("maximum")))
                for name, item in zip(meta.features, items, strict=True)
            ]
        return [Feature(name) for name in meta.features]

    def predict(self, rows: Iterable[Sequence[float]] | Any) -> list[Prediction]:
        """One prediction per row, in order. ``rows`` is any iterable of rows of numbers
        (lists, tuples, a 2-D numpy array), each with the features in metadata order."""
        data = rows.tolist() if hasattr(rows, "tolist") else [list(r) for r in rows]
        meta = self.metadata()
        out: list[Prediction] = []
        for offset, size, body in self._batches(data, meta):
            reply = self._send("POST", "/v1/predict", body, offset=offset)
            out.extend(self._parse_predictions(reply, meta, expected=size))
        return out

    def feedback(self, prediction_id: str, label: Label) -> None:
        """Record the true ``label`` of the prediction ``prediction_id`` (for monitoring)."""
        body = json.dumps({"id": prediction_id, "label": label}).encode()
        self._send("POST", "/v1/feedback", body)

    # -- plumbing -----------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _batches(self, rows: list[Any], meta: Metadata) -> Iterator[tuple[int, int, bytes]]:
        """(offset of the first row, rows, JSON body): at most ``max_batch`` rows each, halved
        until the body fits ``max_body_bytes`` when the server states one."""
        if not rows:
            return
        step = max(1, meta.max_batch)
        start = 0
        while start < len(rows):
            size = min(step, len(rows) - start)
            body = _encode(rows, start, size)
            while meta.max_body_bytes and len(body) > meta.max_body_bytes and size > 1:
                size //= 2
                body = _encode(rows, start, size)
            yield start, size, body
            start += size

    def _parse_predictions(self, reply: Any, meta: Metadata, expected: int) -> list[Prediction]:
        try:
            model = str(reply["model"])
            out = [
                Prediction(
                    id=str(p["id"]),
                    label=p["label"],
                    probabilities=dict(
                        zip(meta.classes, map(float, p["probabilities"]), strict=True)
                    ),
                    model=model,
                )
                for p in reply["predictions"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise BadResponse(f"/v1/predict answered {_short(reply)} ({exc})") from None
        if len(out) != expected:
            raise BadResponse(f"/v1/predict answered {len(out)} predictions for {expected} rows")
        return out

    def _retryable(self, response: httpx.Response) -> bool:
        """502/503, and a 429 for the key's rate; never one whose Retry-After is longer
        than ``max_retry_after`` (a daily quota's answer waits until midnight)."""
        status = response.status_code
        if status not in RETRY_STATUS and status != 429:
            return False
        hinted = _retry_after(response)
        if hinted is not None and hinted > self.max_retry_after:
            return False
        if status == 429:
            try:
                return bool(response.json()["error"]["field"] == "rate")
            except (ValueError, KeyError, TypeError):
                return False
        return True

    def _send(self, method: str, path: str, body: bytes | None = None, *, offset: int = 0) -> Any:
        headers = {"Content-Type": "application/json"} if body is not None else {}

        def attempt() -> httpx.Response:
            response = self._http.request(method, path, content=body, headers=headers)
            if self._retryable(response):
                raise _Retry(response)
            return response

        backoff = wait_exponential(multiplier=self.backoff, max=5)

        def wait(state: RetryCallState) -> float:
            failed = state.outcome.exception() if state.outcome else None
            hinted = _retry_after(failed.response) if isinstance(failed, _Retry) else None
            return max(backoff(state), hinted or 0.0)

        retrying = Retrying(
            retry=retry_if_exception_type((_Retry, httpx.ConnectError, httpx.ConnectTimeout)),
            stop=stop_after_attempt(self.retries),
            wait=wait,
            before_sleep=_log_retry,
        )
        url = f"{self.base_url}{path}"
        try:
            response = retrying(attempt)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            if isinstance(last, _Retry) and last.response.status_code == 429:
                return _reply(method, url, last.response, offset)  # RateLimited
            if isinstance(last, _Retry):
                raise ServiceUnavailable(
                    f"{method} {url}: HTTP {last.response.status_code} after {self.retries} "
                    f"tries: {_short(last.response.text)}"
                ) from None
            raise ServiceUnavailable(
                f"{method} {url}: cannot connect after {self.retries} tries ({last})"
            ) from last
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(f"{method} {url}: timed out ({exc!r})") from exc
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"{method} {url}: {exc!r}") from exc
        return _reply(method, url, response, offset)


def _retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (the delay form; a date is not used here)."""
    raw = response.headers.get("retry-after", "").strip()
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _reply(method: str, url: str, response: httpx.Response, offset: int) -> Any:
    status = response.status_code
    try:
        data = response.json()
    except ValueError:
        data = None
    if 400 <= status < 500:
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and "message" in err:
            fld, msg = str(err.get("field", "body")), str(err["message"])
        else:  # not our JSON error (a proxy in front, an older server)
            fld, msg = "body", _short(response.text) or response.reason_phrase
        if status == 429:
            raise RateLimited(status, fld, msg, offset=offset, retry_after=_retry_after(response))
        kind = Unauthorized if status == 401 else RequestRefused
        raise kind(status, fld, msg, offset=offset)
    if status in RETRY_STATUS:  # not retried: its Retry-After was longer than we wait
        raise ServiceUnavailable(
            f"{method} {url}: HTTP {status}, Retry-After {response.headers.get('retry-after')} "
            f"s: {_short(response.text)}"
        )
    if status >= 400:
        raise BadResponse(f"{method} {url}: HTTP {status}: {_short(response.text)}")
    if data is None:
        raise BadResponse(f"{method} {url}: the answer is not JSON: {_short(response.text)}")
    return data


def _encode(rows: list[Any], start: int, size: int) -> bytes:
    chunk = rows[start : start + size]
    try:
        return json.dumps({"inputs": chunk}, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:
        for i, row in enumerate(chunk):
            for j, v in enumerate(row):
                if isinstance(v, float) and not math.isfinite(v):
                    raise ValueError(
                        f"rows[{start + i}][{j}] is {v}: JSON has no such number"
                    ) from None
        raise
    except TypeError as exc:
        raise ValueError(
            f"rows {start}..{start + size - 1} cannot be sent as JSON: {exc}"
        ) from None


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("model API: %s; retry %d", exc, state.attempt_number)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = [
    "ApiError",
    "BadResponse",
    "Client",
    "Feature",
    "Label",
    "Metadata",
    "Prediction",
    "RateLimited",
    "RequestRefused",
    "ServiceUnavailable",
    "Unauthorized",
]
