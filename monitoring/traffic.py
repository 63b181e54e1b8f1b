"""`modelyard simulate-traffic`: real digits from the test split to the running service,
clean or drifted, for demos and tests.

Drift kinds (applied to the 8x8 images, clipped to the training range):
- ``noise``: Gaussian pixel noise (std ``strength`` x 4 intensity levels);
- ``shift``: the image moved ``strength`` pixels to the right (a misaligned camera);
- ``invert``: max - x (a sensor that swapped black and white);
- ``occlude``: the left half of every image blacked out (a dead half of the sensor).

Requests go in batches over HTTP (``/v1/predict``), with the API key if given; a share
of the predictions can get feedback (``/v1/feedback``) with the true label.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core import http
from core.errors import ConfigError, DataError
from pipelines.config import SPLITS, Params

log = logging.getLogger(__name__)

Kind = Literal["none", "noise", "shift", "invert", "occlude"]
KINDS: tuple[str, ...] = ("none", "noise", "shift", "invert", "occlude")


def distort(
    x: np.ndarray,
    kind: str,
    *,
    strength: float,
    low: float,
    high: float,
    rng: np.random.Generator,
    shape: tuple[int, int] = (8, 8),
) -> np.ndarray:
    """A drifted copy of ``x`` (rows of flattened images)."""
    if kind == "none":
        return x.copy()
    images = x.reshape(-1, *shape).astype(np.float64)
    if kind == "noise":
        images = images + rng.normal(0, 4 * strength, images.shape)
    elif kind == "shift":
        step = max(1, round(strength))
        images = np.roll(images, step, axis=2)
        images[:, :, :step] = low
    elif kind == "invert":
        images = high + low - images
    elif kind == "occlude":
        images[:, :, : shape[1] // 2] = low
    else:
        raise ValueError(f"unknown drift kind {kind!r}: one of {', '.join(KINDS)}")
    return np.clip(images, low, high).reshape(len(x), -1)


@dataclass(frozen=True)
class Sent:
    requests: int = 0
    rows: int = 0
    feedback: int = 0


class Client:
    """The model service, over one kept-alive connection (``with Client(...) as c``)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30) -> None:
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout
        self.session = http.Session()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        _, reply = http.request_json(
            "POST",
            f"{self.url}{path}",
            body,
            headers=headers,
            timeout=self.timeout,
            what="the service",
            client=self.session,
        )
        return dict(reply or {})


def send(
    client: Client,
    x: np.ndarray,
    labels: list[Any],
    *,
    rows: int,
    batch: int,
    feedback_share: float,
    rng: np.random.Generator,
    progress: Callable[[int], None] | None = None,
) -> Sent:
    """Send ``rows`` rows drawn (cycling) from ``x``, ``batch`` per request."""
    requests = sent_rows = feedback = 0
    order = np.resize(rng.permutation(len(x)), rows)
    for start in range(0, rows, batch):
        idx = order[start : start + batch]
        payload = [[float(v) for v in row] for row in x[idx]]
        reply = client.post("/v1/predict", {"inputs": payload})
        requests += 1
        sent_rows += len(idx)
        for pred, i in zip(reply["predictions"], idx, strict=True):
            if feedback_share > 0 and rng.random() < feedback_share:
                client.post("/v1/feedback", {"id": pred["id"], "label": labels[i]})
                feedback += 1
        if progress:
            progress(len(idx))
    return Sent(requests=requests, rows=sent_rows, feedback=feedback)


def batches(rows: int, batch: int) -> int:
    return math.ceil(rows / batch)


def simulate(
    params: Params,
    root: Path,
    *,
    url: str,
    rows: int,
    batch: int,
    drift: str,
    strength: float,
    feedback: float,
    api_key: str | None,
    seed: int,
    split: str = "test",
    progress: Callable[[int], None] | None = None,
) -> Sent:
    """Send ``rows`` real rows of a prepared ``split`` (distorted by ``drift``) to the
    service. Only the split's base rows: harvested production rows (``source`` column)
    are what earlier traffic looked like, not the dataset's own digits."""
    import pandas as pd

    if drift not in KINDS:
        raise ConfigError(f"--drift {drift!r}: one of {', '.join(KINDS)}")
    if split not in SPLITS:
        raise ConfigError(f"--split {split!r}: one of {', '.join(SPLITS)}")
    split_file = root / params.paths.split(split)
    if not split_file.exists():
        raise DataError(f"{split_file} not found: run the pipeline first (`modelyard run`)")
    frame = pd.read_parquet(split_file)
    if "source" in frame.columns:
        frame = frame[frame["source"] != "production"]
    features = params.data.feature_names
    low, high = params.data.feature_range or (
        float(frame[features].min().min()),
        float(frame[features].max().max()),
    )
    rng = np.random.default_rng(seed)
    x = distort(
        frame[features].to_numpy(np.float64), drift, strength=strength, low=low, high=high, rng=rng
    )
    labels = frame[params.data.target].tolist()
    with Client(url, api_key) as client:
        return send(
            client,
            x,
            labels,
            rows=rows,
            batch=batch,
            feedback_share=feedback,
            rng=rng,
            progress=progress,
        )
