"""Production rows as `modelyard harvest` writes them (data/production/labelled.parquet),
made from the digits with a new "writing style": every image shifted one pixel right."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import config

FEATURES = [f"pixel_{i}" for i in range(64)]
PROVENANCE = list(config.PROVENANCE)
T0 = 1_780_000_000.0  # labelled_at of the first row (UNIX seconds)


def digits() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    frame.columns = [*FEATURES, "label"]
    return frame


def shifted(frame: pd.DataFrame) -> pd.DataFrame:
    """The images one pixel to the right (column 0 blank, so pixel_0 stays 0)."""
    x = frame[FEATURES].to_numpy(np.float64).reshape(-1, 8, 8)
    out = np.zeros_like(x)
    out[:, :, 1:] = x[:, :, :-1]
    return pd.DataFrame(out.reshape(-1, 64), columns=FEATURES)


def labelled(n: int, *, start: int = 0, seed: int = 0, every_s: float = 60.0) -> pd.DataFrame:
    """``n`` labelled production rows (ids p<start>..), one label a minute from T0."""
    base = digits()
    rows = base.sample(n=n, replace=n > len(base), random_state=seed).reset_index(drop=True)
    frame = shifted(rows)
    frame["label"] = rows["label"].astype("int64").to_numpy()
    ids = range(start, start + n)
    frame["prediction_id"] = [f"p{i:06d}" for i in ids]
    frame["model"] = "digits-classifier/1"
    frame["prediction"] = [str((int(y) + 1) % 10) for y in frame["label"]]  # v1 was wrong
    frame["labelled_at"] = [T0 + i * every_s for i in ids]
    frame["predicted_at"] = frame["labelled_at"] - 30.0
    frame["log_file"] = "predictions-000001.jsonl"
    frame["harvested_at"] = "2026-06-01T00:00:00+00:00"
    return frame[[*FEATURES, "label", *PROVENANCE]]


def write(root: Path, frame: pd.DataFrame) -> Path:
    path = root / "data/production/labelled.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path
