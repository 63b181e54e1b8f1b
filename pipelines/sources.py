"""Reading a dataset as ``ingest.source`` names it: the one reader ``ingest`` and ``init`` share.

``sklearn:<name>`` is a dataset scikit-learn bundles (so a fresh clone runs offline);
anything else is a CSV or Parquet file, relative to the project root. Columns come back
as the file has them: checking them is the ``validate`` stage's job.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from core.errors import ConfigError, DataError

BUNDLED = ("digits", "wine", "iris", "breast_cancer")
PREFIX = "sklearn:"


def is_bundled(source: str) -> bool:
    return source.startswith(PREFIX)


def read(source: str, *, target: str, root: Path) -> pd.DataFrame:
    """The table ``source`` names; a bundled dataset's label column is named ``target``."""
    if is_bundled(source):
        return _bundled(source.removeprefix(PREFIX), target)
    path = root / source
    if not path.exists():
        raise ConfigError(
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
