"""Is the live endpoint serving the version we just deployed? ``modelyard deploy smoke``.

Two checks against a running service through its public URL (the deploy workflow runs
them on staging, then on production, and rolls back when one fails):

1. ``GET /v1/metadata`` (the API's own route: the Ingress sends only ``/v1`` to the API)
   names the expected model and version. Until ``wait_s`` has passed this is retried
   with backoff: a connection or TLS error (cert-manager still issuing), a 404/502/503/504
   (the Ingress not routing yet), or another version (old pods still behind it). A 401
   or 403 fails at once: a wrong key does not fix itself.
2. ``POST /v1/predict`` with one probe row (the middle of every feature's training
   range, from the version's schema) returns one prediction whose label is the one the
   registered artifact itself gives that row (ONNX Runtime here), with probabilities
   that sum to 1.

Reads the service over HTTP and the registry version's artifact; writes nothing.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
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


WAITED_STATUS = frozenset({404, 502, 503, 504})  # not routed or not ready yet


def check(
    url: str,
    *,
    name: str,
    version: str,
    api_key: str | None,
    expected: Probe,
    timeout: float = 10.0,
    wait_s: float = 180.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Passed:
    """Run the two checks; DeployError says which one failed and what was seen."""
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = clock() + wait_s
    pause = 1.0
    while True:
        seen = _metadata(base, headers, timeout, f"{name}/{version}")
        if seen is None:
            break
        if clock() + pause > deadline:
            raise DeployError(f"{seen} (still after waiting {wait_s:g} s)")
        log.info("smoke: %s; trying again in %.0f s", seen, pause)
        sleep(pause)
        pause = min(pause * 2, 15.0)
    try:
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
    served = f"{name}/{version}"
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


def _metadata(base: str, headers: dict[str, str], timeout: float, expected: str) -> str | None:
    """None when /v1/metadata names ``expected``; else what was seen, to wait on. A 401,
    403 or other client error is a DeployError at once."""
    try:
        response = httpx.get(f"{base}/v1/metadata", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{base}/v1/metadata is unreachable: {exc}"
    if response.status_code in WAITED_STATUS:
        return f"{base}/v1/metadata answered HTTP {response.status_code}"
    if response.status_code != 200:
        raise DeployError(
            f"{base}/v1/metadata answered HTTP {response.status_code}: {response.text[:300]!r}"
        )
    try:
        meta = response.json()
        served = f"{meta.get('name')}/{meta.get('version')}"
    except (ValueError, AttributeError):
        raise DeployError(f"{base}/v1/metadata answered {response.text[:300]!r}") from None
    return None if served == expected else f"{base} serves {served}, expected {expected}"
