"""One pass over a window of the inference log: counts, a seeded sample, labels, shadows.

``scan`` is what ``monitor run`` reads the log with. It counts every prediction in the
window (per model version), keeps a seeded uniform sample of ``sample_rows`` of them
(reservoir sampling), remembers every feedback label by prediction id, and every shadow
record (``modelyard serve --shadow``: the challenger's answer to the same request, which
holds the champion's answer too, so agreement needs no join). Memory is bounded by the
sample, the labels and the shadow answers (no features), not by the log.

Log records (services/service.py writes them, one JSON object per line):

- ``{"type": "prediction", "id", "request_id", "ts", "model", "features", "prediction",
  "probabilities"}``
- ``{"type": "feedback", "id", "label", "ts"}``
- ``{"type": "shadow", "id", "ts", "model" (the challenger), "champion", "prediction"
  (null when the challenger failed), "champion_prediction", "error" (null or the reason)}``
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import MonitoringError
from services import inference_log


@dataclass(frozen=True)
class Shadow:
    """One shadow record: the challenger's answer beside the champion's."""

    id: str
    model: str  # the challenger, NAME/VERSION
    champion: str  # the champion, NAME/VERSION
    prediction: Any  # None when the challenger failed on this request
    champion_prediction: Any
    error: str | None = None


@dataclass
class WindowSample:
    since: float
    until: float
    rows: int = 0  # predictions in the window
    sample: list[dict[str, Any]] = field(default_factory=list)
    feedback: dict[str, Any] = field(default_factory=dict)
    models: Counter[str] = field(default_factory=Counter)
    shadow: list[Shadow] = field(default_factory=list)
    stats: inference_log.ReadStats = field(default_factory=inference_log.ReadStats)
    skipped: int = 0  # complete JSON lines that are not usable records


def scan(log_dir: Path, since: float, until: float, sample_rows: int, seed: int) -> WindowSample:
    """One pass over the log: count, sample (reservoir), join feedback, collect shadows."""
    if not log_dir.is_dir():
        raise MonitoringError(
            f"no inference log at {log_dir}: point MODELYARD_LOG_DIR (or --log-dir) at the "
            "service's log folder"
        )
    window = WindowSample(since, until)
    rng = random.Random(seed)
    sample = window.sample
    for record in inference_log.read(log_dir, window.stats, newer_than=since):
        kind = record.get("type")
        ts = record.get("ts")
        if not isinstance(ts, (int, float)) or not since <= ts < until:
            continue
        if kind == "feedback":
            window.feedback[str(record.get("id"))] = record.get("label")
            continue
        if kind == "shadow":
            window.shadow.append(
                Shadow(
                    str(record.get("id")),
                    str(record.get("model")),
                    str(record.get("champion")),
                    record.get("prediction"),
                    record.get("champion_prediction"),
                    record.get("error"),
                )
            )
            continue
        if kind != "prediction" or not isinstance(record.get("features"), list):
            window.skipped += 1
            continue
        window.rows += 1
        window.models[str(record.get("model"))] += 1
        if len(sample) < sample_rows:
            sample.append(record)
        else:
            j = int(rng.random() * window.rows)
            if j < sample_rows:
                sample[j] = record
    return window
