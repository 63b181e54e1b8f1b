"""The drift job: `modelyard monitor run [--since ... --until ...]`.

``job`` runs it end to end and returns a frozen ``Summary``; ``run`` is its first half
(the verdict and the report), the rest are the actions on drift.

1. Read the window of the inference log in one streaming pass (``monitoring.logscan``):
   every prediction is counted (per model version, malformed lines skipped and counted)
   without being parsed, a seeded uniform sample of ``monitor.sample_rows`` predictions
   is kept (reservoir sampling; only the kept lines are parsed), feedback labels are
   joined by prediction id and shadow answers collected. Memory is bounded by the
   sample, not the log.
2. Find the references through the registry: the serving version (the one most of the
   window's predictions name) -> its ``data.reference_uri`` tag -> the training split
   logged with its training run (only its production rows, for a version trained on at
   least ``monitor.min_rows`` of them: ``drift_rows``), and its ``data.test_uri`` -> the
   held-out test split, the classification-quality reference. Their predictions (the
   version's own ONNX model, run once) are cached per version under ``monitor.output``.
3. Screen the sample (``screen``): a record with the wrong number of features, or a
   null or non-numeric one, cannot be compared; it is left out and counted. Too few
   records left (fewer than ``monitor.min_rows``) is an error, not a verdict.
4. Compare with Evidently (``monitoring.drift``): per-feature drift, the drifted share,
   prediction drift; classification quality where feedback labels exist. Data quality:
   the training contract's checks (and the checked-in GX suite's column checks) on the
   sample, through ``pipelines.validation``.
5. Write the run folder (report.html with a header naming the model, window, time and
   verdict; drift_scores.png; atomically), add the run to the Evidently workspace (its
   snapshots tagged with the verdict and the version, the thresholds as series), and
   keep only ``monitor.keep_days`` / ``monitor.keep_runs`` of runs and snapshots
   (``monitoring.retention``).
6. A verdict (ok or drift) is logged as an MLflow run in ``<tracking.experiment>-monitoring``
   (``log_drift_run``: drift share, rows per model version, report.html). On drift:
   harvest the feedback labels (``monitoring.harvest``) and count those newer than the
   data the latest registered version trained on (its ``data.production_labelled_until``
   tag). Fewer than ``monitor.min_new_labels``: nothing is retrained, and the job says
   so ("no-new-labels"); a failed harvest is a failed retrain. Then POST the summary,
   with that decision, to the alert webhook (``send_alert``; a failed alert is recorded,
   the verdict stands), then retrain (``request_retrain``): a GitHub ``retrain`` dispatch
   carrying the drift run's id and the labels' DVC pointer (pushed to the DVC remote
   first) is a retrain *requested*; locally, ``modelyard run``'s pipeline, which either
   registers a new version (tagged with the drift run, and the run with it) or finds the
   model already registered ("nothing retrained").
7. Shadow evidence (``modelyard serve --shadow``): agreement and, on labelled requests,
   each model's accuracy (``shadow_evidence``), written onto the challenger's version as
   ``shadow.*`` tags and a section of its model card (``tag_shadow``).
8. Write summary.json, last: into the run folder and as the latest
   (``monitor.output/summary.json``), and into the drift run. It records the verdict and
   what steps 6-7 did.

Verdicts and exit codes (``exit_code``): ``ok`` and ``not-enough-data`` exit 0 (too few
rows is no alarm), ``drift`` exits 1; a failure exits 2: any error before a verdict
(raised as ``ModelyardError``), drift whose harvest or retraining failed, or a drift run
or shadow evidence the registry did not take.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core import files, http
from core.errors import (
    ConfigError,
    ExternalServiceError,
    ModelyardError,
    MonitoringError,
    RegistryError,
)
from monitoring import drift, logscan, retention
from pipelines import validation
from pipelines.config import Data, Monitor, Params, Validate
from registry.client import Registry

if TYPE_CHECKING:
    from core.github import GitHub
    from pipelines.run import Outcome as PipelineOutcome

log = logging.getLogger(__name__)

# verdicts
OK, DRIFT, NOT_ENOUGH = "ok", "drift", "not-enough-data"
# what the alert and retrain steps did
SENT, FAILED, SKIPPED = "sent", "failed", "skipped"
RETRAINED, UNCHANGED, REQUESTED = "retrained", "unchanged", "requested"
NO_NEW_LABELS = "no-new-labels"  # drift, but no label arrived since the last training
LOGGED, TAGGED = "logged", "tagged"  # the drift run in MLflow; the shadow evidence's tags
# `monitor run`'s exit codes
EXIT_OK, EXIT_DRIFT, EXIT_FAILED = 0, 1, 2

DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# -- the window ---------------------------------------------------------------------------------


def parse_time(text: str, now: float) -> float:
    """``30m``/``24h``/``7d`` before ``now``, or an ISO 8601 time (UTC if no zone)."""
    text = text.strip()
    match = DURATION.match(text)
    if match:
        return now - float(match[1]) * UNIT_S[match[2]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MonitoringError(
            f"{text!r} is not a time: use a duration (30m, 24h, 7d) or ISO 8601 (2026-11-25T10:00)"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def read_window(
    log_dir: Path, since: float, until: float, sample_rows: int, seed: int
) -> logscan.WindowSample:
    """One pass over the log (``monitoring.logscan``): count, sample, join feedback."""
    return logscan.scan(log_dir, since, until, sample_rows, seed)


# -- the reference ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The serving version's references: ``frame``, what drift is measured against (the
    training split, or only its production rows for a version that learned from enough
    of them: ``drift_split``), and ``quality``, what classification quality is measured against:
    the held-out test split scored by the version (``data.test_uri``), or the training
    split again for a version registered without one (``quality_note`` says so and why).
    Both: the features + drift.PREDICTION (str) + drift.TARGET."""

    name: str
    version: str
    frame: pd.DataFrame
    features: list[str]
    classes: list[Any]
    constant: list[str]  # features constant in the reference: no drift test possible
    uri: str
    quality: pd.DataFrame
    quality_split: str  # "test" | "train"
    quality_uri: str
    quality_note: str | None = None
    drift_split: str = "train"  # "train" | "train:production" (see reference_for)


# A version retrained on production labels is compared with the production traffic it
# learned from, not with the whole training split: after a retrain on a new writing style,
# the question is whether traffic moved away from what the model last learned. The base
# rows still train it (and the base test split still gates it); they no longer say what
# production looks like.
PRODUCTION = "production"


def reference_for(
    registry: Registry, model_ref: str, cache: Path, *, production_min: int | None = None
) -> Reference:
    """The serving version's training split (``data.reference_uri``) and held-out test
    split (``data.test_uri``), through its registry lineage, each scored once by the
    version's own model and cached per version under ``cache``. When the training split
    holds at least ``production_min`` harvested production rows (its ``source`` column),
    drift is measured against those rows only (``drift_split`` "train:production")."""
    name, _, version = model_ref.rpartition("/")
    if not name or not version.isdigit():
        raise MonitoringError(f"the log names model {model_ref!r}, expected NAME/VERSION")
    tags = registry.version(name, version).tags
    uri = tags.get("data.reference_uri")
    if not uri:
        raise MonitoringError(
            f"{name} v{version} has no data.reference_uri tag: its training run is not in this "
            "registry's store, so there is no reference. Register a version trained against this "
            "store (`modelyard run`) and serve it."
        )
    test_uri = tags.get("data.test_uri") or None
    cached = cache / f"{name}-v{version}.parquet"
    test_cached = cache / f"{name}-v{version}-test.parquet"
    meta_file = cache / f"{name}-v{version}.json"
    meta = files.read_json(meta_file) if meta_file.exists() else {}
    # a cache written before test splits (no "test_uri" key), or before the tag was set
    fresh = (
        cached.exists()
        and "test_uri" in meta
        and meta["test_uri"] == test_uri
        and meta.get("production_min", -1) == production_min
    )
    if fresh and (test_uri is None or test_cached.exists()):
        frame = pd.read_parquet(cached)
        quality = pd.read_parquet(test_cached) if test_uri else frame
    else:
        frame, test, meta = _build_reference(
            registry, name, version, uri, test_uri, production_min=production_min
        )
        cache.mkdir(parents=True, exist_ok=True)
        files.write_parquet(cached, frame)
        if test is not None:
            files.write_parquet(test_cached, test)
        files.write_json(meta_file, meta)
        quality = frame if test is None else test
    features = list(meta["features"])
    constant = [f for f in features if frame[f].nunique() <= 1]
    note = None
    if test_uri is None:
        note = (
            f"{name} v{version} has no data.test_uri tag (registered before the held-out test "
            "split was logged with its training run), so classification quality is compared "
            "with the training split scored by its own model, which overstates the reference. "
            "Register a new version (`modelyard run`) for a held-out reference."
        )
        log.warning("quality reference: %s", note)
    return Reference(
        name,
        version,
        frame,
        features,
        list(meta["classes"]),
        constant,
        uri,
        quality=quality,
        quality_split="train" if test_uri is None else "test",
        quality_uri=test_uri or uri,
        quality_note=note,
        drift_split=str(meta.get("drift_split", "train")),
    )


def drift_rows(split: pd.DataFrame, production_min: int | None) -> tuple[pd.DataFrame, str]:
    """What drift is measured against: the training split's production rows when there
    are at least ``production_min`` of them (``reference_for`` says why), else all of it."""
    if production_min is not None and "source" in split.columns:
        learned = split[split["source"] == PRODUCTION]
        if len(learned) >= production_min:
            return learned, f"train:{PRODUCTION}"
    return split, "train"


def _build_reference(
    registry: Registry,
    name: str,
    version: str,
    uri: str,
    test_uri: str | None,
    *,
    production_min: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, Any]]:
    """The training split, or its production rows (``reference_for``), and the test split
    if ``test_uri``, scored by the version's ONNX model; and the meta (features, classes,
    both URIs, which rows) the cache keeps."""
    from pipelines import inference

    folder = registry.download_artifacts(uri.rsplit("/", 1)[0])
    split = pd.read_parquet(folder / uri.rsplit("/", 1)[1])
    test = pd.read_parquet(registry.download_artifacts(test_uri)) if test_uri else None
    schema = files.read_json(folder / "schema.json")
    features = [f["name"] for f in schema["features"]]
    classes = list(schema["classes"])
    with tempfile.TemporaryDirectory(prefix="modelyard-model-") as scratch:
        model = registry.download(name, version, Path(scratch)) / "model.onnx"
        session = inference.session(model)

    def scored(rows: pd.DataFrame) -> pd.DataFrame:
        probs = inference.predict_proba(session, rows[features].to_numpy(np.float32))
        frame = rows[features].astype("float64")
        frame[drift.PREDICTION] = [str(classes[i]) for i in probs.argmax(axis=1)]
        frame[drift.TARGET] = rows[schema["target"]].astype(str).to_numpy()
        return frame.reset_index(drop=True)

    split, drift_split = drift_rows(split, production_min)
    frame = scored(split)
    quality = scored(test) if test is not None else None
    log.info(
        "reference for %s v%s: %d %s rows from %s; quality reference: %s",
        name,
        version,
        len(frame),
        drift_split,
        uri,
        f"{len(quality)} held-out test rows from {test_uri}" if quality is not None else "none",
    )
    meta = {
        "features": features,
        "classes": classes,
        "uri": uri,
        "test_uri": test_uri,
        "drift_split": drift_split,
        "production_min": production_min,
    }
    return frame, quality, meta


# -- screening the sample -----------------------------------------------------------------------


@dataclass(frozen=True)
class Screened:
    """The sampled records that fit the reference, and what was left out."""

    records: list[dict[str, Any]]
    wrong_width: Counter[int]  # feature count -> records with that many (not the reference's)
    not_numeric: int  # records holding a null, a non-number or an infinity

    @property
    def left_out(self) -> int:
        return sum(self.wrong_width.values()) + self.not_numeric


def _is_number(value: Any) -> bool:
    # bool is an int to Python, not a feature value; NaN is written as null by the log
    return type(value) is int or (type(value) is float and math.isfinite(value))


def screen(sample: list[dict[str, Any]], width: int) -> Screened:
    """Keep the records with exactly ``width`` features, all of them finite numbers."""
    kept: list[dict[str, Any]] = []
    wrong: Counter[int] = Counter()
    not_numeric = 0
    for record in sample:
        features = record["features"]
        if len(features) != width:
            wrong[len(features)] += 1
        elif not all(_is_number(v) for v in features):
            not_numeric += 1
        else:
            kept.append(record)
    return Screened(kept, wrong, not_numeric)


def describe_left_out(screened: Screened, width: int) -> str:
    """'12 have 10 features (the reference has 64), 3 have null or non-numeric features'."""
    parts = [
        f"{n} have {w} features (the reference has {width})"
        for w, n in sorted(screened.wrong_width.items())
    ]
    if screened.not_numeric:
        parts.append(f"{screened.not_numeric} have null or non-numeric features")
    return ", ".join(parts)


# -- the verdict --------------------------------------------------------------------------------


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


class _Stopwatch:
    """Seconds per step of the job, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = now - self._last
        self._last = now


def run(
    cfg: Monitor,
    *,
    data: Data,
    validate: Validate,
    registry: Registry,
    root: Path,
    log_dir: Path,
    since: str | None,
    until: str | None,
    seed: int,
) -> Summary:
    """The verdict on a window of the log: steps 1-5 (no alert, no retrain, no
    summary.json). Writes the run folder (report.html and its classification page with a
    header: model, window, time of the run, verdict; drift_scores.png; snapshots.json),
    adds the run's snapshots to the workspace tagged with the verdict and the model, and
    ends with retention (``monitoring.retention``: monitor.keep_days / keep_runs)."""
    watch = _Stopwatch()
    now = time.time()
    start = parse_time(since or cfg.window, now)
    end = parse_time(until, now) if until else now + 1
    if start >= end:
        raise MonitoringError(f"empty window: --since {since} is not before --until {until}")
    window = read_window(log_dir, start, end, cfg.sample_rows, seed)
    watch.lap("read_log")
    out = root / cfg.output
    started = datetime.now(UTC)
    folder = out / "runs" / retention.run_name(started)
    base = Summary(
        status=NOT_ENOUGH,
        message="",
        model=None,
        window=Window(_iso(start), _iso(min(end, now)), str(log_dir), len(window.stats.files)),
        rows=window.rows,
        sampled=len(window.sample),
        malformed_lines=window.stats.malformed + window.skipped,
        folder=str(folder),
        models=dict(window.models),
        shadow=shadow_evidence(window.shadow, window.feedback),
    )
    if window.rows < cfg.min_rows:
        # the job writes summary.json into the folder: a run without a verdict leaves only that
        _retain(cfg, out, folder.name, sweep=False)
        watch.lap("retention")
        return replace(
            base,
            message=f"not enough data: {window.rows} predictions in the window, "
            f"monitor.min_rows is {cfg.min_rows}; no verdict (widen --since or wait for traffic)",
            seconds=dict(watch.seconds),
        )
    model_ref, _ = window.models.most_common(1)[0]
    if len(window.models) > 1:
        log.warning(
            "the window mixes model versions %s; comparing the sample with %s's reference",
            dict(window.models),
            model_ref,
        )
    try:
        ref = reference_for(registry, model_ref, out / "reference", production_min=cfg.min_rows)
    except RegistryError as exc:
        raise MonitoringError(f"cannot find the reference of {model_ref}: {exc}") from exc
    watch.lap("reference")

    screened = screen(window.sample, len(ref.features))
    needed = min(cfg.min_rows, cfg.sample_rows)
    if len(screened.records) < needed:
        raise MonitoringError(
            f"only {len(screened.records)} of {len(window.sample)} sampled predictions can be "
            f"compared with {ref.name} v{ref.version}'s reference (monitor.min_rows is "
            f"{cfg.min_rows}): {describe_left_out(screened, len(ref.features))}. The log does "
            f"not match the model it names: check what writes to {log_dir}."
        )
    if screened.left_out:
        log.warning(
            "%d of %d sampled predictions left out: %s",
            screened.left_out,
            len(window.sample),
            describe_left_out(screened, len(ref.features)),
        )
    current = to_frame(screened.records, ref.features)
    usable = [f for f in ref.features if f not in ref.constant]
    labelled = _labelled(ref, current, window.feedback, cfg.min_feedback)
    if labelled is not None:  # quality against the held-out test split, not the training one
        labelled = (ref.quality, labelled[1])
    result = drift.compare(
        ref.frame,
        current,
        features=usable,
        drift_share=cfg.drift_share,
        method=cfg.method,
        threshold=cfg.threshold,
        prediction_method=cfg.prediction_method,
        prediction_threshold=cfg.prediction_threshold,
        labelled=labelled,
        timestamp=datetime.fromtimestamp(min(end, now), UTC),
        metadata={
            "model": model_ref,
            "version": ref.version,
            "window_since": _iso(start),
            "window_until": _iso(min(end, now)),
            "run": folder.name,
            "run_at": started.isoformat(timespec="seconds"),
            "quality_reference": ref.quality_split,
        },
    )
    watch.lap("evidently")
    quality = _data_quality(current, ref, data, root / validate.suite)
    watch.lap("data_quality")

    drifted = result.dataset_drift or result.prediction.drifted
    summary = replace(
        base,
        status=DRIFT if drifted else OK,
        message=(
            f"{'DRIFT' if drifted else 'no drift'}: {len(result.drifted_columns)}/{len(usable)} "
            f"features drifted (share {result.drift_share:.2f}, threshold {cfg.drift_share}); "
            f"prediction drift {result.prediction.score:.3f} ({result.prediction.method}, "
            f"threshold {result.prediction.threshold})"
            f"{' DRIFTED' if result.prediction.drifted else ''}"
        ),
        model=model_ref,
        unusable=Unusable(sum(screened.wrong_width.values()), screened.not_numeric),
        reference=ReferenceInfo(
            ref.version,
            ref.uri,
            len(ref.frame),
            drift_split=ref.drift_split,
            quality_split=ref.quality_split,
            quality_uri=ref.quality_uri,
            quality_rows=len(ref.quality),
            quality_note=ref.quality_note,
        ),
        drift_share=result.drift_share,
        drift_share_threshold=cfg.drift_share,
        drifted_columns=tuple(result.drifted_columns),
        skipped_columns=tuple(ref.constant),
        scores=result.columns,
        prediction_drift=result.prediction,
        data_quality=quality,
        classification=(
            Classification(len(labelled[1]), dict(result.quality)) if labelled else None
        ),
        report=str(folder / "report.html"),
        workspace=str(out / "workspace"),
    )
    at = started.isoformat(timespec="seconds")
    added = drift.add_to_workspace(
        out / "workspace", cfg.project, result, tags=[summary.status, model_ref]
    )
    with files.atomic_dir(folder) as tmp:
        drift.save_html(
            result,
            tmp / "report.html",
            header=report_header(summary, ref, cfg, at=at),
            classification_header=report_header(summary, ref, cfg, at=at, classification=True),
        )
        plot_scores(summary, tmp / "drift_scores.png", at=at)
        files.write_json(
            tmp / retention.SNAPSHOTS_FILE,
            {"project": added.project, "snapshots": list(added.snapshots)},
        )
    watch.lap("report")
    _retain(cfg, out, folder.name, sweep=True)
    watch.lap("retention")
    return replace(summary, seconds=dict(watch.seconds))


def _retain(cfg: Monitor, out: Path, current: str, *, sweep: bool) -> None:
    """Retention at the end of a run. A failure is logged, not raised: the verdict and
    its report stand, and the next run retries (nothing is half-deleted: snapshots go
    before their folder)."""
    try:
        retention.prune(
            out,
            project=cfg.project,
            keep_days=cfg.keep_days,
            keep_runs=cfg.keep_runs,
            now=time.time(),
            current=current,
            sweep=sweep,
        )
    except (OSError, ValueError, KeyError) as exc:
        log.warning("retention of %s failed (runs/ keeps growing until it works): %s", out, exc)


# -- the job: the verdict, then the actions, then summary.json ----------------------------------


def job(
    params: Params,
    *,
    registry: Registry,
    root: Path,
    log_dir: Path,
    since: str | None = None,
    until: str | None = None,
    alert_url: str | None = None,
    retrain: bool = True,
    github: GitHub | None = None,
    progress: Callable[[str], None] | None = None,
) -> Summary:
    """The drift job, steps 1-7. ``alert_url``: where to POST the summary on drift (None:
    no alert). ``retrain``: False skips retraining (so does ``monitor.retrain: off``).
    ``github``: retraining is a ``retrain`` dispatch there; None: retrain here.
    ``progress`` hears which step runs. Raises ModelyardError when there is no verdict;
    a failed alert, harvest, retrain, drift run or shadow tagging is recorded in the
    Summary, not raised.

    On drift the job harvests the feedback labels first and retrains only when labels
    arrived since the data the latest registered version trained on (``new_labels``);
    the alert carries that decision. A verdict is logged as an MLflow run (``log_drift_run``)
    and a retrain is linked to it both ways (the version's ``monitor.drift_run_id`` tag,
    the run's ``retrain.version`` tag). Shadow evidence in the window is written onto the
    challenger's version (``tag_shadow``)."""
    say = progress or (lambda _step: None)
    say("reading the inference log and comparing with the reference...")
    summary = run(
        params.monitor,
        data=params.data,
        validate=params.validate_,
        registry=registry,
        root=root,
        log_dir=log_dir,
        since=since,
        until=until,
        seed=params.seed,
    )
    log.info("%s: %s", summary.status, summary.message)
    watch = _Stopwatch()
    drift_run = None
    if summary.status in (OK, DRIFT):
        say("logging the drift run to MLflow...")
        drift_run = log_drift_run(params, summary, root=root)
        watch.lap("drift_run")
    labels: NewLabels | None = None
    if summary.status != DRIFT:
        alert = retrained = Outcome(SKIPPED, "no drift")
    else:
        say("harvesting feedback labels...")
        labels, decided = decide_retrain(
            params, summary, registry=registry, root=root, log_dir=log_dir, enabled=retrain
        )
        watch.lap("harvest")
        say("posting the alert...")
        alert = send_alert(alert_url, summary, retrain=decided or _announce(labels, github))
        watch.lap("alert")
        if decided is None and labels is not None:
            say("retraining...")
            retrained = request_retrain(
                params,
                summary,
                root=root,
                github=github,
                labels=labels,
                drift_run=drift_run.run_id if drift_run else None,
            )
        else:
            retrained = decided or Outcome(FAILED, "no retrain decision (a bug in modelyard)")
        watch.lap("retrain")
    shadow_tags = None
    if summary.shadow:
        say("writing the shadow evidence onto the challenger...")
        shadow_tags = tag_shadow(registry, summary)
        watch.lap("shadow")
    final = replace(
        summary,
        alert=alert,
        retrain=retrained,
        labels=labels,
        drift_run=drift_run,
        shadow_tags=shadow_tags,
        seconds={**summary.seconds, **watch.seconds},
    )
    if drift_run is not None and drift_run.run_id:
        final = replace(final, drift_run=finish_drift_run(final, drift_run, root=root))
    write_summary(final, root / params.monitor.output)
    return final


def write_summary(summary: Summary, out: Path) -> None:
    """summary.json in the run's folder and as the latest (``out/summary.json``)."""
    data = summary.as_dict()
    files.write_json(Path(summary.folder) / "summary.json", data)
    files.write_json(out / "summary.json", data)  # the latest, for scripts


def send_alert(url: str | None, summary: Summary, *, retrain: Outcome | None = None) -> Outcome:
    """POST the summary (JSON) to the alert webhook, with ``retrain``: what the job does
    about the drift (retrains, requested, or why not). Never raises: an unreachable or
    refusing webhook is recorded as ``failed`` with the reason, and the verdict stands
    (the job's exit code 1 is an alert of its own)."""
    if not url:
        return Outcome(SKIPPED, "no alert webhook (--alert-url or MODELYARD_ALERT_WEBHOOK_URL)")
    payload = {
        "source": "modelyard monitor",
        **{
            k: v
            for k, v in summary.as_dict().items()
            if k not in ("alert", "retrain", "shadow_tags", "labels")
        },
    }
    if retrain is not None:
        payload["retrain"] = {"status": retrain.status, "detail": retrain.detail}
    try:
        status, _ = http.request_json("POST", url, payload, what="the alert webhook")
    except ExternalServiceError as exc:
        reason = redact(str(exc), url)
        log.warning("the alert was not sent (the verdict stands): %s", reason)
        return Outcome(FAILED, reason)
    return Outcome(SENT, f"HTTP {status}")


def redact(text: str, url: str) -> str:
    """``text`` without ``url``'s path and query: webhook URLs often carry a secret
    (Slack's do), and the reason lands in summary.json and in CI logs."""
    scheme, _, rest = url.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return text.replace(url, f"{scheme}://{host}/..." if rest else "<the alert webhook>")


# -- retraining on new labels only ---------------------------------------------------------------

LABELLED_UNTIL = "data.production_labelled_until"  # register's tag: the newest label trained on
RETRAINING = "retraining"  # what the alert says while the retrain has not run yet


def decide_retrain(
    params: Params,
    summary: Summary,
    *,
    registry: Registry,
    root: Path,
    log_dir: Path,
    enabled: bool,
) -> tuple[NewLabels | None, Outcome | None]:
    """Drift: harvest the feedback labels and count those newer than the data the latest
    registered version trained on: (what the harvest found, None if it did not run;
    the final Outcome when there is nothing to retrain: skipped, no-new-labels, or failed
    (a harvest that fails is a failed retrain, never "no new labels"); None: enough new
    labels (``monitor.min_new_labels``), retrain)."""
    if not enabled:
        return None, Outcome(SKIPPED, "--no-retrain")
    if params.monitor.retrain == "off":
        return None, Outcome(SKIPPED, "monitor.retrain is off")
    try:
        labels = new_labels(params, registry=registry, root=root, log_dir=log_dir)
    except (ModelyardError, OSError) as exc:
        log.error("harvesting the feedback labels failed: %s", exc)
        return None, Outcome(
            FAILED,
            f"harvesting the feedback labels failed, so nothing was retrained: {exc} "
            "(fix it and run `modelyard harvest`, then `modelyard monitor run` again)",
        )
    minimum = params.monitor.min_new_labels
    if labels.count >= minimum:
        return labels, None
    since = f"since v{labels.since_version}" if labels.since_version else "(no version yet)"
    needed = f" (monitor.min_new_labels is {minimum})" if minimum > 1 else ""
    return labels, Outcome(
        NO_NEW_LABELS,
        f"drift on {len(summary.drifted_columns)}/{len(summary.scores)} features; "
        f"{labels.count} new labels {since}{needed}: collect feedback (POST /v1/feedback), "
        "nothing retrained",
        labels.since_version,
    )


def new_labels(params: Params, *, registry: Registry, root: Path, log_dir: Path) -> NewLabels:
    """Harvest (``monitoring.harvest``), then count the labelled rows newer than the
    ``data.production_labelled_until`` of the latest registered version (any alias; no
    tag: 0, every label is new)."""
    from monitoring import harvest

    done = harvest.harvest(params, root=root, log_dir=log_dir)
    versions = registry.versions(params.register_.model_name)
    latest = versions[-1] if versions else None
    since = labelled_until(latest.tags if latest else {})
    count = harvest.labelled_after(root, params.paths, since)
    path = Path(done.path) if Path(done.path).is_absolute() else root / done.path
    pointer = path.with_name(path.name + ".dvc")
    return NewLabels(
        count=count,
        since_version=latest.version if latest else None,
        since=since,
        harvested=done.rows,
        path=str(path),
        pointer=pointer.read_text(encoding="utf-8") if pointer.is_file() else None,
    )


def labelled_until(tags: dict[str, str]) -> float:
    """A version's ``data.production_labelled_until`` as epoch seconds (epoch or ISO
    text; missing or "0": 0, it trained on no production row)."""
    text = tags.get(LABELLED_UNTIL, "0").strip() or "0"
    if re.fullmatch(r"\d+(?:\.\d*)?", text):
        return float(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MonitoringError(
            f"the latest version's {LABELLED_UNTIL} tag is {text!r}, neither epoch seconds "
            "nor an ISO time: fix or delete the tag (register writes it)"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _announce(decided: NewLabels | None, github: GitHub | None) -> Outcome | None:
    """What the alert says the job is about to do about the drift: retrain."""
    if decided is None:
        return None
    where = f"a `retrain` dispatch to {github.repository}" if github else "the pipeline here"
    since = f"since v{decided.since_version}" if decided.since_version else "(no version yet)"
    return Outcome(RETRAINING, f"{decided.count} new labels {since}: retraining ({where})")


def request_retrain(
    params: Params,
    summary: Summary,
    *,
    root: Path,
    github: GitHub | None,
    labels: NewLabels,
    drift_run: str | None,
) -> Outcome:
    """Drift with new labels: retrain. A GitHub ``repository_dispatch`` ``retrain`` when
    ``github`` is given (train.yml listens): the harvested labels are pushed to the DVC
    remote first and the payload carries their DVC pointer and ``drift_run``; that is a
    retrain *requested*. Else the pipeline here, as ``modelyard run --drift-run`` runs it
    (``dvc repro``, then the idempotent register, which links a new version and the drift
    run both ways). Either way a new version is only a challenger: it still needs a
    review. Never raises a ModelyardError: a failure is recorded as ``failed``."""
    since = f"since v{labels.since_version}" if labels.since_version else "(no version yet)"
    try:
        if github is not None:
            pointer = publish_labels(labels, root=root)
            github.dispatch(
                "retrain",
                {
                    "model": summary.model or "",
                    "reason": summary.message[:200],
                    "drift_share": f"{summary.drift_share or 0:.3f}",
                    "drift_run": drift_run or "",
                    "production_dvc": pointer,
                },
            )
            return Outcome(
                REQUESTED,
                f"{labels.count} new labels {since}: retrain requested on GitHub "
                f"({github.repository}: repository_dispatch `retrain`, train.yml, with the "
                "labels' DVC pointer and the drift run); no new version yet, and the one it "
                "registers will need a review",
            )
        from pipelines import run as pipeline

        log.info("drift: retraining here on %d new labels (dvc repro in %s)", labels.count, root)
        done = pipeline.run(params, root, drift_run=drift_run)
    except ModelyardError as exc:
        log.error("retraining failed: %s", exc)
        return Outcome(FAILED, str(exc))
    return retrain_outcome(done, labels=labels)


def publish_labels(labels: NewLabels, *, root: Path) -> str:
    """`dvc push` the harvested dataset to the project's DVC remote (DVC_REMOTE_URL, else
    the default remote), so CI can `dvc pull` it; returns its .dvc pointer's text."""
    from core import settings
    from pipelines import run as pipeline

    if labels.pointer is None:
        raise MonitoringError(
            f"the harvested labels cannot reach CI: {labels.path} is not tracked by DVC (no "
            f"{Path(labels.path).name}.dvc: the project has no .dvc/ or harvest.dvc_add is "
            "off). Run `dvc init`, add a DVC remote (or set DVC_REMOTE_URL), and run again"
        )
    pointer = Path(labels.path + ".dvc")
    pipeline.push(root, url=settings.current().dvc_remote_url, targets=[pointer])
    return labels.pointer


def retrain_outcome(done: PipelineOutcome, *, labels: NewLabels | None = None) -> Outcome:
    """What a local retrain did, in words: a new version, or nothing (the pipeline's model
    is one the registry already holds: `dvc repro` found everything up to date, or made
    the same model again)."""
    on = ""
    if labels is not None:
        since = f"since v{labels.since_version}" if labels.since_version else "(no version yet)"
        on = f" on {labels.count} new labels {since}"
    if done.created:
        return Outcome(
            RETRAINED,
            f"retrained{on}: {done.name} v{done.version} registered (@{done.alias}); it still "
            "needs a review (`modelyard promote`)",
            done.version,
        )
    return Outcome(
        UNCHANGED,
        f"nothing retrained: the training data has not changed since v{done.version} "
        f"({done.name} v{done.version} already holds the pipeline's model)",
        done.version,
    )


# -- the drift run in MLflow --------------------------------------------------------------------


@contextlib.contextmanager
def _tracking_errors(what: str) -> Iterator[None]:
    """MLflow errors (an outage, a refusal) while logging the drift run, as RegistryError."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:
        raise RegistryError(f"cannot {what}: {exc}") from exc


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
    tags = {}
    if summary.retrain is not None:
        tags["retrain.status"] = summary.retrain.status
        if summary.retrain.status == RETRAINED and summary.retrain.version:
            tags["retrain.version"] = summary.retrain.version
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


# -- shadow evidence ----------------------------------------------------------------------------

SHADOW_CARD = "**Shadow evidence**"  # the model card's section, replaced by each run


def shadow_evidence(
    records: Sequence[logscan.Shadow], feedback: dict[str, Any]
) -> tuple[ShadowEvidence, ...]:
    """Agreement, errors and (where ``feedback`` labels a request) each model's accuracy,
    per challenger/champion pair, most shadowed requests first. Answers and labels are
    compared as text (the log may hold 3 or "3")."""
    pairs: dict[tuple[str, str], list[logscan.Shadow]] = {}
    for record in records:
        pairs.setdefault((record.model, record.champion), []).append(record)
    out = []
    for (challenger, champion), group in pairs.items():
        answered = [r for r in group if r.error is None and r.prediction is not None]
        agree = sum(str(r.prediction) == str(r.champion_prediction) for r in answered)
        labelled = [r for r in group if r.id in feedback]
        right = sum(r.error is None and str(r.prediction) == str(feedback[r.id]) for r in labelled)
        champion_right = sum(str(r.champion_prediction) == str(feedback[r.id]) for r in labelled)
        out.append(
            ShadowEvidence(
                challenger=challenger,
                champion=champion,
                rows=len(group),
                errors=len(group) - len(answered),
                agreement=agree / len(answered) if answered else None,
                labelled=len(labelled),
                accuracy=right / len(labelled) if labelled else None,
                champion_accuracy=champion_right / len(labelled) if labelled else None,
            )
        )
    return tuple(sorted(out, key=lambda e: (-e.rows, e.challenger)))


def tag_shadow(registry: Registry, summary: Summary) -> Outcome:
    """Write each challenger's shadow evidence onto its version: the ``shadow.*`` tags and
    a section of its model card (the description the reviewer reads). A registry that
    fails is recorded as ``failed`` (the job exits 2), never ignored."""
    done = []
    for evidence in summary.shadow:
        name, _, version = evidence.challenger.rpartition("/")
        try:
            if not name or not version.isdigit():
                raise MonitoringError(
                    f"the shadow records name the challenger {evidence.challenger!r}, "
                    "expected NAME/VERSION"
                )
            registry.set_version_tags(name, version, evidence.tags(summary.window))
            card = registry.version(name, version).description
            registry.set_description(
                name, version, card_with_shadow(card, evidence, summary.window)
            )
        except ModelyardError as exc:
            log.error("the shadow evidence was not written: %s", exc)
            return Outcome(
                FAILED,
                f"the shadow evidence of {evidence.challenger} was not written onto it: {exc}",
            )
        done.append(f"{name} v{version}")
    return Outcome(TAGGED, f"shadow.* tags and the model card of {', '.join(done)} updated")


def card_with_shadow(card: str, evidence: ShadowEvidence, window: Window) -> str:
    """The model card with its shadow section (appended; replaced if there was one)."""

    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    head = card.split(SHADOW_CARD, 1)[0].rstrip()
    section = [
        f"{SHADOW_CARD} (live traffic, `modelyard serve --shadow`): window {window.since} .. "
        f"{window.until}, beside the champion {evidence.champion}.",
        "",
        "| on live requests | this version | champion |",
        "|---|---|---|",
        f"| accuracy on {evidence.labelled} labelled | {share(evidence.accuracy)} | "
        f"{share(evidence.champion_accuracy)} |",
        f"| agreement with the champion | {share(evidence.agreement)} | |",
        f"| requests / failed | {evidence.rows} / {evidence.errors} | |",
    ]
    return (head + "\n\n" if head else "") + "\n".join(section) + "\n"


# -- the parts ----------------------------------------------------------------------------------


def report_header(
    summary: Summary, ref: Reference, cfg: Monitor, *, at: str, classification: bool = False
) -> drift.Header:
    """The header of report.html (or of its classification page): which model, which
    window, when, the verdict, and what it was compared with."""
    window = summary.window
    drift_text = "the training split"
    if ref.drift_split != "train":  # a version retrained on production labels
        drift_text = "the production rows of the training split"
    fields = [
        ("Model", f"{ref.name} v{ref.version}"),
        ("Verdict", summary.message),
        ("Window (UTC)", f"{window.since} .. {window.until}"),
        ("Run at (UTC)", at),
        (
            "Predictions",
            f"{summary.rows:,} in the window, {summary.sampled:,} sampled, from {window.log_dir}",
        ),
        ("Drift reference", f"{drift_text}, {len(ref.frame):,} rows ({ref.uri})"),
        (
            "Quality reference",
            f"the held-out test split, {len(ref.quality):,} rows ({ref.quality_uri})"
            if ref.quality_note is None
            else f"the training split: {ref.quality_note}",
        ),
        (
            "Thresholds",
            f"drifted share {cfg.drift_share} (monitor.drift_share); per feature "
            f"{_threshold_text(summary.scores)}; prediction "
            f"{_threshold_text((summary.prediction_drift,) if summary.prediction_drift else ())}",
        ),
    ]
    if classification and summary.classification is not None:
        fields.insert(
            2,
            (
                "Labelled predictions",
                f"{summary.classification.rows:,} (accuracy "
                f"{summary.classification.metrics.get('accuracy', float('nan')):.3f})",
            ),
        )
    kind = "Classification quality" if classification else summary.status.upper()
    return drift.Header(
        title=f"{kind}: {ref.name} v{ref.version}, {window.since} .. {window.until}",
        verdict=summary.status,
        fields=tuple(fields),
    )


def _threshold_text(scores: Sequence[drift.ColumnDrift]) -> str:
    methods = sorted({f"{c.method} {c.threshold:g}" for c in scores})
    return ", ".join(methods) if methods else "n/a"


def plot_scores(summary: Summary, path: Path, *, at: str | None = None) -> None:
    """One bar per feature: its drift score against the test's threshold (red: drifted).
    For image-like features (a square count) a heat map of the scores, too. The title
    names the model, the window, the time of the run (``at``) and the verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.column for c in summary.scores]
    scores = np.array([c.score for c in summary.scores])
    drifted = [c.drifted for c in summary.scores]
    threshold = summary.scores[0].threshold if names else 0.0
    total = len(names) + len(summary.skipped_columns)
    side = round(total**0.5)
    grid = side * side == total and side > 2
    fig, axes = plt.subplots(
        1,
        2 if grid else 1,
        figsize=(13 if grid else 10, 3.6),
        gridspec_kw={"width_ratios": [3, 1]} if grid else None,
    )
    bars = axes[0] if grid else axes
    bars.bar(range(len(names)), scores, color=["#d62728" if d else "#1f77b4" for d in drifted])
    bars.axhline(
        threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}"
    )
    bars.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    bars.set_ylabel(summary.scores[0].method if names else "score", fontsize=8)
    bars.set_title(
        f"{summary.status}: {len(summary.drifted_columns)}/{len(names)} features drifted "
        f"(share {summary.drift_share or 0:.2f}), {summary.rows:,} predictions",
        fontsize=9,
    )
    bars.legend(fontsize=8)
    if grid:
        by_name = {c.column: c.score for c in summary.scores}
        every = [*names, *summary.skipped_columns]
        order = sorted(every, key=lambda n: int(re.sub(r"\D", "", n) or 0))
        cells = np.array([by_name.get(n, np.nan) for n in order])
        image = axes[1].imshow(cells.reshape(side, side), cmap="Reds")
        axes[1].set_title("score by feature position", fontsize=9)
        axes[1].set_xticks([])
        axes[1].set_yticks([])
        fig.colorbar(image, ax=axes[1], fraction=0.046)
    window = summary.window
    name, _, version = (summary.model or "").rpartition("/")
    fig.suptitle(
        f"{summary.status.upper()}: {name} v{version}, window {window.since} .. "
        f"{window.until} (UTC), run at {at or 'n/a'}",
        fontsize=10,
        fontweight="bold",
        color={OK: "#2ca02c", DRIFT: "#d62728"}.get(summary.status, "black"),
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_frame(records: list[dict[str, Any]], features: list[str]) -> pd.DataFrame:
    """Prediction records (``screen``ed: the right width, numbers only) -> the features,
    PREDICTION (as text) and the prediction id."""
    frame = pd.DataFrame(
        np.asarray([r["features"] for r in records], dtype=np.float64).reshape(
            len(records), len(features)
        ),
        columns=features,
    )
    frame[drift.PREDICTION] = [str(r.get("prediction")) for r in records]
    frame["id"] = [str(r.get("id")) for r in records]
    return frame


def _labelled(
    ref: Reference, current: pd.DataFrame, feedback: dict[str, Any], minimum: int
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    if not feedback:
        return None
    joined = current[current["id"].isin(feedback)].copy()
    if len(joined) < minimum:
        log.info(
            "%d sampled predictions have feedback labels (< %d): no classification quality",
            len(joined),
            minimum,
        )
        return None
    joined[drift.TARGET] = [str(feedback[i]) for i in joined["id"]]
    return ref.frame, joined


def _data_quality(
    current: pd.DataFrame, ref: Reference, data: Data, suite_path: Path
) -> DataQuality:
    """The training contract's column checks + the GX suite's feature checks, on the sample.
    ``suite_path``: the project's ``validate.suite`` (not the working directory's)."""
    expectations: list[validation.Expectation] = []
    for col in ref.features:
        expectations.append(
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": col}}
        )
        bounds = data.range_for(col)
        if bounds is not None:
            expectations.append(
                {
                    "type": "expect_column_values_to_be_between",
                    "kwargs": {"column": col, "min_value": bounds[0], "max_value": bounds[1]},
                }
            )
    try:
        suite = validation.load_suite(suite_path) if suite_path.exists() else []
    except ConfigError as exc:  # a broken suite is reported; the drift verdict still stands
        log.warning("GX suite %s unusable on the window: %s", suite_path, exc)
        suite = []
    expectations += [e for e in suite if e["kwargs"].get("column") in ref.features]
    checks = validation.validate({"window": (current[ref.features], expectations)})
    failed = [c for c in checks if not c.success]
    return DataQuality(
        evaluated=len(checks),
        failed=len(failed),
        failures=tuple(QualityFailure(c.expectation, c.column, c.observed) for c in failed[:20]),
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
