"""The drift job's MLflow run (experiment ``<tracking.experiment>-monitoring``): logged
with the verdict (``log_drift_run``), finished with what the actions did."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from core.errors import (
    ModelyardError,
    RegistryError,
)
from core.tagkeys import RetrainTag
from monitoring.verdict import DRIFT, FAILED, LOGGED, RETRAINED, DriftRun, Summary
from pipelines.config import Params

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _tracking_errors(what: str) -> Iterator[None]:
    """MLflow errors (an outage, a refusal) while logging the drift run, as RegistryError."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:
        raise RegistryError(f"cannot {what}: {exc}") from exc


def last_checked_until(experiment: str, root: Path) -> float | None:
    """Where the latest window a drift run judged ended (its ``window`` tag, the run
    finished), as a timestamp; None when no run judged one. RegistryError when the store
    cannot be read: the job does not guess its window."""
    import mlflow

    from pipelines import tracking

    with _tracking_errors(f"read the last drift run of {experiment!r}"):
        tracking.configure(root)
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = mlflow.MlflowClient().search_runs(
            [found.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=50,
        )
    ends = []
    for run in runs:
        _, sep, until = run.data.tags.get("window", "").partition(" .. ")
        with contextlib.suppress(ValueError):
            if sep:
                ends.append(datetime.fromisoformat(until).timestamp())
    return max(ends, default=None)


def log_drift_run(params: Params, summary: Summary, *, root: Path) -> DriftRun:
    """The verdict as an MLflow run in ``<tracking.experiment>-monitoring``: metrics
    (drift_share, rows, rows per model version), tags (status, model, window), and
    report.html for a drift verdict.
    A failure is recorded (the job exits 2), never raised."""
    from pipelines import tracking

    experiment = f"{params.tracking.experiment}-monitoring"
    metrics: dict[str, float] = {
        "drift_share": summary.drift_share or 0.0,
        "rows": summary.rows,
        "sampled": summary.sampled,
        "drifted_features": len(summary.drifted_columns),
        **{f"rows.{model}": n for model, n in summary.models.items()},
    }
    if summary.prediction_drift is not None:
        metrics["prediction_drift"] = summary.prediction_drift.score
    if summary.classification is not None:
        metrics.update({f"feedback.{k}": v for k, v in summary.classification.metrics.items()})
    run_id = None
    try:
        with _tracking_errors(f"log the drift run in the experiment {experiment!r}"):
            tracking.configure(root)
            with tracking.new_run(
                experiment, root, run_name=f"{summary.status} {summary.window.until}"
            ) as run_id:
                tracking.log_metrics(metrics)
                tracking.set_tags(
                    {
                        "status": summary.status,
                        "model": summary.model or "",
                        "window": f"{summary.window.since} .. {summary.window.until}",
                        "monitor.folder": summary.folder,
                    }
                )
                # The ~7 MB report only where someone will read it (a drift verdict, the
                # evidence a retrain links to); an ok run's numbers are in its metrics
                # and summary.json, and its report in runs/ until retention.
                if summary.status == DRIFT and summary.report and Path(summary.report).is_file():
                    tracking.log_artifact(Path(summary.report))
    except ModelyardError as exc:
        log.error("the drift run was not logged: %s", exc)
        return DriftRun(
            FAILED, f"the drift run was not logged to MLflow: {exc}", run_id, experiment
        )
    return DriftRun(LOGGED, f"MLflow run {run_id} ({experiment})", run_id, experiment)


def finish_drift_run(summary: Summary, drift_run: DriftRun, *, root: Path) -> DriftRun:
    """The drift run, completed: what the retrain did (tags ``retrain.status`` and
    ``retrain.version`` when it registered one) and summary.json as an artifact."""
    from pipelines import tracking

    assert drift_run.run_id is not None
    tags: dict[str, str] = {}
    if summary.retrain is not None:
        tags[RetrainTag.STATUS] = summary.retrain.status
        if summary.retrain.status == RETRAINED and summary.retrain.version:
            tags[RetrainTag.VERSION] = summary.retrain.version
    try:
        with (
            _tracking_errors(f"complete the drift run {drift_run.run_id}"),
            tracking.resume(drift_run.run_id),
        ):
            tracking.set_tags(tags)
            tracking.log_dict(summary.as_dict(), "summary.json")
    except ModelyardError as exc:
        log.error("the drift run was not completed: %s", exc)
        return replace(drift_run, status=FAILED, detail=f"the drift run was not completed: {exc}")
    return drift_run
