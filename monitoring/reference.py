"""The serving version's references, through its registry lineage: the training split
(or its production rows) drift is measured against, and the held-out test split
classification quality is measured against, each scored once by the version and cached."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import files
from core.errors import (
    MonitoringError,
)
from core.tagkeys import DataTag
from monitoring import drift
from registry.client import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """The serving version's references: ``frame``, what drift is measured against (the
    training split, or only its production rows for a version that learned from enough
    of them: ``drift_split``), and ``quality``, what classification quality is measured against:
    the held-out test split scored by the version (``data.test_uri``), or the training
    split again for a version registered without one (``quality_note`` says so and why).
    Both: the features + drift.PREDICTION (str) + drift.TARGET."""

    name: str
    version: str
    frame: pd.DataFrame
    features: list[str]
    classes: list[Any]
    constant: list[str]  # features constant in the reference: no drift test possible
    uri: str
    quality: pd.DataFrame
    quality_split: str  # "test" | "train"
    quality_uri: str
    quality_note: str | None = None
    drift_split: str = "train"  # "train" | "train:production" (see reference_for)


# A version retrained on production labels is compared with the production traffic it
# learned from, not with the whole training split: after a retrain on a new writing style,
# the question is whether traffic moved away from what the model last learned. The base
# rows still train it (and the base test split still gates it); they no longer say what
# production looks like.
PRODUCTION = "production"


def reference_for(
    registry: Registry, model_ref: str, cache: Path, *, production_min: int | None = None
) -> Reference:
    """The serving version's training split (``data.reference_uri``) and held-out test
    split (``data.test_uri``), through its registry lineage, each scored once by the
    version's own model and cached per version under ``cache``. When the training split
    holds at least ``production_min`` harvested production rows (its ``source`` column),
    drift is measured against those rows only (``drift_split`` "train:production")."""
    name, _, version = model_ref.rpartition("/")
    if not name or not version.isdigit():
        raise MonitoringError(f"the log names model {model_ref!r}, expected NAME/VERSION")
    tags = registry.version(name, version).tags
    uri = tags.get(DataTag.REFERENCE_URI)
    if not uri:
        raise MonitoringError(
            f"{name} v{version} has no data.reference_uri tag: its training run is not in this "
            "registry's store, so there is no reference. Register a version trained against this "
            "store (`modelyard run`) and serve it."
        )
    test_uri = tags.get(DataTag.TEST_URI) or None
    cached = cache / f"{name}-v{version}.parquet"
    test_cached = cache / f"{name}-v{version}-test.parquet"
    meta_file = cache / f"{name}-v{version}.json"
    meta = files.read_json(meta_file) if meta_file.exists() else {}
    # a cache written before test splits (no "test_uri" key), or before the tag was set
    fresh = (
        cached.exists()
        and "test_uri" in meta
        and meta["test_uri"] == test_uri
        and meta.get("production_min", -1) == production_min
    )
    if fresh and (test_uri is None or test_cached.exists()):
        frame = pd.read_parquet(cached)
        quality = pd.read_parquet(test_cached) if test_uri else frame
    else:
        frame, test, meta = _build_reference(
            registry, name, version, uri, test_uri, production_min=production_min
        )
        cache.mkdir(parents=True, exist_ok=True)
        files.write_parquet(cached, frame)
        if test is not None:
            files.write_parquet(test_cached, test)
        files.write_json(meta_file, meta)
        quality = frame if test is None else test
    features = list(meta["features"])
    constant = [f for f in features if frame[f].nunique() <= 1]
    note = None
    if test_uri is None:
        note = (
            f"{name} v{version} has no data.test_uri tag (registered before the held-out test "
            "split was logged with its training run), so classification quality is compared "
            "with the training split scored by its own model, which overstates the reference. "
            "Register a new version (`modelyard run`) for a held-out reference."
        )
        log.warning("quality reference: %s", note)
    return Reference(
        name,
        version,
        frame,
        features,
        list(meta["classes"]),
        constant,
        uri,
        quality=quality,
        quality_split="train" if test_uri is None else "test",
        quality_uri=test_uri or uri,
        quality_note=note,
        drift_split=str(meta.get("drift_split", "train")),
    )


def drift_rows(split: pd.DataFrame, production_min: int | None) -> tuple[pd.DataFrame, str]:
    """What drift is measured against: the training split's production rows when there
    are at least ``production_min`` of them (``reference_for`` says why), else all of it."""
    if production_min is not None and "source" in split.columns:
        learned = split[split["source"] == PRODUCTION]
        if len(learned) >= production_min:
            return learned, f"train:{PRODUCTION}"
    return split, "train"


def _build_reference(
    registry: Registry,
    name: str,
    version: str,
    uri: str,
    test_uri: str | None,
    *,
    production_min: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, Any]]:
    """The training split, or its production rows (``reference_for``), and the test split
    if ``test_uri``, scored by the version's ONNX model; and the meta (features, classes,
    both URIs, which rows) the cache keeps."""
    from pipelines import inference

    folder = registry.download_artifacts(uri.rsplit("/", 1)[0])
    split = pd.read_parquet(folder / uri.rsplit("/", 1)[1])
    test = pd.read_parquet(registry.download_artifacts(test_uri)) if test_uri else None
    schema = files.read_json(folder / "schema.json")
    features = [f["name"] for f in schema["features"]]
    classes = list(schema["classes"])
    with tempfile.TemporaryDirectory(prefix="modelyard-model-") as scratch:
        model = registry.download(name, version, Path(scratch)) / "model.onnx"
        session = inference.session(model)

    def scored(rows: pd.DataFrame) -> pd.DataFrame:
        probs = inference.predict_proba(session, rows[features].to_numpy(np.float32))
        frame = rows[features].astype("float64")
        frame[drift.PREDICTION] = [str(classes[i]) for i in probs.argmax(axis=1)]
        frame[drift.TARGET] = rows[schema["target"]].astype(str).to_numpy()
        return frame.reset_index(drop=True)

    split, drift_split = drift_rows(split, production_min)
    frame = scored(split)
    quality = scored(test) if test is not None else None
    log.info(
        "reference for %s v%s: %d %s rows from %s; quality reference: %s",
        name,
        version,
        len(frame),
        drift_split,
        uri,
        f"{len(quality)} held-out test rows from {test_uri}" if quality is not None else "none",
    )
    meta = {
        "features": features,
        "classes": classes,
        "uri": uri,
        "test_uri": test_uri,
        "drift_split": drift_split,
        "production_min": production_min,
    }
    return frame, quality, meta
