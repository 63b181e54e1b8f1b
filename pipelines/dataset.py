"""Reading the prepared splits as model inputs, through the schema written by prepare.

Features come out as float32 in the schema's column order; labels as indices into the
schema's ``classes`` (so every family trains on 0..C-1 and ONNX probabilities line up
with ``classes``).
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
    path = root / paths.split(name)
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}. Run `modelyard prepare` first.") from exc
    return to_arrays(frame, schema)


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
