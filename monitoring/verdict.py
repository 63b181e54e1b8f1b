"""The drift job's verdict and what it did: the states (verdicts, action outcomes, exit
codes), the frozen records a run produces (``Summary`` and its parts, summary.json) and
the exit code a summary means."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from core import files
from monitoring import drift

log = logging.getLogger(__name__)


class Verdict(StrEnum):
    """What a drift run concluded."""

    OK = "ok"
    DRIFT = "drift"
    NOT_ENOUGH = "not-enough-data"


class Step(StrEnum):
    """What an action did: the alert, the retrain, the drift run, the shadow tags."""

    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    RETRAINED = "retrained"
    UNCHANGED = "unchanged"
    REQUESTED = "requested"
    NO_NEW_LABELS = "no-new-labels"  # drift, but no label arrived since the last training
    LOGGED = "logged"  # the drift run in MLflow
    TAGGED = "tagged"  # the shadow evidence's tags


# The states by their short names (they compare equal to the strings summary.json holds).
OK, DRIFT, NOT_ENOUGH = Verdict.OK, Verdict.DRIFT, Verdict.NOT_ENOUGH
SENT, FAILED, SKIPPED = Step.SENT, Step.FAILED, Step.SKIPPED
RETRAINED, UNCHANGED, REQUESTED = Step.RETRAINED, Step.UNCHANGED, Step.REQUESTED
NO_NEW_LABELS, LOGGED, TAGGED = Step.NO_NEW_LABELS, Step.LOGGED, Step.TAGGED

# `monitor run`'s exit codes
EXIT_OK, EXIT_DRIFT, EXIT_FAILED = 0, 1, 2


@dataclass(frozen=True)
class Window:
    since: str
    until: str
    log_dir: str
    files: int


@dataclass(frozen=True)
class ReferenceInfo:
    """The references a verdict was made against (``Reference``, without the data)."""

    version: str
    uri: str  # drift: the training split
    rows: int
    drift_split: str = "train"  # "train:production": only the production rows it learned
    quality_split: str = "test"  # classification quality: "test", or "train" (see the note)
    quality_uri: str | None = None
    quality_rows: int = 0
    quality_note: str | None = None  # why the training split, when it is


@dataclass(frozen=True)
class Unusable:
    """Sampled records left out of the comparison (``screen``)."""

    wrong_width: int = 0
    not_numeric: int = 0


@dataclass(frozen=True)
class QualityFailure:
    expectation: str
    column: str | None
    observed: Any


@dataclass(frozen=True)
class DataQuality:
    evaluated: int
    failed: int
    failures: tuple[QualityFailure, ...]  # the first 20


@dataclass(frozen=True)
class Classification:
    rows: int  # sampled predictions with a feedback label
    metrics: dict[str, float]  # accuracy, f1score, precision, recall


@dataclass(frozen=True)
class Outcome:
    """What an action did: the alert (sent | failed | skipped), the retrain (retrained |
    unchanged | requested | no-new-labels | failed | skipped), the shadow evidence's tags
    (tagged | failed), and why, in words."""

    status: str
    detail: str
    version: str | None = None  # retrain: the version the pipeline's model is registered as


@dataclass(frozen=True)
class NewLabels:
    """Production labels harvested on drift, against the data the latest version saw."""

    count: int  # labelled rows newer than ``since``
    since_version: str | None  # the latest registered version (None: none yet)
    since: float  # its data.production_labelled_until (epoch seconds; 0: no production rows)
    harvested: int  # rows in the labelled dataset
    path: str  # the labelled dataset (labelled.parquet)
    pointer: str | None  # its .dvc file's text (None: the project does not use DVC)


@dataclass(frozen=True)
class DriftRun:
    """The drift job's MLflow run (experiment ``<tracking.experiment>-monitoring``)."""

    status: str  # logged | failed
    detail: str
    run_id: str | None = None
    experiment: str | None = None


@dataclass(frozen=True)
class ShadowEvidence:
    """The challenger beside the champion on the same live requests (``--shadow``).
    Agreement is over the requests the challenger answered; accuracies are over the
    shadowed requests with a feedback label (a failed challenger answer counts as wrong)."""

    challenger: str  # NAME/VERSION
    champion: str  # NAME/VERSION
    rows: int  # shadowed requests in the window
    errors: int  # of them, the challenger failed on
    agreement: float | None  # share of answered rows where challenger == champion
    labelled: int  # shadowed requests with a feedback label
    accuracy: float | None  # the challenger's, on the labelled rows
    champion_accuracy: float | None  # the champion's, on the same rows

    def tags(self, window: Window) -> dict[str, str]:
        """The version tags the reviewer reads (``shadow.*``)."""

        def share(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.4f}"

        return {
            "shadow.rows": str(self.rows),
            "shadow.agreement": share(self.agreement),
            "shadow.accuracy": share(self.accuracy),
            "shadow.champion_accuracy": share(self.champion_accuracy),
            "shadow.labelled": str(self.labelled),
            "shadow.errors": str(self.errors),
            "shadow.window": f"{window.since} .. {window.until}",
            "shadow.champion": self.champion,
        }

    def describe(self) -> str:
        """One line: 'digits-classifier/2 in shadow of digits-classifier/1: 500 requests,
        agreement 0.962, 0 errors; on 120 labelled: accuracy 0.950 vs champion 0.900'."""

        def share(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        text = (
            f"{self.challenger} in shadow of {self.champion}: {self.rows} requests, "
            f"agreement {share(self.agreement)}, {self.errors} errors"
        )
        if not self.labelled:
            return text + "; no feedback labels on them (no accuracy)"
        return (
            f"{text}; on {self.labelled} labelled: accuracy {share(self.accuracy)} vs "
            f"champion {share(self.champion_accuracy)}"
        )


@dataclass(frozen=True)
class Summary:
    """One run of the drift job: the verdict, its evidence, and the actions taken.
    ``as_dict`` is summary.json."""

    status: str  # OK | DRIFT | NOT_ENOUGH
    message: str
    model: str | None  # NAME/VERSION the window's predictions name (most of them)
    window: Window
    rows: int  # predictions in the window
    sampled: int
    malformed_lines: int
    folder: str  # this run's folder under monitor.output/runs/
    unusable: Unusable = Unusable()
    reference: ReferenceInfo | None = None
    drift_share: float | None = None
    drift_share_threshold: float | None = None
    drifted_columns: tuple[str, ...] = ()
    skipped_columns: tuple[str, ...] = ()  # constant in the reference: no drift test possible
    scores: tuple[drift.ColumnDrift, ...] = ()
    prediction_drift: drift.ColumnDrift | None = None
    data_quality: DataQuality | None = None
    classification: Classification | None = None
    report: str | None = None
    workspace: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)  # predictions per NAME/VERSION
    shadow: tuple[ShadowEvidence, ...] = ()  # one per challenger/champion pair, most rows first
    alert: Outcome | None = None  # None until the job has run the step
    retrain: Outcome | None = None
    labels: NewLabels | None = None  # drift: what the harvest found (None: not harvested)
    drift_run: DriftRun | None = None  # the MLflow run of this job (a verdict only)
    shadow_tags: Outcome | None = None  # writing the shadow evidence onto the challenger

    @property
    def exit_code(self) -> int:
        failures = [o.status for o in (self.shadow_tags, self.drift_run) if o is not None]
        return exit_code(self.status, self.retrain, failures=failures)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scores"] = {
            c.column: {
                "score": c.score,
                "method": c.method,
                "threshold": c.threshold,
                "drifted": c.drifted,
            }
            for c in self.scores
        }
        if self.classification is not None:
            out["classification"] = {
                "rows": self.classification.rows,
                **self.classification.metrics,
            }
        return out


def exit_code(status: str, retrain: Outcome | None, *, failures: Sequence[str] = ()) -> int:
    """0 no drift or not enough data; 1 drift; 2 drift whose retraining failed (a failed
    harvest included), or any of ``failures`` (the statuses of recording the drift run and
    the shadow evidence in the registry) is ``failed``. (Every other failure is an
    exception before there is a verdict: the CLI exits 2 on it.) A failed alert changes
    nothing here: the verdict stands and summary.json records it."""
    if (retrain is not None and retrain.status == FAILED) or FAILED in failures:
        return EXIT_FAILED
    return EXIT_DRIFT if status == DRIFT else EXIT_OK


def write_summary(summary: Summary, out: Path) -> None:
    """summary.json in the run's folder and as the latest (``out/summary.json``)."""
    data = summary.as_dict()
    files.write_json(Path(summary.folder) / "summary.json", data)
    files.write_json(out / "summary.json", data)  # the latest, for scripts


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
