"""Is the live endpoint serving the version we just deployed? ``modelyard deploy smoke``.

Three checks against a running service (the deploy workflow runs them on staging, then
on production, and rolls back when one fails):

1. ``GET /readyz`` answers 200;
2. ``GET /v1/metadata`` names the expected model and version;
3. ``POST /v1/predict`` with one probe row (the middle of every feature's training
   range, from the version's schema) returns one prediction whose label is the one the
   registered artifact itself gives that row (ONNX Runtime here), with probabilities
   that sum to 1.

Reads the service over HTTP and the registry version's artifact; writes nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from core.errors import DeployError, ExternalServiceError
from core.http import request_json

if TYPE_CHECKING:
    from registry.client import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passed:
    url: str
    model: str  # NAME/VERSION as the service reports it
    label: Any  # the probe row's prediction


@dataclass(frozen=True)
class Probe:
    """One valid input (the middle of every feature's training range, from the version's
    schema) and the label the registered artifact itself gives it."""

    row: list[float]
    label: Any


def probe(registry: Registry, name: str, version: str) -> Probe:
    import numpy as np
    import onnxruntime as ort
    import yaml

    folder = registry.download(name, version)
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    schema = (mlmodel.get("metadata") or {}).get("schema") or {}
    if not schema.get("features"):
        raise DeployError(f"{name} v{version} has no feature schema: cannot build a probe")
    row = [(float(f["min"]) + float(f["max"])) / 2 for f in schema["features"]]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {session.get_inputs()[0].name: np.asarray([row], dtype=np.float32)}
    probs = session.run(["probabilities"], inputs)[0]
    return Probe(row, schema["classes"][int(probs.argmax(axis=1)[0])])


def check(
    url: str,
    *,
    name: str,
    version: str,
    api_key: str | None,
    expected: Probe,
    timeout: float = 10.0,
) -> Passed:
    """Run the three checks; DeployError says which one failed and what was seen."""
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        ready = httpx.get(f"{base}/readyz", timeout=timeout)
    except httpx.HTTPError as exc:
        raise DeployError(f"{base}/readyz is unreachable: {exc}") from exc
    if ready.status_code != 200:
        raise DeployError(f"{base}/readyz answered {ready.status_code}, not 200")
    try:
        _, meta = request_json(
            "GET", f"{base}/v1/metadata", headers=headers, timeout=timeout, what="the service"
        )
        served = f"{meta.get('name')}/{meta.get('version')}"
        if served != f"{name}/{version}":
            raise DeployError(f"{base} serves {served}, expected {name}/{version}")
        _, answer = request_json(
            "POST",
            f"{base}/v1/predict",
            {"inputs": [expected.row]},
            headers=headers,
            timeout=timeout,
            what="the service",
        )
    except ExternalServiceError as exc:
        raise DeployError(f"{exc}") from exc
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if not predictions or len(predictions) != 1:
        raise DeployError(f"/v1/predict answered {answer!r}, not one prediction")
    (prediction,) = predictions
    label, probabilities = prediction.get("label"), prediction.get("probabilities") or []
    if not math.isclose(sum(probabilities), 1, abs_tol=1e-3):
        raise DeployError(f"/v1/predict answered {prediction!r}: not a distribution")
    if label != expected.label:
        raise DeployError(
            f"{served} predicts {label!r} for the probe row; the registered artifact "
            f"predicts {expected.label!r}"
        )
    return Passed(base, served, label)
