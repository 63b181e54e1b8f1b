"""Reading the prepared splits as model inputs, through the schema written by prepare.

Features come out as float32 in the schema's column order; labels as indices into the
schema's ``classes`` (so every family trains on 0..C-1 and ONNX probabilities line up
with ``classes``). ``sample_weight`` reads the ``source`` column prepare writes on
train/val: how much each row counts in the training loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import files
from core.errors import DataError
from pipelines.config import Paths


@dataclass(frozen=True)
class Schema:
    target: str
    classes: list[Any]
    features: list[dict[str, Any]]

    @property
    def feature_names(self) -> list[str]:
        return [f["name"] for f in self.features]

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "classes": self.classes, "features": self.features}


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray


def load_schema(paths: Paths, root: Path) -> Schema:
    path = root / paths.schema_file
    try:
        raw = files.read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}. Run `modelyard prepare` first.") from exc
    return Schema(raw["target"], raw["classes"], raw["features"])


def load_split(paths: Paths, name: str, schema: Schema, root: Path) -> Split:
    return to_arrays(read_split(paths, name, root), schema)


def read_split(paths: Paths, name: str, root: Path) -> pd.DataFrame:
    """A prepared split as prepare wrote it (all columns, ``source`` and provenance too)."""
    path = root / paths.split(name)
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}. Run `modelyard prepare` first.") from exc


def sample_weight(frame: pd.DataFrame, production_weight: float) -> np.ndarray | None:
    """Per-row loss weights: ``production_weight`` for production rows, 1 for base rows.
    None when every row is a base row (the families then train exactly as unweighted)."""
    if "source" not in frame.columns:
        return None
    production = (frame["source"] == "production").to_numpy()
    if not production.any():
        return None
    return np.where(production, production_weight, 1.0).astype(np.float32)


def to_arrays(frame: pd.DataFrame, schema: Schema) -> Split:
    missing = [c for c in [*schema.feature_names, schema.target] if c not in frame.columns]
    if missing:
        raise DataError(f"columns {missing} missing; run `modelyard validate` to see why")
    index = {str(c): i for i, c in enumerate(schema.classes)}
    labels = frame[schema.target].map(lambda v: index.get(str(v), -1)).to_numpy(dtype=np.int64)
    if (labels < 0).any():
        raise DataError("labels outside data.labels; run `modelyard validate` to see which")
    x = frame[schema.feature_names].to_numpy(dtype=np.float32)
    return Split(np.ascontiguousarray(x), labels)
