"""prepare: a seeded, stratified train/val/test split of the raw data, to Parquet.

Reads ``paths.raw``; writes ``paths.prepared``/{train,val,test}.parquet and
``schema.json``: the feature contract (names, order, classes, ranges and train
statistics) that travels with every registered version. The train split is the
monitoring reference.

This stage does not judge the data, ``validate`` does. It splits whatever it gets
(falling back to an unstratified split when the labels cannot be stratified), so a
broken file fails at ``validate`` with a message that names the problem.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import files
from core.errors import DataError
from pipelines.config import Data, Paths, Prepare

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    rows: dict[str, int]
    dropped_duplicates: int
    stratified: bool


def run(cfg: Prepare, data: Data, paths: Paths, seed: int, root: Path) -> Result:
    try:
        raw = pd.read_csv(root / paths.raw)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {paths.raw}: {exc}. Run `modelyard ingest` first.") from exc

    features = [c for c in data.feature_names if c in raw.columns]
    before = len(raw)
    if cfg.dedupe and features:
        raw = raw.drop_duplicates(subset=features, keep="first").reset_index(drop=True)
    dropped = before - len(raw)
    if dropped:
        log.info("dropped %d rows whose features repeat an earlier row", dropped)

    splits, stratified = _split(raw, data.target, cfg, seed)
    with files.atomic_dir(root / paths.prepared) as out:
        for name, frame in splits.items():
            frame.to_parquet(out / f"{name}.parquet", index=False)
        files.write_json(out / "schema.json", schema(data, splits["train"]))
    return Result({k: len(v) for k, v in splits.items()}, dropped, stratified)


def _split(
    raw: pd.DataFrame, target: str, cfg: Prepare, seed: int
) -> tuple[dict[str, pd.DataFrame], bool]:
    from sklearn.model_selection import train_test_split

    labels = raw[target] if target in raw.columns else None
    stratify = labels is not None and labels.notna().all() and labels.value_counts().min() >= 3
    if not stratify:
        log.warning("labels cannot be stratified (missing, NaN or rare); splitting at random")

    def cut(frame: pd.DataFrame, size: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        strat = frame[target] if stratify else None
        a, b = train_test_split(frame, test_size=size, random_state=seed, stratify=strat)
        return a, b

    rest, test = cut(raw, cfg.test_size)
    train, val = cut(rest, cfg.val_size / (1 - cfg.test_size))
    return {"train": train, "val": val, "test": test}, stratify


def schema(data: Data, train: pd.DataFrame) -> dict[str, Any]:
    """The feature contract: what serving validates requests against."""
    columns = []
    for name in data.feature_names:
        col: dict[str, Any] = {"name": name, "dtype": "float32"}
        bounds = data.range_for(name)
        if bounds is not None:
            col["min"], col["max"] = bounds
        if name in train.columns and pd.api.types.is_numeric_dtype(train[name]):
            values = train[name].to_numpy(dtype=np.float64)
            col["train_mean"] = float(np.nanmean(values)) if len(values) else 0.0
            col["train_std"] = float(np.nanstd(values)) if len(values) else 0.0
            col["train_min"] = float(np.nanmin(values)) if len(values) else 0.0
            col["train_max"] = float(np.nanmax(values)) if len(values) else 0.0
        columns.append(col)
    return {"target": data.target, "classes": list(data.labels), "features": columns}
