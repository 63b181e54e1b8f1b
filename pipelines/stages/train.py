"""train: fit the model family named by ``train.model`` and start the pipeline's MLflow run.

Reads the train/val splits, the schema and the validation summary. Production rows in
the train split (``source`` = "production") weigh ``train.production_weight`` in the
loss (torch: a per-row weighted loss; scikit-learn: ``sample_weight``). Writes the native
model and ``meta.json`` (family, MLflow run id) to ``paths.native``, ``train.json``
(metrics) and ``train_curve.csv`` (a DVC plot) to ``paths.reports``. Logs params,
per-epoch curves and metrics to a new MLflow run, and the train split, both test splits
(base and production) and the schema as the run's ``reference/`` artifacts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core import files
from core.errors import DataValidationError
from core.tagkeys import LineageTag, RunTag
from pipelines import dataset, tracking
from pipelines.config import PRODUCTION_TEST, Params
from pipelines.models import EpochCallback, family

log = logging.getLogger(__name__)

REFERENCE_DIR = "reference"  # run artifact folder: the train split, test splits and schema


@dataclass(frozen=True)
class Result:
    run_id: str
    val_accuracy: float
    best_epoch: int | None
    epochs_run: int
    params: int


def run(params: Params, root: Path, on_epoch: EpochCallback | None = None) -> Result:
    paths, cfg = params.paths, params.train
    try:
        validation = files.read_json(root / paths.report("validate.json"))
    except OSError as exc:
        raise DataValidationError(
            f"no validation result ({exc}); run `modelyard validate` first"
        ) from exc
    if not validation["success"]:
        raise DataValidationError(
            f"data validation failed ({validation['failed']} expectations); nothing was trained. "
            f"See {paths.report('validate.html')} and run `modelyard validate` after fixing the data."
        )
    schema = dataset.load_schema(paths, root)
    train_rows = dataset.read_split(paths, "train", root)
    train = dataset.to_arrays(train_rows, schema)
    weight = dataset.sample_weight(train_rows, cfg.production_weight)
    production = 0 if weight is None else int((train_rows["source"] == "production").sum())
    val = dataset.load_split(paths, "val", schema, root)

    adapter = family(cfg.model)
    with tracking.new_run(
        params.tracking.experiment, root, run_name=f"train-{cfg.model}"
    ) as run_id:
        tracking.log_params(params.train.model_dump(mode="json"), prefix="train.")
        tracking.log_params({"seed": params.seed, LineageTag.DATA_SOURCE: params.ingest.source})
        tracking.log_params({"data.production_train_rows": production})
        tracking.set_tags(
            {RunTag.STAGE: "train", LineageTag.VALIDATION_SUCCESS: validation["success"]}
        )
        tracking.log_metrics(validation["rows"], prefix="rows.")
        # The monitoring reference travels with the run (and so with every version of it).
        # Both test sets too: each version can be re-scored on the rows it was judged on.
        for split in ("train", "test", PRODUCTION_TEST):
            tracking.log_artifact(root / paths.split(split), REFERENCE_DIR)
        tracking.log_artifact(root / paths.schema_file, REFERENCE_DIR)

        def log_epoch(epoch: Any) -> None:
            tracking.log_metrics(
                {"train_loss": epoch.train_loss, "val_loss": epoch.val_loss,
                 "val_accuracy": epoch.val_accuracy},
                step=epoch.epoch,
            )  # fmt: skip
            if on_epoch:
                on_epoch(epoch)

        fitted = adapter.fit(
            cfg,
            train.x,
            train.y,
            val.x,
            val.y,
            len(schema.classes),
            params.seed,
            log_epoch,
            sample_weight=weight,
        )
        val_acc = float((adapter.predict_proba(fitted.model, val.x).argmax(1) == val.y).mean())
        metrics = {
            "val_accuracy": val_acc,
            "best_epoch": fitted.best_epoch or 0,
            "epochs_run": len(fitted.history),
            "parameters": fitted.params,
        }
        tracking.log_metrics(metrics)

        # Every output is computed first, then written: a failure leaves none behind.
        rows: list[dict[str, float | None]] = [
            {"epoch": e.epoch, "train_loss": e.train_loss, "val_loss": e.val_loss,
             "val_accuracy": e.val_accuracy} for e in fitted.history
        ]  # fmt: skip
        # Families without epochs (scikit-learn) get a one-point curve.
        curve = pd.DataFrame(
            rows or [{"epoch": 1, "train_loss": None, "val_loss": None, "val_accuracy": val_acc}]
        )
        with files.atomic_dir(root / paths.native) as out:
            adapter.save(fitted.model, out / adapter.FILE)
            files.write_json(
                out / "meta.json",
                {"family": cfg.model, "file": adapter.FILE, "run_id": run_id, **metrics},
            )
        files.write_metrics(root / paths.report("train.json"), metrics)
        files.write_csv(root / paths.report("train_curve.csv"), curve)

    log.info(
        "trained %s on %d rows (%d production, weight %g): val accuracy %.4f",
        cfg.model,
        len(train.y),
        production,
        cfg.production_weight,
        val_acc,
    )
    return Result(run_id, val_acc, fitted.best_epoch, len(fitted.history), fitted.params)
