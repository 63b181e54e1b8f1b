"""ingest: materialize the raw dataset as one CSV under ``paths.raw``.

Reads ``ingest.source``: ``sklearn:<name>`` for a dataset scikit-learn bundles (so a
fresh clone runs offline), or a CSV/Parquet file (track it with ``dvc add``). Writes
the file as it is, columns untouched: checking it is the ``validate`` stage's job.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core import files
from core.errors import DataError
from pipelines.config import Data, Ingest, Paths

log = logging.getLogger(__name__)

BUNDLED = ("digits", "wine", "iris", "breast_cancer")


@dataclass(frozen=True)
class Result:
    path: Path
    rows: int
    columns: int


def run(cfg: Ingest, data: Data, paths: Paths, root: Path) -> Result:
    frame = _read(cfg.source, data.target, root)
    files.write_csv(root / paths.raw, frame)
    log.info("ingested %d rows x %d columns from %s", len(frame), frame.shape[1], cfg.source)
    return Result(paths.raw, len(frame), frame.shape[1])


def _read(source: str, target: str, root: Path) -> pd.DataFrame:
    if source.startswith("sklearn:"):
        return _bundled(source.removeprefix("sklearn:"), target)
    path = root / source
    if not path.exists():
        raise DataError(
            f"ingest.source {source!r} does not exist. Put the file under data/sources/ "
            "and track it with `dvc add`, or use sklearn:<name>."
        )
    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    raise DataError(f"ingest.source {source!r}: expected a .csv or .parquet file")


def _bundled(name: str, target: str) -> pd.DataFrame:
    import sklearn.datasets

    if name not in BUNDLED:
        raise DataError(f"unknown bundled dataset {name!r}; choose one of {', '.join(BUNDLED)}")
    loader = getattr(sklearn.datasets, f"load_{name}")
    bunch = loader(as_frame=True)
    frame = bunch.frame.rename(columns={"target": target})
    if name == "digits":
        # sklearn names them pixel_<row>_<col>; a flat index is easier to declare in params.
        frame.columns = [*(f"pixel_{i}" for i in range(64)), target]
    else:
        frame.columns = [_snake(c) if c != target else c for c in frame.columns]
    return frame


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()
