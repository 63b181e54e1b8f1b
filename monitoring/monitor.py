"""The drift job: `modelyard monitor run [--since ... --until ...]`.

``job`` runs it end to end and returns a frozen ``Summary``; ``run`` is its first half
(the verdict and the report), the rest are the actions on drift. This module is the
orchestrator; each concern has its room (and is re-exported here, so ``monitor.X`` keeps
working): ``monitoring.window`` (steps 1 and 3), ``monitoring.reference`` (2),
``monitoring.verdict`` (the states, the records and the exit code), ``monitoring.report``
(5), ``monitoring.driftrun`` and ``monitoring.retraining`` (6), ``monitoring.shadow`` (7).

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

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from core import files
from core.errors import (
    ConfigError,
    MonitoringError,
    RegistryError,
)
from monitoring import drift, retention
from monitoring.driftrun import (
    finish_drift_run,
    log_drift_run,
)
from monitoring.reference import (  # noqa: F401  (re-exported: monitor.X stays valid)
    PRODUCTION,
    Reference,
    drift_rows,
    reference_for,
)
from monitoring.report import (
    plot_scores,
    report_header,
)
from monitoring.retraining import (  # noqa: F401  (re-exported: monitor.X stays valid)
    LABELLED_UNTIL,
    RETRAINING,
    _announce,
    decide_retrain,
    labelled_until,
    new_labels,
    publish_labels,
    redact,
    request_retrain,
    retrain_outcome,
    send_alert,
)
from monitoring.shadow import (  # noqa: F401  (re-exported: monitor.X stays valid)
    SHADOW_CARD,
    card_with_shadow,
    shadow_evidence,
    tag_shadow,
)
from monitoring.verdict import (  # noqa: F401  (re-exported: monitor.X stays valid)
    DRIFT,
    EXIT_DRIFT,
    EXIT_FAILED,
    EXIT_OK,
    FAILED,
    LOGGED,
    NO_NEW_LABELS,
    NOT_ENOUGH,
    OK,
    REQUESTED,
    RETRAINED,
    SENT,
    SKIPPED,
    TAGGED,
    UNCHANGED,
    Classification,
    DataQuality,
    DriftRun,
    NewLabels,
    Outcome,
    QualityFailure,
    ReferenceInfo,
    ShadowEvidence,
    Summary,
    Unusable,
    Window,
    exit_code,
    iso_time,
    write_summary,
)
from monitoring.window import (  # noqa: F401  (re-exported: monitor.X stays valid)
    DURATION,
    UNIT_S,
    Screened,
    describe_left_out,
    parse_time,
    read_window,
    screen,
    to_frame,
)
from pipelines import validation
from pipelines.config import Data, Monitor, Params, Validate
from registry.client import Registry

if TYPE_CHECKING:
    from core.github import GitHub

log = logging.getLogger(__name__)


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
        window=Window(
            iso_time(start), iso_time(min(end, now)), str(log_dir), len(window.stats.files)
        ),
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
            "window_since": iso_time(start),
            "window_until": iso_time(min(end, now)),
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
