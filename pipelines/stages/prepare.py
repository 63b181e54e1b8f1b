"""prepare: a seeded, stratified train/val/test split of the raw data, plus the harvested
production rows, to Parquet.

Reads ``paths.raw`` and ``paths.raw_production`` (ingest's copy of the production labels);
writes ``paths.prepared``/{train,val,test,test_production}.parquet and ``schema.json``:
the feature contract (names, order, classes, ranges and train statistics) that travels
with every registered version. The train split is the monitoring reference.

The base data is split exactly as without production rows (same seed, same rows), so
the base ``test`` split is the same file whether production rows exist or not, and every
version is measured on it. Production rows are split by a hash of their
``prediction_id`` (sha256 -> a number in [0, 1)): below ``production_test_size`` they
form the second test set (``test_production``, with their provenance columns), then
``production_val_size`` go to validation, the rest to training. A row keeps its split
when more labels arrive, so the production test set only grows.

Production rows are dropped (and counted) when their features repeat a base row: the
base data already has that input with its label, and keeping it could put the same
input in two splits. Rows whose features repeat another production row are dropped too,
keeping the earliest labelled (ties: the smaller prediction id), so the earlier row's
split stands as later labels arrive. train/val carry a ``source`` column ("base" |
"production"): training weighs production rows by ``train.production_weight``.

This stage does not judge the data, ``validate`` does. It splits whatever it gets
(falling back to an unstratified split when the labels cannot be stratified), so a
broken file fails at ``validate`` with a message that names the problem.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import files
from core.errors import DataError
from pipelines.config import PRODUCTION_TEST, Data, Paths, Prepare

log = logging.getLogger(__name__)

SOURCE = "source"  # train/val column: where a row came from
BASE, PRODUCTION = "base", "production"


@dataclass(frozen=True)
class Result:
    rows: dict[str, int]
    dropped_duplicates: int
    stratified: bool
    production: dict[str, int]  # production rows per split (train, val, test_production)
    dropped_production: int  # production rows whose features repeat a base or earlier row


def run(cfg: Prepare, data: Data, paths: Paths, seed: int, root: Path) -> Result:
    try:
        raw = pd.read_csv(root / paths.raw)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {paths.raw}: {exc}. Run `modelyard ingest` first.") from exc
    try:
        production = pd.read_parquet(root / paths.raw_production)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {paths.raw_production}: {exc}. Run `modelyard ingest` first."
        ) from exc

    features = [c for c in data.feature_names if c in raw.columns]
    before = len(raw)
    if cfg.dedupe and features:
        raw = raw.drop_duplicates(subset=features, keep="first").reset_index(drop=True)
    dropped = before - len(raw)
    if dropped:
        log.info("dropped %d rows whose features repeat an earlier row", dropped)

    splits, stratified = _split(raw, data.target, cfg, seed)
    production, dropped_production = distinct_production(production, raw, data)
    parts = split_production(production, cfg)
    for name in ("train", "val"):
        splits[name] = _with_source(splits[name], parts[name])
    splits[PRODUCTION_TEST] = parts[PRODUCTION_TEST]
    counts = {name: len(frame) for name, frame in parts.items()}
    if len(production) or dropped_production:
        log.info(
            "production rows: %d train, %d val, %d test_production; dropped %d whose features "
            "repeat a base row or an earlier production row",
            counts["train"],
            counts["val"],
            counts[PRODUCTION_TEST],
            dropped_production,
        )
    with files.atomic_dir(root / paths.prepared) as out:
        for name, frame in splits.items():
            frame.to_parquet(out / f"{name}.parquet", index=False)
        files.write_json(out / "schema.json", schema(data, splits["train"]))
    return Result(
        {k: len(v) for k, v in splits.items()}, dropped, stratified, counts, dropped_production
    )


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


def row_keys(frame: pd.DataFrame, features: list[str]) -> pd.Series:
    """A hash of each row's feature values, equal for equal values whatever the dtype
    (the CSV reads pixels as int64, harvest writes float64)."""
    values = frame[features].astype("float64")
    return pd.util.hash_pandas_object(values, index=False)


def distinct_production(
    production: pd.DataFrame, base: pd.DataFrame, data: Data
) -> tuple[pd.DataFrame, int]:
    """Production rows whose features repeat no base row and no earlier production row
    (earliest ``labelled_at`` first, then ``prediction_id``), and how many were dropped."""
    features = data.feature_names
    if production.empty or any(c not in production.columns for c in features):
        return production, 0  # validate names the missing columns
    order = [c for c in ("labelled_at", "prediction_id") if c in production.columns]
    rows = production.sort_values(order, kind="stable") if order else production
    keys = row_keys(rows, features)
    seen = set(row_keys(base, features)) if all(c in base.columns for c in features) else set()
    keep = ~keys.duplicated() & ~keys.isin(seen)
    out = rows[keep.to_numpy()]
    return out.sort_index().reset_index(drop=True), int((~keep).sum())


def hash_share(prediction_id: str) -> float:
    """A stable number in [0, 1) for a prediction id (sha256, first 8 bytes)."""
    digest = hashlib.sha256(str(prediction_id).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_production(production: pd.DataFrame, cfg: Prepare) -> dict[str, pd.DataFrame]:
    """train / val / test_production by ``hash_share(prediction_id)``: a row's split
    depends on its id alone, never on which other rows exist."""
    if production.empty or "prediction_id" not in production.columns:
        empty = production.iloc[0:0]
        return {"train": empty, "val": empty, PRODUCTION_TEST: empty}
    share = production["prediction_id"].map(hash_share).to_numpy(dtype=np.float64)
    test = share < cfg.production_test_size
    val = ~test & (share < cfg.production_test_size + cfg.production_val_size)
    train = ~test & ~val
    return {
        "train": production[train].reset_index(drop=True),
        "val": production[val].reset_index(drop=True),
        PRODUCTION_TEST: production[test].reset_index(drop=True),
    }


def _with_source(base: pd.DataFrame, production: pd.DataFrame) -> pd.DataFrame:
    """The base split (as it is) then its production rows, contract columns only, with
    ``source`` saying which is which."""
    out = base.assign(**{SOURCE: BASE})
    if production.empty:
        return out
    columns = [c for c in base.columns if c in production.columns]
    extra = production[columns].assign(**{SOURCE: PRODUCTION})
    return pd.concat([out, extra], ignore_index=False)


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
