"""The web app's Starlette application: pages, form posts, error pages.

| route | what |
|---|---|
| ``GET /`` | Try it: a canvas (image models) or a form from the feature schema, and CSV upload |
| ``POST /predict`` | the drawing (``strokes``) or the form (``f0`` ..) -> the answer on the page |
| ``POST /feedback`` | "that's wrong, it is a ..." -> ``/v1/feedback`` |
| ``POST /batch`` | a CSV file -> the same CSV with predictions, as a download |
| ``GET /model`` | the model card from ``/v1/metadata`` |
| ``GET /static/*`` | the stylesheet and the canvas script |

Every failure is a page that says what happened: the API down or overloaded (503), the
API refusing this app's key (502), bad input (422, next to the field), too many requests
(429), a stale form (403); anything unexpected is logged with its traceback and shown as
a plain 500 page, never the traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope

from services.client import (
    ApiError,
    BadResponse,
    Client,
    Feature,
    Metadata,
    Prediction,
    RequestRefused,
    ServiceUnavailable,
    Unauthorized,
)
from services.webapp import guard, inputs
from services.webapp.settings import Settings

log = logging.getLogger("modelyard.webapp")
HERE = Path(__file__).parent
_ENV = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Model:
    """What the pages need to know about the served version (cached for a while)."""

    meta: Metadata
    features: list[Feature]
    image: inputs.Image | None
    fetched: float


class WebApp:
    """The app's state: settings, the API client, the rate limiter, the cached model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = Client(
            settings.api_url,
            api_key=settings.api_key,
            timeout=settings.api_timeout,
            retries=settings.api_tries,
        )
        self.limiter = guard.RateLimiter(settings.rate_per_minute, settings.burst)
        self._model: Model | None = None
        self._lock = asyncio.Lock()

    async def model(self) -> Model:
        async with self._lock:
            cached = self._model
            if cached and time.monotonic() - cached.fetched < self.settings.metadata_ttl:
                return cached
            self._model = await run_in_threadpool(self._fetch_model)
            return self._model

    def _fetch_model(self) -> Model:
        meta = self.client.metadata(refresh=True)
        features = self.client.feature_schema()
        return Model(meta, features, inputs.image_of(features), time.monotonic())

    def close(self) -> None:
        self.client.close()


def create_app(settings: Settings | None = None) -> Starlette:
    """The ASGI app. Without ``settings`` they are read from the environment when the
    app starts (its lifespan), not when this module is imported."""
    holder: dict[str, WebApp] = {}
    if settings is not None:
        holder["app"] = WebApp(settings)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if "app" not in holder:
            holder["app"] = WebApp(Settings.from_env(os.environ))
        log.info("web app: model API at %s", holder["app"].settings.api_url)
        yield
        holder["app"].close()

    def too_many(scope: Scope, wait: float) -> ASGIApp:
        return _page(
            Request(scope),
            holder["app"],
            "error.html",
            status=429,
            title="Too many requests",
            message=f"Please wait {max(1, round(wait))} s and try again.",
            headers={"Retry-After": str(max(1, round(wait)))},
        )

    def limits() -> tuple[guard.RateLimiter, int] | None:
        state = holder.get("app")
        return (state.limiter, state.settings.proxy_hops) if state else None

    app = Starlette(
        routes=[
            Route("/", home, methods=["GET"]),
            Route("/predict", predict, methods=["POST"]),
            Route("/feedback", feedback, methods=["POST"]),
            Route("/batch", batch, methods=["POST"]),
            Route("/model", model_card, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
            # Everything else is ours too (a 404 page, not the framework's plain text).
            Route("/{path:path}", not_found, methods=["GET", "POST", "HEAD"]),
        ],
        middleware=[Middleware(guard.Guard, limits=limits, too_many=too_many, routes=ROUTES)],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    app.state.holder = holder
    return app


ROUTES = frozenset({"/", "/predict", "/feedback", "/batch", "/model", "/metrics"})


# -- pages ---------------------------------------------------------------------------------------


def _state(request: Request) -> WebApp:
    state: WebApp = request.app.state.holder["app"]
    return state


def _page(
    request: Request,
    state: WebApp,
    template: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """Render a page; give the browser a CSRF cookie if it has none."""
    cookie = request.cookies.get(guard.CSRF_COOKIE)
    fresh = not cookie
    if not cookie:
        cookie = guard.new_csrf_cookie()
    html = _ENV.get_template(template).render(
        csrf=guard.sign(state.settings.secret, cookie), path=request.url.path, **context
    )
    response = HTMLResponse(html, status_code=status, headers=headers)
    if fresh:
        secure = _scheme(request, state) == "https"
        response.set_cookie(
            guard.CSRF_COOKIE, cookie, httponly=True, samesite="strict", secure=secure, path="/"
        )
    return response


def _scheme(request: Request, state: WebApp) -> str:
    if state.settings.proxy_hops > 0:
        return request.headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    return request.url.scheme


async def home(request: Request) -> Response:
    state = _state(request)
    return _try_page(request, state, await state.model())


async def model_card(request: Request) -> Response:
    state = _state(request)
    model = await state.model()
    return _page(request, state, "model.html", model=model, meta=model.meta)


def _try_page(
    request: Request, state: WebApp, model: Model, *, status: int = 200, **context: Any
) -> HTMLResponse:
    return _page(
        request,
        state,
        "try.html",
        status=status,
        model=model,
        meta=model.meta,
        max_upload_mb=round(state.settings.max_upload_bytes / 2**20, 1),
        max_rows=state.settings.max_rows,
        **context,
    )


async def _form(request: Request, state: WebApp) -> FormData:
    """The posted form, size-checked, with its CSRF token verified."""
    limit = state.settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise HTTPException(413, f"The upload is larger than {limit // 1024} KiB.")
    try:
        limited = Request(request.scope, _limited(request.receive, limit + 64 * 1024))
        form = await limited.form(max_files=1, max_fields=1000, max_part_size=limit)
    except MultiPartException as exc:
        raise HTTPException(400, f"The form could not be read: {exc}") from None
    token = form.get(guard.CSRF_FIELD)
    if not guard.csrf_ok(
        state.settings.secret,
        request.cookies.get(guard.CSRF_COOKIE),
        token if isinstance(token, str) else None,
        request.headers.get("sec-fetch-site"),
    ):
        raise HTTPException(
            403,
            "This form is stale or was not sent from this site. Reload the page and try again.",
        )
    return form


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that stops a body (chunked, or lying about its length) past ``limit``."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise HTTPException(413, f"The upload is larger than {limit // 1024} KiB.")
        return message

    return wrapped


def _text(form: FormData) -> dict[str, str]:
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def predict(request: Request) -> Response:
    state = _state(request)
    form = await _form(request, state)
    model = await state.model()
    values = _text(form)
    seen: list[float] | None = None
    strokes = ""
    try:
        if model.image is not None:
            drawn = inputs.parse_strokes(values.get("strokes", ""))
            strokes = json.dumps(drawn, separators=(",", ":"))
            seen = inputs.rasterize(drawn, model.image)
            row = seen
        else:
            row = inputs.parse_form(values, model.features)
    except inputs.InputError as exc:
        return _try_page(request, state, model, status=422, error=exc, values=values)
    started = time.perf_counter()
    try:
        [answer] = await run_in_threadpool(state.client.predict, [row])
    except Unauthorized:
        raise
    except RequestRefused as exc:
        error = inputs.InputError(_where(exc, model.features), exc.message)
        return _try_page(request, state, model, status=422, error=error, values=values)
    latency_ms = (time.perf_counter() - started) * 1000
    return _try_page(
        request,
        state,
        model,
        result=_result(state, model, answer, latency_ms),
        seen=_grid(seen, model.image) if seen is not None and model.image else None,
        strokes=strokes,
        values=values if model.image is None else {},
    )


def _result(state: WebApp, model: Model, answer: Prediction, latency_ms: float) -> dict[str, Any]:
    classes = list(model.meta.classes)
    return {
        "id": answer.id,
        "signature": guard.sign(state.settings.secret, answer.id),
        "label": answer.label,
        "model": answer.model,
        "latency_ms": latency_ms,
        "bars": [
            {"label": c, "p": answer.probabilities.get(c, 0.0), "top": c == answer.label}
            for c in classes
        ],
    }


def _grid(values: list[float], image: inputs.Image) -> list[list[float]]:
    """The drawing as the model saw it: rows of shades in [0, 1]."""
    side, high = image.side, image.high or 1.0
    return [[v / high for v in values[r * side : (r + 1) * side]] for r in range(side)]


def _where(exc: RequestRefused, features: list[Feature]) -> str:
    column = exc.column
    return features[column].name if column is not None and column < len(features) else exc.field


async def feedback(request: Request) -> Response:
    state = _state(request)
    form = _text(await _form(request, state))
    model = await state.model()
    prediction_id, signature = form.get("id", ""), form.get("signature", "")
    if not prediction_id or not guard.signed_ok(state.settings.secret, prediction_id, signature):
        raise HTTPException(400, "That prediction was not made here; draw and predict again.")
    classes = list(model.meta.classes)
    choice = form.get("label", "")
    if not choice.isdigit() or int(choice) >= len(classes):
        raise HTTPException(400, f"Pick one of the classes {classes}.")
    label = classes[int(choice)]
    await run_in_threadpool(state.client.feedback, prediction_id, label)
    return _try_page(request, state, model, notice=f"Thanks: recorded that it is a {label}.")


async def batch(request: Request) -> Response:
    state = _state(request)
    form = await _form(request, state)
    model = await state.model()
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        error = inputs.InputError("file", "choose a CSV file to upload")
        return _try_page(request, state, model, status=422, batch_error=error)
    data = await upload.read()
    try:
        table = inputs.read_csv(data, model.features, max_rows=state.settings.max_rows)
    except inputs.InputError as exc:
        return _try_page(request, state, model, status=422, batch_error=exc)
    try:
        answers = await run_in_threadpool(state.client.predict, table.inputs)
    except Unauthorized:
        raise
    except RequestRefused as exc:
        where = (
            f"line {table.first_line + exc.row}, {_where(exc, model.features)}"
            if exc.row is not None
            else exc.field
        )
        error = inputs.InputError(where, exc.message)
        return _try_page(request, state, model, status=422, batch_error=error)
    body = inputs.write_csv(table, answers, model.meta.classes)
    name = f"predictions-{model.meta.name}-v{model.meta.version}.csv"
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


POST_ONLY = ("/predict", "/feedback", "/batch")


async def metrics(request: Request) -> Response:
    """Prometheus metrics of every worker (BentoML's per-path metrics are off)."""
    import prometheus_client
    from prometheus_client import multiprocess

    registry: Any = prometheus_client.REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    guard.counters()  # listed from the first scrape on, before any request
    return Response(
        prometheus_client.generate_latest(registry),
        media_type=prometheus_client.CONTENT_TYPE_LATEST,
    )


async def not_found(request: Request) -> Response:
    if request.url.path in POST_ONLY:
        raise HTTPException(
            405, "This address takes the forms on the Try it page.", headers={"Allow": "POST"}
        )
    raise HTTPException(404, "There is no such page here.")


# -- error pages ---------------------------------------------------------------------------------

TITLES = {
    400: "That request could not be used",
    403: "Form expired",
    404: "Page not found",
    405: "Not allowed",
    413: "Upload too large",
}


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    state = _state(request)
    return _page(request, state, "error.html", status=status, title=title, message=message)


API_ERROR_KINDS = (
    (ServiceUnavailable, "unavailable"),
    (Unauthorized, "unauthorized"),
    (RequestRefused, "refused"),
)


async def _api_error(request: Request, exc: Exception) -> Response:
    log.warning("model API: %s", exc)
    kind = next((k for cls, k in API_ERROR_KINDS if isinstance(exc, cls)), "bad_response")
    guard.counters()[1].labels(kind=kind).inc()
    if isinstance(exc, ServiceUnavailable):
        return _error_page(
            request,
            503,
            "The model service is not available",
            "The model API did not answer (it may be restarting or overloaded). "
            "Please try again in a minute.",
        )
    if isinstance(exc, Unauthorized):
        return _error_page(
            request,
            502,
            "The model service refused this web app",
            "The web app's API key was not accepted. This is a configuration problem on our "
            "side (MODELYARD_API_KEY); your input was fine.",
        )
    if isinstance(exc, RequestRefused):
        return _error_page(request, 422, "The model service refused the request", exc.message)
    assert isinstance(exc, BadResponse | ApiError)
    return _error_page(
        request,
        502,
        "The model service gave an answer this page cannot read",
        "Please try again later; the error has been logged.",
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = _error_page(
        request, exc.status_code, TITLES.get(exc.status_code, "Error"), str(exc.detail)
    )
    response.headers.update(exc.headers or {})
    return response


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("web app: unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return HTMLResponse(
        _ENV.get_template("error.html").render(
            csrf="",
            path=request.url.path,
            title="Something went wrong on our side",
            message="The error has been logged. Please try again.",
        ),
        status_code=500,
    )
