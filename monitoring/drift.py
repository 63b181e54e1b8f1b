"""Evidently adapter: the only module that imports evidently (0.7, the new API).

- ``compare``: one Report over the features and the prediction: ``DataDriftPreset``
  (a drift test per feature + the drifted share) and ``ValueDrift`` on the prediction;
  with feedback labels, ``ClassificationPreset`` too. Returns a frozen ``Comparison``
  (plain results and the snapshots, for HTML and the workspace). Anything Evidently
  raises comes out as ``MonitoringError``: no verdict without a comparison.
- ``Workspace``: a local Evidently workspace with a dashboard (drifted share, prediction
  drift, rows per run) so ``evidently ui`` shows drift over time.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import tools
from core.errors import MonitoringError

log = logging.getLogger(__name__)

PREDICTION = "prediction"
TARGET = "target"


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class Comparison:
    columns: tuple[ColumnDrift, ...]
    drift_share: float  # share of drifted features
    dataset_drift: bool
    prediction: ColumnDrift
    quality: dict[str, float] = field(default_factory=dict)  # accuracy etc. with feedback
    snapshots: tuple[Any, ...] = ()  # drift report [, classification report]

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


def compare(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    features: list[str],
    drift_share: float,
    method: str | None = None,
    threshold: float | None = None,
    labelled: tuple[pd.DataFrame, pd.DataFrame] | None = None,
    timestamp: datetime | None = None,
    metadata: dict[str, str] | None = None,
) -> Comparison:
    """Drift of ``current`` against ``reference`` (both: the features + PREDICTION as a
    string). ``labelled``: (reference, current) frames with TARGET and PREDICTION for
    classification quality. Raises MonitoringError when Evidently cannot compare them."""
    from evidently import DataDefinition, Dataset, MulticlassClassification, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import ClassificationPreset, DataDriftPreset

    definition = DataDefinition(numerical_columns=features, categorical_columns=[PREDICTION])
    metrics: list[Any] = [
        DataDriftPreset(
            columns=features, drift_share=drift_share, method=method, threshold=threshold
        ),
        ValueDrift(column=PREDICTION),
    ]
    report = Report(metrics, include_tests=True, metadata=metadata or {})
    with _evidently(f"the drift report ({len(current)} rows vs {len(reference)} reference rows)"):
        snapshot = report.run(
            Dataset.from_pandas(current[[*features, PREDICTION]], data_definition=definition),
            Dataset.from_pandas(reference[[*features, PREDICTION]], data_definition=definition),
            timestamp=timestamp,
        )
        data = snapshot.dict()
    columns, share, prediction = _parse(data, features)
    if labelled is None:
        return Comparison(columns, share, share >= drift_share, prediction, snapshots=(snapshot,))
    ref, cur = labelled
    labels = sorted(set(ref[TARGET]) | set(cur[TARGET]) | set(cur[PREDICTION]))
    classification = MulticlassClassification(
        target=TARGET, prediction_labels=PREDICTION, labels={v: v for v in labels}
    )
    cls_def = DataDefinition(
        categorical_columns=[TARGET, PREDICTION], classification=[classification]
    )
    with _evidently(f"the classification report ({len(cur)} labelled rows)"):
        cls_snapshot = Report([ClassificationPreset()]).run(
            Dataset.from_pandas(cur[[TARGET, PREDICTION]], data_definition=cls_def),
            Dataset.from_pandas(ref[[TARGET, PREDICTION]], data_definition=cls_def),
            timestamp=timestamp,
        )
        quality = _quality(cls_snapshot.dict())
    return Comparison(
        columns, share, share >= drift_share, prediction, quality, (snapshot, cls_snapshot)
    )


def save_html(result: Comparison, path: Path) -> None:
    """The drift report (and the classification report next to it, if any)."""
    snaps = result.snapshots
    snaps[0].save_html(str(path))
    if len(snaps) > 1:
        snaps[1].save_html(str(path.with_name(path.stem + "-classification.html")))


def _parse(
    data: dict[str, Any], features: list[str]
) -> tuple[tuple[ColumnDrift, ...], float, ColumnDrift]:
    # Evidently's own verdict per column: its drift test's status (FAIL = drifted).
    status = {t["metric_config"]["metric_id"]: t["status"] for t in data.get("tests", [])}
    columns: dict[str, ColumnDrift] = {}
    share = 0.0
    for metric in data["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "DriftedColumnsCount":
            share = float(metric["value"]["share"])
        elif kind == "ValueDrift" and metric["id"] in status:
            columns[config["column"]] = ColumnDrift(
                column=config["column"],
                method=str(config["method"]),
                score=float(metric["value"]),
                threshold=float(config["threshold"]),
                drifted=status[metric["id"]] == "FAIL",
            )
    missing = [f for f in [*features, PREDICTION] if f not in columns]
    if missing:
        raise MonitoringError(
            f"Evidently returned no drift test for {missing}: its report format changed? "
            "(monitoring/drift.py reads Evidently 0.7's snapshot.dict())"
        )
    return tuple(columns[f] for f in features), share, columns[PREDICTION]


def _quality(data: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in data["metrics"]:
        kind = metric["config"]["type"].rsplit(":", 1)[-1]
        value = metric["value"]
        if kind in {"Accuracy", "F1Score", "Precision", "Recall"} and isinstance(
            value, (int, float)
        ):
            out[kind.lower()] = float(value)
    return out


@contextlib.contextmanager
def _evidently(what: str) -> Iterator[None]:
    """Run Evidently quietly; whatever it raises becomes a MonitoringError naming ``what``.

    Evidently has no exception hierarchy of its own (an unknown stattest, an empty column
    and a bad data definition raise ValueError, KeyError, its own StatTestNotFoundError,
    ...), so this adapter, the only caller, turns all of them into the job's error: the
    comparison could not be made, and the drift job must not report a verdict.
    Its statistics divide by zero on near-constant columns; the results are handled
    (constant reference columns are excluded upstream), the warnings are noise.
    """
    saved = np.seterr(all="ignore")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except MonitoringError:
        raise
    except Exception as exc:
        raise MonitoringError(
            f"Evidently could not compute {what}: {type(exc).__name__}: {exc}. "
            "Check monitor.method / monitor.threshold in params.yaml and the window's records."
        ) from exc
    finally:
        np.seterr(**saved)


# -- workspace (the Evidently UI) ---------------------------------------------------------------


def add_to_workspace(folder: Path, project_name: str, result: Comparison) -> str:
    """Add the run's snapshots to a local workspace; create the project and its drift
    dashboard on first use. Returns the project id."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel
    from evidently.ui.workspace import Workspace

    ws = Workspace.create(str(folder))
    found = ws.search_project(project_name)
    if found:
        project = found[0]
    else:
        project = ws.create_project(
            project_name, description="modelyard drift over the inference log"
        )
        panels = [
            ("Share of drifted features", "share", "DriftedColumnsCount", {"value_type": "share"}),
            ("Drifted features", "count", "DriftedColumnsCount", {"value_type": "count"}),
            ("Prediction drift score", "prediction", "ValueDrift", {"column": PREDICTION}),
        ]
        for title, legend, metric, labels in panels:
            project.dashboard.add_panel(
                line_plot_panel(
                    title,
                    [PanelMetric(legend=legend, metric=metric, metric_labels=labels)],
                    size="full" if metric == "ValueDrift" else "half",
                )
            )
        project.save()
    for snap in result.snapshots:
        ws.add_run(project.id, snap, include_data=False)
    return str(project.id)


def ui_command(folder: Path, host: str, port: int) -> list[str]:
    """The ``evidently ui`` command line for the workspace."""
    evidently = tools.binary("evidently")
    return [evidently, "ui", "--workspace", str(folder), "--host", host, "--port", str(port)]
