"""ingest: materialize the raw dataset as one CSV under ``paths.raw``.

Reads ``ingest.source`` through ``pipelines.sources``: ``sklearn:<name>`` for a dataset
scikit-learn bundles (so a fresh clone runs offline), or a CSV/Parquet file (track it
with ``dvc add``). Writes the file as it is, columns untouched: checking it is the
``validate`` stage's job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from core import files
from pipelines import sources
from pipelines.config import Data, Ingest, Paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    path: Path
    rows: int
    columns: int


def run(cfg: Ingest, data: Data, paths: Paths, root: Path) -> Result:
    frame = sources.read(cfg.source, target=data.target, root=root)
    files.write_csv(root / paths.raw, frame)
    log.info("ingested %d rows x %d columns from %s", len(frame), frame.shape[1], cfg.source)
    return Result(paths.raw, len(frame), frame.shape[1])
