"""Evidently adapter: the only module that imports evidently (0.7, the new API).

- ``compare``: one Report over the features and the prediction: ``DataDriftPreset``
  (a drift test per feature + the drifted share) and ``ValueDrift`` on the prediction;
  with feedback labels, ``ClassificationPreset`` too (its reference: whatever the
  caller passes, the version's held-out test split). The drift report also carries the
  thresholds as metrics of their own (``ModelyardThreshold``: the drifted share's, and the
  prediction drift test's as Evidently resolved it), so the dashboard can draw them as
  lines. Returns a frozen ``Comparison`` (plain results and the snapshots, for HTML and
  the workspace). Anything Evidently raises comes out as ``MonitoringError``: no verdict
  without a comparison.
- ``save_html``: Evidently's HTML with a header block (``Header``: model, window, time of
  the run, verdict) injected after ``<body>``, every value escaped.
- The workspace: ``add_to_workspace`` adds the run's snapshots (tagged with the verdict and
  the model version) to a local workspace whose dashboard (drifted share and prediction
  drift beside their thresholds, drifted count, accuracy on labelled traffic) ``evidently
  ui`` shows; ``snapshot_ids`` / ``snapshot_runs`` / ``delete_snapshots`` are what
  retention (``monitoring.retention``) uses, through Evidently's own workspace API.
"""

from __future__ import annotations

import contextlib
import functools
import html
import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
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
# The threshold metrics' names (``ModelyardThreshold.name``; a dashboard series label)
SHARE_THRESHOLD, PREDICTION_THRESHOLD = "drift_share", "prediction_drift"
THRESHOLD_METRIC = "ModelyardThreshold"


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
    prediction_method: str | None = None,
    prediction_threshold: float | None = None,
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
        ValueDrift(column=PREDICTION, method=prediction_method, threshold=prediction_threshold),
    ]
    metrics += [
        _threshold_metric()(name=SHARE_THRESHOLD, value=drift_share),
        # the prediction test's threshold as Evidently resolves it (method default or ours)
        _threshold_metric()(
            name=PREDICTION_THRESHOLD,
            column=PREDICTION,
            method=prediction_method,
            threshold=prediction_threshold,
        ),
    ]
    # what each report was compared with, as Evidently got it (the snapshots say so)
    report = Report(
        metrics,
        include_tests=True,
        metadata={**(metadata or {}), "reference_rows": str(len(reference))},
    )
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
        cls_snapshot = Report(
            [ClassificationPreset()], metadata={**(metadata or {}), "reference_rows": str(len(ref))}
        ).run(
            Dataset.from_pandas(cur[[TARGET, PREDICTION]], data_definition=cls_def),
            Dataset.from_pandas(ref[[TARGET, PREDICTION]], data_definition=cls_def),
            timestamp=timestamp,
        )
        quality = _quality(cls_snapshot.dict())
    return Comparison(
        columns, share, share >= drift_share, prediction, quality, (snapshot, cls_snapshot)
    )


@functools.cache
def _threshold_metric() -> Any:
    """``ModelyardThreshold``: a single-value Evidently metric holding a threshold, so the
    workspace's dashboard can plot it beside the value it bounds. ``value``: a fixed
    threshold; else ``column``'s ``ValueDrift`` threshold as Evidently resolved it (the
    same metric the report computes: Evidently caches it, nothing runs twice).

    Defined on first use (Evidently takes ~8 s to import) and once per process (Evidently
    registers metric types by class name). The UI needs no import of it: a snapshot stores
    plain ``SingleValue`` results."""
    from evidently.core.metric_types import SingleValueCalculation, SingleValueMetric
    from evidently.metrics import ValueDrift

    class ModelyardThreshold(SingleValueMetric):
        name: str
        value: float | None = None
        column: str | None = None
        method: str | None = None
        threshold: float | None = None

    class ModelyardThresholdCalculation(SingleValueCalculation[ModelyardThreshold]):
        def calculate(self, context: Any, current_data: Any, reference_data: Any) -> Any:
            metric = self.metric
            if metric.value is not None:
                return self.result(float(metric.value))
            drift = context.calculate_metric(
                ValueDrift(
                    column=metric.column, method=metric.method, threshold=metric.threshold
                ).to_calculation()
            )
            return self.result(float(drift.metric_value_location.metric.params["threshold"]))

        def display_name(self) -> str:
            return f"Threshold: {self.metric.name}"

    return ModelyardThreshold  # its type is "evidently:metric_v2:" + THRESHOLD_METRIC


# -- the HTML report ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """What an operator must see before Evidently's widgets: which model, which window,
    when, and the verdict. ``fields``: (label, value) rows, shown in order."""

    title: str  # e.g. "DRIFT: digits-classifier v1"
    verdict: str  # ok | drift | ... (colours the block)
    fields: tuple[tuple[str, str], ...] = ()


VERDICT_COLOURS = {"ok": "#2ca02c", "drift": "#d62728"}
_BODY = re.compile(r"<body[^>]*>", re.IGNORECASE)


def header_html(header: Header) -> str:
    """The header block: plain HTML with inline style, every text escaped (model names,
    paths and messages come from the registry and the log, not from us)."""
    colour = VERDICT_COLOURS.get(header.verdict, "#7f7f7f")
    rows = "".join(
        f'<tr><th style="text-align:left;padding:2px 12px 2px 0">{html.escape(label)}</th>'
        f"<td>{html.escape(value)}</td></tr>"
        for label, value in header.fields
    )
    return (
        f'<div id="modelyard-header" data-verdict="{html.escape(header.verdict)}" '
        f'style="font-family:sans-serif;margin:12px;padding:12px 16px;'
        f'border-left:8px solid {colour};background:#f7f7f7">'
        f'<h1 style="margin:0 0 8px 0;font-size:22px;color:{colour}">'
        f"{html.escape(header.title)}</h1>"
        f'<table style="font-size:14px">{rows}</table></div>'
    )


def with_header(page: str, block: str) -> str:
    """``page`` with ``block`` right after its ``<body ...>`` tag (at the top if none)."""
    match = _BODY.search(page)
    if match is None:
        return block + page
    return page[: match.end()] + block + page[match.end() :]


def save_html(
    result: Comparison,
    path: Path,
    *,
    header: Header | None = None,
    classification_header: Header | None = None,
) -> None:
    """The drift report (and the classification report next to it, if any), each with its
    header block. Writes plain files: the caller writes into an atomic folder."""
    pages = [(result.snapshots[0], path, header)]
    if len(result.snapshots) > 1:
        pages.append(
            (
                result.snapshots[1],
                path.with_name(path.stem + "-classification.html"),
                classification_header or header,
            )
        )
    for snapshot, target, block in pages:
        page = snapshot.get_html_str(as_iframe=False)
        if block is not None:
            page = with_header(page, header_html(block))
        with open(target, "w", encoding="utf-8") as out:
            out.write(page)


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


@dataclass(frozen=True)
class WorkspaceRun:
    """Where a run's snapshots went: the project and the snapshot ids (drift first)."""

    project: str
    snapshots: tuple[str, ...]


def _panels() -> list[Any]:
    """The project's dashboard: each value beside the threshold that decides on it."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    def threshold(name: str) -> Any:
        return PanelMetric(
            legend=f"threshold ({name})", metric=THRESHOLD_METRIC, metric_labels={"name": name}
        )

    return [
        line_plot_panel(
            "Share of drifted features vs its threshold (monitor.drift_share)",
            [
                PanelMetric(
                    legend="drifted share",
                    metric="DriftedColumnsCount",
                    metric_labels={"value_type": "share"},
                ),
                threshold(SHARE_THRESHOLD),
            ],
            size="half",
        ),
        line_plot_panel(
            "Drifted features",
            [
                PanelMetric(
                    legend="count",
                    metric="DriftedColumnsCount",
                    metric_labels={"value_type": "count"},
                )
            ],
            size="half",
        ),
        line_plot_panel(
            "Prediction drift score vs its test's threshold",
            [
                PanelMetric(
                    legend="prediction", metric="ValueDrift", metric_labels={"column": PREDICTION}
                ),
                threshold(PREDICTION_THRESHOLD),
            ],
            size="half",
        ),
        line_plot_panel(
            "Accuracy on labelled traffic (reference: the held-out test split)",
            [PanelMetric(legend="accuracy", metric="Accuracy")],
            size="half",
        ),
    ]


@functools.cache
def _workspace(folder: Path) -> Any:
    """One ``Workspace`` per folder and process: opening one reads every snapshot in it
    (~0.2 s per drift snapshot here, for its dataset manager), so the run's add and its
    retention share one. Safe to reuse: what we call (add/list/get/delete runs, projects,
    dashboards) reads and writes the folder itself each time."""
    from evidently.ui.workspace import Workspace

    return Workspace.create(str(folder))


def _project(ws: Any, project_name: str) -> Any | None:
    found = ws.search_project(project_name)
    return found[0] if found else None


def add_to_workspace(
    folder: Path,
    project_name: str,
    result: Comparison,
    *,
    tags: Sequence[str] = (),
    metadata: Mapping[str, str] | None = None,
) -> WorkspaceRun:
    """Add the run's snapshots to a local workspace, tagged with ``tags`` (the verdict,
    the model) and with ``metadata`` added to theirs; create the project on first use and
    (re)build its dashboard when its panels are not this version's. Returns where they went."""
    from evidently.core.report import Snapshot

    ws = _workspace(folder)
    project = _project(ws, project_name)
    if project is None:
        project = ws.create_project(
            project_name, description="modelyard drift over the inference log"
        )
        project.save()
    panels = _panels()
    if [p.title for p in project.dashboard.model().panels] != [p.title for p in panels]:
        project.dashboard.clear_dashboard()
        for panel in panels:
            project.dashboard.add_panel(panel)
    ids = []
    for kind, snap in zip(("drift", "classification"), result.snapshots, strict=False):
        # Tags are fixed when a snapshot is made, the verdict is known after: the snapshot
        # is re-made from its serialised model (Evidently's own round trip) with them.
        model = snap.to_snapshot_model()
        model.tags = [*model.tags, *tags]
        model.metadata = {**model.metadata, **(metadata or {}), "report": kind}
        ids.append(str(ws.add_run(project.id, Snapshot.load_model(model), include_data=False).id))
    return WorkspaceRun(str(project.id), tuple(ids))


@dataclass(frozen=True)
class SnapshotRun:
    """A workspace snapshot and the run it belongs to (its ``run`` metadata, if any)."""

    id: str
    run: str | None
    timestamp: datetime


def snapshot_ids(folder: Path, project_name: str) -> list[str]:
    """Every snapshot of the project (none when there is no workspace or project)."""
    if not folder.is_dir():
        return []
    ws = _workspace(folder)
    project = _project(ws, project_name)
    return [] if project is None else [str(i) for i in ws.list_runs(project.id)]


def snapshot_runs(folder: Path, project_name: str, ids: Sequence[str]) -> list[SnapshotRun]:
    """The run (metadata ``run``) and timestamp of each snapshot in ``ids``. Reads each
    snapshot whole (they are large): retention asks only about the ones no run claims."""
    if not ids:
        return []
    ws = _workspace(folder)
    project = _project(ws, project_name)
    if project is None:
        return []
    out = []
    for snapshot_id in ids:
        model = ws.get_run(project.id, snapshot_id)
        run = model.metadata.get("run")
        out.append(SnapshotRun(snapshot_id, str(run) if run else None, model.timestamp))
    return out


def delete_snapshots(folder: Path, project_name: str, ids: Sequence[str]) -> int:
    """Delete snapshots through the workspace's API (``Workspace.delete_run``); returns how
    many existed. An id already gone is not an error (retention may be retried)."""
    if not ids or not folder.is_dir():
        return 0
    ws = _workspace(folder)
    project = _project(ws, project_name)
    if project is None:
        return 0
    present = {str(i) for i in ws.list_runs(project.id)}
    gone = [i for i in ids if i in present]
    for snapshot_id in gone:
        ws.delete_run(project.id, snapshot_id)
    return len(gone)


def ui_command(folder: Path, host: str, port: int) -> list[str]:
    """The ``evidently ui`` command line for the workspace."""
    evidently = tools.binary("evidently")
    return [evidently, "ui", "--workspace", str(folder), "--host", host, "--port", str(port)]
