"""The BentoML service: one registry version, served with ONNX Runtime.

The Bento carries one BentoML model (``model.onnx`` + ``contract.json``: the training
schema, lineage and the file's sha256), chosen at build time with
``--arg model_tag=NAME:VERSION`` (``modelyard build`` does this). The service knows only
that contract: it imports the schema module and nothing from training.

Routes (the API under ``/v1`` is a Starlette app mounted in the Bento):

- ``POST /v1/predict``   ``{"inputs": [[...], ...]}`` -> labels, probabilities, ids
- ``POST /v1/feedback``  ``{"id": "<prediction id>", "label": ...}``
- ``GET  /v1/metadata``  model name, version, variant, commit, data hash, metrics
- ``GET  /livez``, ``/readyz``, ``/metrics`` from BentoML (open, no key needed)

Auth: ``MODELYARD_API_KEYS`` (comma-separated; several may be active so keys can be
rotated), sent as ``Authorization: Bearer <key>`` or ``X-API-Key``.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import orjson
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.inference_log import InferenceLog
from services.schema import Contract, RequestError

log = logging.getLogger("modelyard.service")

OPEN_PATHS = ("/livez", "/readyz", "/healthz", "/metrics")


class BuildArgs(BaseModel):
    model_tag: str = "digits-classifier:latest"


ARGS = bentoml.use_arguments(BuildArgs)


# -- the /v1 API -------------------------------------------------------------------------------


def _state() -> Classifier:
    svc: Classifier = bentoml.get_current_service()
    return svc


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def _body(request: Request, svc: Classifier) -> bytes:
    svc.authorize(request.headers)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > svc.max_body:
        raise RequestError(413, "body", f"{declared} bytes; at most {svc.max_body}")
    return await request.body()


async def predict(request: Request) -> Response:
    svc = _state()
    started = time.perf_counter()
    try:
        x = svc.contract.parse_predict(await _body(request, svc))
    except RequestError as err:
        svc.rejected.labels(reason=str(err.status)).inc()
        return _error(err)
    body = svc.predict(x)
    svc.latency.observe(time.perf_counter() - started)
    return Response(body, media_type="application/json")


async def feedback(request: Request) -> Response:
    svc = _state()
    try:
        fb = svc.contract.parse_feedback(await _body(request, svc))
    except RequestError as err:
        svc.rejected.labels(reason=str(err.status)).inc()
        return _error(err)
    svc.log.append([{"type": "feedback", "id": fb.id, "label": fb.label, "ts": time.time()}])
    return JSONResponse({"id": fb.id, "label": fb.label, "recorded": True})


async def metadata(request: Request) -> Response:
    svc = _state()
    try:
        svc.authorize(request.headers)
    except RequestError as err:
        return _error(err)
    return JSONResponse(svc.metadata)


api = Starlette(
    routes=[
        Route("/predict", predict, methods=["POST"]),
        Route("/feedback", feedback, methods=["POST"]),
        Route("/metadata", metadata, methods=["GET"]),
    ]
)


# -- the service ---------------------------------------------------------------------------------


# BentoML's per-request work (access log, OpenTelemetry span, traffic metrics) is most of
# a small model's latency (see README: serving benchmark). The hot API paths skip it:
# they keep their own Prometheus metrics (modelyard_*) and the inference log instead.
HOT_PATHS = ("/v1/predict", "/v1/feedback")


@bentoml.service(
    name="modelyard",
    traffic={"timeout": 10},
    logging={"access": {"skip_paths": [*OPEN_PATHS, *HOT_PATHS]}},
    tracing={"excluded_urls": list(HOT_PATHS)},
)
@bentoml.asgi_app(api, path="/v1")
class Classifier:
    """ONNX Runtime inference for one registered model version."""

    bento_model = bentoml.models.BentoModel(ARGS.model_tag)

    def __init__(self) -> None:
        import onnxruntime as ort

        onnx_path = Path(self.bento_model.path_of("model.onnx"))
        with open(self.bento_model.path_of("contract.json")) as fh:
            contract: dict[str, Any] = json.load(fh)
        actual = _sha256(onnx_path)
        if actual != contract["onnx_sha256"]:
            raise RuntimeError(
                f"refusing to start: {onnx_path} has sha256 {actual}, but the registry recorded "
                f"{contract['onnx_sha256']} for {contract['name']} v{contract['version']}. "
                "Rebuild the Bento with `modelyard build`."
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("MODELYARD_ORT_THREADS", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.contract = Contract.from_schema(contract["schema"])
        self.classes = self.contract.classes
        self.model_ref = f"{contract['name']}/{contract['version']}"
        self.max_body = int(os.environ.get("MODELYARD_MAX_BODY_BYTES", str(2 * 1024 * 1024)))
        self.keys = [
            k.strip().encode()
            for k in os.environ.get("MODELYARD_API_KEYS", "").split(",")
            if k.strip()
        ]
        if not self.keys:
            log.warning("MODELYARD_API_KEYS is not set: the API is open to anyone who can reach it")
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
            "auth": "api-key" if self.keys else "disabled",
        }
        self.log = InferenceLog(
            Path(os.environ.get("MODELYARD_LOG_DIR", "inference-log")),
            fsync_every=float(os.environ.get("MODELYARD_LOG_FSYNC_SECONDS", "1.0")),
        )
        self.predictions = bentoml.metrics.Counter(
            name="modelyard_predictions",
            documentation="Predictions served, by predicted class",
            labelnames=["model", "label"],
        )
        self.rejected = bentoml.metrics.Counter(
            name="modelyard_rejected_requests",
            documentation="Requests refused before inference, by HTTP status",
            labelnames=["reason"],
        )
        self.latency = bentoml.metrics.Histogram(
            name="modelyard_predict_seconds",
            documentation="Time in /v1/predict from request to response body",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        log.info("serving %s from %s", self.model_ref, onnx_path)
        # Everything loaded so far lives as long as the worker. Without this, each full GC
        # pass walks that whole heap and stalls requests for tens of ms (our p99 tail).
        gc.freeze()
        # Fewer, younger collections: the request path allocates little that lives on.
        gc.set_threshold(50_000, 20, 1_000)

    def authorize(self, headers: Any) -> None:
        if not self.keys:
            return
        supplied = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if supplied is None and auth.lower().startswith("bearer "):
            supplied = auth[7:].strip()
        if not supplied:
            raise RequestError(401, "authorization", "missing API key")
        candidate = supplied.encode()
        # Compare with every key, in constant time each, so timing tells nothing.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(key, candidate)
        if not matched:
            raise RequestError(401, "authorization", "invalid API key")

    def predict(self, x: np.ndarray) -> bytes:
        """Predict, log, count; the JSON response body."""
        probs = self.session.run(["probabilities"], {self.input_name: x})[0]
        top = probs.argmax(axis=1)
        request_id = uuid.uuid4().hex
        now = time.time()
        labels = [self.classes[i] for i in top]
        rounded = probs.astype(np.float64).round(6)
        ids = [f"{request_id}-{i}" for i in range(len(x))]
        self.log.append(
            [
                {"type": "prediction", "id": ids[i], "request_id": request_id, "ts": now, "model": self.model_ref,
                 "features": x[i], "prediction": labels[i], "probabilities": rounded[i]}
                for i in range(len(x))
            ]
        )  # fmt: skip
        for label in labels:
            self.predictions.labels(model=self.model_ref, label=str(label)).inc()
        return orjson.dumps(
            {
                "request_id": request_id,
                "model": self.model_ref,
                "predictions": [
                    {"id": ids[i], "label": labels[i], "probabilities": rounded[i]}
                    for i in range(len(x))
                ],
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )


def _sha256(path: Path) -> str:
    # Same as core.files.sha256, on purpose: the service imports no training code.
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
