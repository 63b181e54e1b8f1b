"""The BentoML service: one registry version, served with ONNX Runtime.

The Bento carries one BentoML model (``model.onnx`` + ``contract.json``: the training
schema, lineage and the file's sha256), chosen at build time with
``--arg model_tag=NAME:VERSION`` (``modelyard build`` does this). The service knows only
that contract: it imports the schema module and nothing from training.

Routes (a Starlette app mounted in the Bento; every error is JSON):

- ``POST /v1/predict``   ``{"inputs": [[...], ...]}`` -> labels, probabilities, ids
- ``POST /v1/feedback``  ``{"id": "<prediction id>", "label": ...}``
- ``GET  /v1/metadata``  model name, version, variant, commit, data hash, metrics (and
  the shadow challenger, when there is one)
- ``GET  /docs.json``    the OpenAPI 3.1 document of all of it
- ``GET  /metrics``      Prometheus (open), ``GET /livez``, ``/readyz`` from BentoML (open)

Auth and limits (services/gateway.py): named keys with scopes, rates and daily quotas
from ``MODELYARD_API_KEY_FILE`` (``modelyard keys create``; re-read when it changes), and
``MODELYARD_API_KEYS`` (comma-separated, every scope, no limit), sent as
``Authorization: Bearer <key>`` or ``X-API-Key``. Neither set: the API is open (with a
warning). Set but holding no key, or an unreadable file: the service refuses to start.
Past ``MODELYARD_MAX_INFLIGHT`` requests in flight (16; 0: no bound) a request is a 503
with Retry-After at once, and ``/readyz`` says not ready.

Integrity: the service refuses to start unless ``model.onnx`` hashes to the sha256 the
registry recorded, as the Bento's own label carries it (``modelyard build`` writes it),
and unless ``contract.json`` and the model store's record say the same.

Shadow (``modelyard serve --shadow NAME@challenger``, build argument ``shadow_tag``): the
Bento carries a second model, checked the same way (labels ``shadow_*``) and held to the
champion's features and classes. The champion answers exactly as without it; afterwards
a worker thread (``ShadowScorer``) scores the same rows with the challenger and appends
one ``"shadow"`` record per row to the inference log (monitoring/logscan.py reads them).
Its queue is bounded: when full, requests are dropped and counted, never waited for. A
challenger that fails is counted and recorded with the reason, never seen by clients.

Environment: every variable the service reads is in ``services/config.py``
(``ServiceSettings``: read once at start, typed, checked; a bad value refuses the start
and names the variable).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import orjson
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services import edge, gateway, ids
from services.config import TRAFFIC_TIMEOUT_SECONDS, ServiceSettings, SettingError
from services.inference_log import Health, InferenceLog
from services.schema import Contract, RequestError, openapi
from services.shadow import SHADOW_DRAIN_SECONDS, ShadowScorer

log = logging.getLogger("modelyard.service")

OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics")


class BuildArgs(BaseModel):
    model_tag: str = "digits-classifier:latest"
    # The challenger scored in shadow (`modelyard build --shadow`); empty: no shadow.
    shadow_tag: str = ""


ARGS = bentoml.use_arguments(BuildArgs)


class StartupRefused(RuntimeError):
    """The service will not serve: a tampered model, or a configuration that would
    serve something other than what was asked for. The message says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(f"refusing to start: {message}")


# -- the routes ----------------------------------------------------------------------------


def _state() -> Classifier:
    svc: Classifier = bentoml.get_current_service()
    return svc


Handler = Callable[[Request, "Classifier"], Awaitable[Response]]


def guarded(scope: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """A route that sheds load (503, before anything is read), then admits the caller's
    key for ``scope`` (401/403/429, see services.gateway). A refusal is the API's JSON
    error, counted by status in ``modelyard_rejected_requests_total``."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            svc = _state()
            if not svc.load.enter():
                svc.rejected.labels(reason="503").inc()
                return edge.refuse(svc.load.refusal())
            try:
                svc.gateway.admit(request.headers, scope)
                return await handler(request, svc)
            except RequestError as err:
                svc.rejected.labels(reason=str(err.status)).inc()
                return edge.refuse(err)
            finally:
                svc.load.leave()

        return endpoint

    return wrap


@guarded("predict")
async def predict(request: Request, svc: Classifier) -> Response:
    started = time.perf_counter()
    x = svc.contract.parse_predict(
        await edge.read_body(request, svc.max_body, timeout=svc.body_timeout)
    )
    body = svc.predict(x)
    svc.latency.observe(time.perf_counter() - started)
    return Response(body, media_type="application/json")


@guarded("feedback")
async def feedback(request: Request, svc: Classifier) -> Response:
    fb = svc.contract.parse_feedback(
        await edge.read_body(request, svc.max_body, timeout=svc.body_timeout)
    )
    verified = ids.issued(svc.id_key, fb.id)
    if verified is False:
        raise RequestError(
            404,
            "id",
            f"this service never issued the prediction id {fb.id!r}: send the id a "
            "/v1/predict answer holds (predictions[].id)",
        )
    record = {"type": "feedback", "id": fb.id, "label": fb.label, "ts": time.time()}
    if not svc.record([{**record, "verified": verified}]):
        # A label is only worth its record: say it was not kept, so the client sends it again.
        return edge.error_response(
            RequestError(
                503,
                "log",
                f"the label was not recorded ({svc.log_health.state['last_error']}); send it "
                "again later",
                retry_after=LOG_RETRY_AFTER_SECONDS,
            )
        )
    return Response(
        orjson.dumps({"id": fb.id, "label": fb.label, "recorded": True, "verified": verified}),
        media_type="application/json",
    )


@guarded("metadata")
async def metadata(request: Request, svc: Classifier) -> Response:
    return Response(svc.metadata_body(), media_type="application/json")


async def docs(request: Request) -> Response:
    return Response(_state().docs_json, media_type="application/json")


async def metrics(request: Request) -> Response:
    # BentoML's own metrics are off (they label requests by raw path: unbounded), so the
    # service exposes the workers' shared Prometheus registry itself.
    import prometheus_client
    from prometheus_client import multiprocess

    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return Response(
        prometheus_client.generate_latest(registry),
        media_type=prometheus_client.CONTENT_TYPE_LATEST,
    )


ROUTES: dict[str, frozenset[str]] = {
    "/v1/predict": frozenset({"POST"}),
    "/v1/feedback": frozenset({"POST"}),
    "/v1/metadata": frozenset({"GET"}),
    "/docs.json": frozenset({"GET"}),
    "/metrics": frozenset({"GET"}),
    # BentoML's, matched before this app; listed so a wrong method gets a JSON 405.
    "/livez": frozenset({"GET"}),
    "/healthz": frozenset({"GET"}),
    "/readyz": frozenset({"GET"}),
    "/schema.json": frozenset({"GET"}),
}
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]

# Mounted at "/": BentoML matches its own routes (/livez, /readyz, ...) first, then these;
# the last route claims every other path and method, so no request reaches Starlette's
# plain-text 404/405 or its trailing-slash redirect (which echoes the Host header).
api = Starlette(
    routes=[
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/v1/feedback", feedback, methods=["POST"]),
        Route("/v1/metadata", metadata, methods=["GET"]),
        Route("/docs.json", docs, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/{path:path}", edge.fallback(ROUTES), methods=ALL_METHODS),
    ]
)


LOG_RETRY_AFTER_SECONDS = 30  # a feedback label the log could not keep: try again after
LOG_ERROR_EVERY_SECONDS = 60.0  # a failing log is logged at most this often (and counted)


# -- the service ---------------------------------------------------------------------------

# BentoML's per-request work (access log, OpenTelemetry span) is most of a small model's
# latency (see docs/serving.md: serving benchmark). The hot API paths skip it: they keep their own
# Prometheus metrics (modelyard_*) and the inference log instead.
HOT_PATHS = ("/v1/predict", "/v1/feedback")


@bentoml.service(
    name="modelyard",
    traffic={"timeout": TRAFFIC_TIMEOUT_SECONDS},
    metrics={"enabled": False},
    logging={"access": {"skip_paths": [*OPEN_PATHS, *HOT_PATHS]}},
    tracing={"excluded_urls": list(HOT_PATHS)},
)
@bentoml.asgi_app(api, path="/")
class Classifier:
    """ONNX Runtime inference for one registered model version."""

    bento_model = bentoml.models.BentoModel(ARGS.model_tag)
    # The challenger, carried by the Bento beside the champion (None: no shadow).
    shadow_model = bentoml.models.BentoModel(ARGS.shadow_tag) if ARGS.shadow_tag else None

    def __init__(self) -> None:
        try:
            self.settings = ServiceSettings.from_env(os.environ)
        except SettingError as exc:
            raise StartupRefused(str(exc)) from None
        settings = self.settings
        edge.limit_header_time(settings.header_timeout_seconds)
        self.gateway = _gateway(settings)
        self.load = gateway.Load(settings.max_inflight)
        onnx_path, contract, self.session = self._load(self.bento_model)
        self.input_name = self.session.get_inputs()[0].name
        self.contract = Contract.from_schema(contract["schema"])
        self.classes = self.contract.classes
        self.model_ref = f"{contract['name']}/{contract['version']}"
        self.max_body = settings.max_body_bytes
        self.body_timeout = settings.body_timeout_seconds
        self.metadata = {
            "name": contract["name"],
            "version": contract["version"],
            "variant": contract.get("variant", "fp32"),
            "git_commit": contract.get("git_commit"),
            "data_md5": contract.get("data_md5"),
            "onnx_sha256": contract["onnx_sha256"],
            "metrics": contract.get("metrics", {}),
            "features": self.contract.features,
            "classes": self.classes,
            "max_batch": self.contract.max_batch,
            "max_body_bytes": self.max_body,
            "auth": "api-key" if self.gateway.enabled else "disabled",
        }
        # Prediction ids this service (every replica with the same key) can recognise.
        self.id_key = settings.id_key
        if self.id_key is None:
            log.warning(
                "MODELYARD_ID_KEY is not set: feedback for any id is recorded as unverified "
                "(set it, the same on every replica, to answer 404 for ids never issued)"
            )
        self.log = InferenceLog(
            settings.log_dir,
            fsync_every=settings.log_fsync_seconds,
            max_total_bytes=settings.log_retain_bytes,
            max_age_s=settings.log_retain_days * 86_400,
        )
        # "ok", or "degraded" with the last error since the log last failed (this worker).
        self.log_health = Health(say_every=LOG_ERROR_EVERY_SECONDS)
        self._metrics()
        self.shadow = self._shadow()
        self.metadata_json = orjson.dumps(self.metadata)
        self.docs_json = orjson.dumps(
            openapi(
                self.contract,
                max_body=self.max_body,
                auth=self.gateway.enabled,
                title=f"modelyard: {contract['name']}",
                version=str(contract["version"]),
            )
        )
        log.info("serving %s from %s", self.model_ref, onnx_path)
        # Everything loaded so far lives as long as the worker. Without this, each full GC
        # pass walks that whole heap and stalls requests for tens of ms (our p99 tail).
        gc.freeze()
        # Fewer, younger collections: the request path allocates little that lives on.
        gc.set_threshold(50_000, 20, 1_000)

    def _load(self, model: Any, prefix: str = "") -> tuple[Path, dict[str, Any], Any]:
        """The model's file, its contract and an ONNX Runtime session, once the file is
        checked against the sha256 the registry recorded (``prefix``: its Bento labels)."""
        import onnxruntime as ort

        onnx_path = Path(model.path_of("model.onnx"))
        with open(model.path_of("contract.json")) as fh:
            contract: dict[str, Any] = json.load(fh)
        self._check_integrity(model, onnx_path, contract, prefix)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.settings.ort_threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return onnx_path, contract, session

    def _shadow(self) -> ShadowScorer | None:
        """The challenger's scorer when the Bento carries one and MODELYARD_SHADOW is not
        ``off``; its description goes into /v1/metadata either way."""
        bento = SERVICE.bento
        if self.shadow_model is None:
            if bento is not None and bento.info.labels.get("shadow_model"):
                raise StartupRefused(
                    f"the Bento {bento.tag} is labelled with the shadow model "
                    f"{bento.info.labels['shadow_model']} v"
                    f"{bento.info.labels.get('shadow_model_version')}, but carries no shadow "
                    "model. Rebuild it with `modelyard build --shadow`."
                )
            return None
        if not self.settings.shadow:
            labels = self.shadow_model.info.labels
            self.metadata["shadow"] = {
                "name": labels.get("mlflow_model"),
                "version": labels.get("mlflow_version"),
                "enabled": False,
            }
            log.info(
                "shadow: %s v%s is in the Bento but off (MODELYARD_SHADOW=off)",
                labels.get("mlflow_model"),
                labels.get("mlflow_version"),
            )
            return None
        onnx_path, contract, session = self._load(self.shadow_model, "shadow_")
        challenger = Contract.from_schema(contract["schema"])
        for what in ("features", "classes"):
            theirs, ours = getattr(challenger, what), getattr(self.contract, what)
            if theirs != ours:
                raise StartupRefused(
                    f"the shadow model {contract['name']} v{contract['version']} has other "
                    f"{what} than the champion {self.model_ref} ({len(theirs)} vs "
                    f"{len(ours)}): it cannot score the same requests. Shadow a version "
                    "trained on the same features and classes."
                )
        queue_size = self.settings.shadow_queue
        ref = f"{contract['name']}/{contract['version']}"
        self.metadata["shadow"] = {
            "name": contract["name"],
            "version": contract["version"],
            "variant": contract.get("variant", "fp32"),
            "onnx_sha256": contract["onnx_sha256"],
            "metrics": contract.get("metrics", {}),
            "enabled": True,
            "queue": queue_size,
        }
        log.info("shadow: scoring every request with %s from %s too", ref, onnx_path)
        return ShadowScorer(
            session,
            model=ref,
            champion=self.model_ref,
            classes=self.classes,
            log=self.log,
            queue_size=queue_size,
        )

    @bentoml.on_shutdown
    def drain_shadow(self) -> None:
        """Score what the shadow queue still holds before the worker exits."""
        if self.shadow is not None:
            self.shadow.close(timeout=SHADOW_DRAIN_SECONDS)

    def _metrics(self) -> None:
        # Imported here, not at module level: the worker sets PROMETHEUS_MULTIPROC_DIR
        # before it builds the service, and prometheus_client reads it on import.
        from prometheus_client import Counter, Histogram

        self.predictions = Counter(
            "modelyard_predictions",
            "Predictions served, by predicted class",
            labelnames=["model", "label"],
        )
        self.rejected = Counter(
            "modelyard_rejected_requests",
            "Requests refused before inference, by HTTP status",
            labelnames=["reason"],
        )
        self.log_errors = Counter(
            "modelyard_inference_log_errors",
            "Inference log writes that failed (records not logged; predictions still "
            "answered), by errno",
            labelnames=["kind"],
        )
        self.latency = Histogram(
            "modelyard_predict_seconds",
            "Time in /v1/predict from request to response body",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )

    def _check_integrity(
        self, model: Any, onnx_path: Path, contract: dict[str, Any], prefix: str = ""
    ) -> None:
        """Refuse to start unless model.onnx is the file the registry recorded.

        The reference is the sha256 in the Bento's own labels (``modelyard build`` copies
        the registry's ``onnx.sha256`` tag there), which lives outside the model's folder:
        rewriting model.onnx together with contract.json, or the model store's record,
        does not pass. Served from source (no Bento), the model store's record is the
        reference. contract.json, the model store's record and the model tag's sha256
        prefix must all agree with it. ``prefix`` picks the Bento's labels: "" for the
        champion, "shadow_" for the shadow challenger.
        """
        actual = _sha256(onnx_path)
        info = model.info  # the stored model (BentoML resolves the class attribute)
        claims: dict[str, str | None] = {
            "contract.json": contract.get("onnx_sha256"),
            "the model store's label": info.labels.get("onnx_sha256"),
            "the model store's metadata": info.metadata.get("onnx_sha256"),
        }
        bento = SERVICE.bento  # set when served from a Bento, None from source
        if bento is not None:
            labels = bento.info.labels
            reference, source = labels.get(f"{prefix}onnx_sha256"), f"the Bento {bento.tag}"
            if not reference:
                raise StartupRefused(
                    f"{source} has no {prefix}onnx_sha256 label. Rebuild it with `modelyard build`."
                )
            labelled = (labels.get(f"{prefix}model"), labels.get(f"{prefix}model_version"))
            if labelled != (contract.get("name"), str(contract.get("version"))):
                raise StartupRefused(
                    f"{source} is labelled {labelled[0]} v{labelled[1]}, but its model's "
                    f"contract.json says {contract.get('name')} v{contract.get('version')}. "
                    "Rebuild the Bento with `modelyard build`."
                )
        else:
            source = f"the model store's record of {model.tag}"
            reference = claims["the model store's label"] or claims["the model store's metadata"]
            if not reference:
                raise StartupRefused(
                    f"{source} holds no onnx_sha256; import the model with `modelyard build`."
                )
            log.warning("served from source, not a Bento: checking against %s", source)
        if actual != reference:
            raise StartupRefused(
                f"{onnx_path} has sha256 {actual}, but {source} records {reference} (the "
                f"registry's value for {contract.get('name')} v{contract.get('version')}). "
                "The model file was changed after the build; rebuild with `modelyard build`."
            )
        for where, claim in claims.items():
            if claim is not None and claim != reference:
                raise StartupRefused(
                    f"{where} says the model's sha256 is {claim}, but {source} records "
                    f"{reference}. The model's files were changed after the build; rebuild "
                    "with `modelyard build`."
                )
        suffix = (model.tag.version or "").rsplit("-", 1)[-1]
        if len(suffix) == 12 and not reference.startswith(suffix):
            raise StartupRefused(
                f"the model tag {model.tag} names sha256 {suffix}..., but {source} "
                f"records {reference}. Rebuild with `modelyard build`."
            )

    def __is_ready__(self) -> bool:
        """BentoML's /readyz: not ready while this worker sheds load (Kubernetes then
        routes to other pods until it has caught up)."""
        return self.load.ready()

    def record(self, records: list[dict[str, Any]]) -> bool:
        """Append to the inference log; False when the file system refused. A full disk
        must not cost a prediction: the failure is counted (modelyard_inference_log_errors
        by errno), logged at most once a minute, and shown in /v1/metadata until a write
        succeeds again. Readiness stays up on purpose: every replica shares the volume,
        and an unready pod per full disk would take the whole API down."""
        try:
            self.log.append(records)
        except OSError as exc:
            self.log_errors.labels(kind=self.log_health.kind(exc)).inc()
            said = self.log_health.failed(exc)
            if said:
                log.error("%s", said)
            return False
        said = self.log_health.recovered()
        if said:
            log.warning("%s", said)
        return True

    def metadata_body(self) -> bytes:
        if self.log_health.state["status"] == "ok":
            return self.metadata_json
        return orjson.dumps({**self.metadata, "inference_log": self.log_health.state})

    def predict(self, x: np.ndarray) -> bytes:
        """Predict, log, count; the JSON response body."""
        probs = self.session.run(["probabilities"], {self.input_name: x})[0]
        top = probs.argmax(axis=1)
        request_id = ids.request_id(self.id_key)
        now = time.time()
        labels = [self.classes[i] for i in top]
        rounded = probs.astype(np.float64).round(6)
        row_ids = [f"{request_id}-{i}" for i in range(len(x))]
        self.record(
            [
                {
                    "type": "prediction",
                    "id": row_ids[i],
                    "request_id": request_id,
                    "ts": now,
                    "model": self.model_ref,
                    "features": x[i],
                    "prediction": labels[i],
                    "probabilities": rounded[i],
                }
                for i in range(len(x))
            ]
        )
        for label in labels:
            self.predictions.labels(model=self.model_ref, label=str(label)).inc()
        if self.shadow is not None:
            self.shadow.submit(x, row_ids, labels, now)  # never blocks: a full queue drops
        return orjson.dumps(
            {
                "request_id": request_id,
                "model": self.model_ref,
                "predictions": [
                    {"id": row_ids[i], "label": labels[i], "probabilities": rounded[i]}
                    for i in range(len(x))
                ],
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )


# The decorators made Classifier a bentoml Service (mypy still sees the class).
SERVICE: Any = Classifier
SERVICE.add_asgi_middleware(edge.RequestCounter, routes=frozenset(ROUTES))


def _gateway(settings: ServiceSettings) -> gateway.Gateway:
    """The keys: MODELYARD_API_KEYS (unset: none; set but holding no key (empty, blanks,
    commas): a refusal, since whoever set it meant to lock the API and an open one would
    be a silent mistake) and MODELYARD_API_KEY_FILE (named keys; unreadable: a refusal).
    With neither, the API is open, with a warning."""
    raw, file = settings.api_keys, settings.api_key_file
    keys = [k.strip().encode() for k in (raw or "").split(",") if k.strip()]
    if raw is not None and not keys:
        raise StartupRefused(
            f"MODELYARD_API_KEYS is set but holds no key ({raw!r}). Set it to one or more "
            "comma-separated keys, or unset it to serve the API without auth."
        )
    try:
        gate = gateway.Gateway(keys, file)
    except gateway.KeyFileError as exc:
        raise StartupRefused(f"MODELYARD_API_KEY_FILE: {exc}") from None
    if not gate.enabled:
        log.warning(
            "neither MODELYARD_API_KEYS nor MODELYARD_API_KEY_FILE is set: the API is open "
            "to anyone who can reach it"
        )
    elif file:
        log.info("API keys: %s (%s)", file, ", ".join(gate.names()) or "no live key")
    return gate


def _sha256(path: Path) -> str:
    # Same as core.files.sha256, on purpose: the service imports no training code.
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
