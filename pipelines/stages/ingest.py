"""ingest: materialize the raw dataset under ``paths.raw``, and the harvested production
rows it trains on under ``paths.raw_production``.

Reads ``ingest.source`` through ``pipelines.sources``: ``sklearn:<name>`` for a dataset
scikit-learn bundles (so a fresh clone runs offline), or a CSV/Parquet file (track it
with ``dvc add``). Writes the file as it is, columns untouched: checking it is the
``validate`` stage's job.

The second source is ``ingest.production``: ``modelyard harvest``'s labelled.parquet
(production predictions that got a feedback label, with their provenance columns). When
enabled and present, its rows are copied to ``paths.raw_production``; with
``last_days``, only those labelled within that many days of the *newest* label (not of
today, so a re-run on the same file takes the same rows). Disabled or missing, an empty
table with the same columns is written, so the stages after ingest always find one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from core import files
from core.errors import DataError
from pipelines import sources
from pipelines.config import PROVENANCE, Data, Ingest, Paths, ProductionSource

log = logging.getLogger(__name__)

DAY = 86_400.0


@dataclass(frozen=True)
class Result:
    path: Path
    rows: int
    columns: int
    production_path: Path
    production_rows: int  # rows written to paths.raw_production
    production_skipped: int  # rows of the harvested file older than last_days


def run(cfg: Ingest, data: Data, paths: Paths, root: Path) -> Result:
    frame = sources.read(cfg.source, target=data.target, root=root)
    production, skipped = production_rows(cfg.production, data, root)
    files.write_csv(root / paths.raw, frame)
    files.write_parquet(root / paths.raw_production, production)
    log.info("ingested %d rows x %d columns from %s", len(frame), frame.shape[1], cfg.source)
    return Result(
        paths.raw, len(frame), frame.shape[1], paths.raw_production, len(production), skipped
    )


def empty_production(data: Data) -> pd.DataFrame:
    """No production rows, with the columns (and dtypes) harvest writes."""
    label = "int64" if all(isinstance(x, int) for x in data.labels) else "str"
    columns = {name: pd.Series(dtype="float64") for name in data.feature_names}
    columns[data.target] = pd.Series(dtype=label)
    columns.update({name: pd.Series(dtype=dtype) for name, dtype in PROVENANCE.items()})
    return pd.DataFrame(columns)


def production_rows(cfg: ProductionSource, data: Data, root: Path) -> tuple[pd.DataFrame, int]:
    """The harvested rows to train on, and how many ``last_days`` left out."""
    path = root / cfg.path
    if not cfg.enabled:
        log.info("production rows: ingest.production.enabled is false; none taken")
        return empty_production(data), 0
    if not path.exists():
        log.info("production rows: %s does not exist (nothing harvested yet); none taken", path)
        return empty_production(data), 0
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {cfg.path}: {exc}. Run `modelyard harvest` again, or set "
            "ingest.production.enabled: false to train on the base data only."
        ) from exc
    skipped = 0
    if cfg.last_days is not None and len(frame):
        if "labelled_at" not in frame.columns:
            raise DataError(
                f"{cfg.path} has no labelled_at column, so ingest.production.last_days cannot "
                "select rows: harvest it again with `modelyard harvest`, or set last_days: null"
            )
        labelled = pd.to_numeric(frame["labelled_at"], errors="coerce")
        keep = labelled >= labelled.max() - cfg.last_days * DAY
        skipped = int((~keep).sum())
        frame = frame[keep.to_numpy()].reset_index(drop=True)
    span = ""
    if len(frame) and "labelled_at" in frame.columns:
        times = pd.to_datetime(frame["labelled_at"], unit="s", utc=True, errors="coerce")
        span = f", labelled {times.min():%Y-%m-%d %H:%M} .. {times.max():%Y-%m-%d %H:%M} UTC"
    log.info(
        "production rows: took %d from %s%s%s",
        len(frame),
        cfg.path,
        span,
        f"; left out {skipped} labelled over {cfg.last_days:g} days before the newest"
        if skipped and cfg.last_days is not None
        else "",
    )
    return frame, skipped
