"""The drift job: `modelyard monitor run [--since ... --until ...]`.

``job`` runs it end to end and returns a frozen ``Summary``; ``run`` is its first half
(the verdict and the report), the rest are the actions on drift.

1. Read the window of the inference log in one streaming pass: every prediction is
   counted (per model version, malformed lines skipped and counted), a seeded uniform
   sample of ``monitor.sample_rows`` predictions is kept (reservoir sampling), and
   feedback labels are joined by prediction id. Memory is bounded by the sample, not
   the log.
2. Find the reference through the registry: the serving version (the one most of the
   window's predictions name) -> its ``data.reference_uri`` tag -> the training split
   logged with its training run. Its predictions (the version's own ONNX model, run
   once) and the split are cached per version under ``monitor.output``.
3. Screen the sample (``screen``): a record with the wrong number of features, or a
   null or non-numeric one, cannot be compared; it is left out and counted. Too few
   records left (fewer than ``monitor.min_rows``) is an error, not a verdict.
4. Compare with Evidently (``monitoring.drift``): per-feature drift, the drifted share,
   prediction drift; classification quality where feedback labels exist. Data quality:
   the training contract's checks (and the checked-in GX suite's column checks) on the
   sample, through ``pipelines.validation``.
5. Write the run folder (report.html, drift_scores.png; atomically) and add the run to
   the Evidently workspace.
6. On drift: POST the summary to the alert webhook (``send_alert``; a failed alert is
   recorded, the verdict stands), then retrain (``request_retrain``): a GitHub
   ``retrain`` dispatch is a retrain *requested*; locally, ``modelyard run``'s pipeline,
   which either registers a new version or finds the model already registered
   ("nothing retrained").
7. Write summary.json, last: into the run folder and as the latest
   (``monitor.output/summary.json``). It records the verdict and what step 6 did.

Verdicts and exit codes (``exit_code``): ``ok`` and ``not-enough-data`` exit 0 (too few
rows is no alarm), ``drift`` exits 1; a failure exits 2: any error before a verdict
(raised as ``ModelyardError``), or drift whose retraining failed.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
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
from monitoring import drift, logscan
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
    name: str
    version: str
    frame: pd.DataFrame  # features + drift.PREDICTION (str) + drift.TARGET
    features: list[str]
    classes: list[Any]
    constant: list[str]  # features constant in the reference: no drift test possible
    uri: str


def reference_for(registry: Registry, model_ref: str, cache: Path) -> Reference:
    """The training split of the serving version, through its registry lineage."""
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
    cached = cache / f"{name}-v{version}.parquet"
    meta_file = cache / f"{name}-v{version}.json"
    if cached.exists() and meta_file.exists():
        meta = files.read_json(meta_file)
        frame = pd.read_parquet(cached)
    else:
        frame, meta = _build_reference(registry, name, version, uri)
        cache.mkdir(parents=True, exist_ok=True)
        files.write_parquet(cached, frame)
        files.write_json(meta_file, meta)
    features = list(meta["features"])
    constant = [f for f in features if frame[f].nunique() <= 1]
    return Reference(name, version, frame, features, list(meta["classes"]), constant, uri)


def _build_reference(
    registry: Registry, name: str, version: str, uri: str
) -> tuple[pd.DataFrame, dict[str, Any]]:
    from pipelines import inference

    folder = registry.download_artifacts(uri.rsplit("/", 1)[0])
    split = pd.read_parquet(folder / uri.rsplit("/", 1)[1])
    schema = files.read_json(folder / "schema.json")
    features = [f["name"] for f in schema["features"]]
    classes = list(schema["classes"])
    with tempfile.TemporaryDirectory(prefix="modelyard-model-") as scratch:
        model = registry.download(name, version, Path(scratch)) / "model.onnx"
        session = inference.session(model)
    probs = inference.predict_proba(session, split[features].to_numpy(np.float32))
    frame = split[features].astype("float64")
    frame[drift.PREDICTION] = [str(classes[i]) for i in probs.argmax(axis=1)]
    frame[drift.TARGET] = split[schema["target"]].astype(str).to_numpy()
    log.info("reference for %s v%s: %d training rows from %s", name, version, len(frame), uri)
    return frame, {"features": features, "classes": classes, "uri": uri}


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
    version: str
    uri: str
    rows: int


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
    """What an action on drift did: the alert (sent | failed | skipped) or the retrain
    (retrained | unchanged | requested | failed | skipped), and why, in words."""

    status: str
    detail: str
    version: str | None = None  # retrain: the version the pipeline's model is registered as


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
    alert: Outcome | None = None  # None until the job has run the step
    retrain: Outcome | None = None

    @property
    def exit_code(self) -> int:
        return exit_code(self.status, self.retrain)

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


def exit_code(status: str, retrain: Outcome | None) -> int:
    """0 no drift or not enough data; 1 drift; 2 drift whose retraining failed. (Every
    other failure is an exception before there is a verdict: the CLI exits 2 on it.)
    A failed alert changes nothing here: the verdict stands and summary.json records it."""
    if retrain is not None and retrain.status == FAILED:
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
    summary.json). Writes the run folder's report and adds the run to the workspace."""
    watch = _Stopwatch()
    now = time.time()
    start = parse_time(since or cfg.window, now)
    end = parse_time(until, now) if until else now + 1
    if start >= end:
        raise MonitoringError(f"empty window: --since {since} is not before --until {until}")
    window = read_window(log_dir, start, end, cfg.sample_rows, seed)
    watch.lap("read_log")
    out = root / cfg.output
    folder = out / "runs" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
    base = Summary(
        status=NOT_ENOUGH,
        message="",
        model=None,
        window=Window(_iso(start), _iso(min(end, now)), str(log_dir), len(window.stats.files)),
        rows=window.rows,
        sampled=len(window.sample),
        malformed_lines=window.stats.malformed + window.skipped,
        folder=str(folder),
    )
    if window.rows < cfg.min_rows:
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
        ref = reference_for(registry, model_ref, out / "reference")
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
    result = drift.compare(
        ref.frame,
        current,
        features=usable,
        drift_share=cfg.drift_share,
        method=cfg.method,
        threshold=cfg.threshold,
        labelled=labelled,
        timestamp=datetime.fromtimestamp(min(end, now), UTC),
        metadata={"model": model_ref, "window_since": _iso(start)},
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
        reference=ReferenceInfo(ref.version, ref.uri, len(ref.frame)),
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
    with files.atomic_dir(folder) as tmp:
        drift.save_html(result, tmp / "report.html")
        plot_scores(summary, tmp / "drift_scores.png")
    drift.add_to_workspace(out / "workspace", cfg.project, result)
    watch.lap("report")
    return replace(summary, seconds=dict(watch.seconds))


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
    a failed alert or retrain is recorded in the Summary, not raised."""
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
    if summary.status != DRIFT:
        alert = retrained = Outcome(SKIPPED, "no drift")
    else:
        say("posting the alert...")
        alert = send_alert(alert_url, summary)
        watch.lap("alert")
        say("retraining...")
        retrained = request_retrain(params, summary, root=root, enabled=retrain, github=github)
        watch.lap("retrain")
    final = replace(
        summary, alert=alert, retrain=retrained, seconds={**summary.seconds, **watch.seconds}
    )
    write_summary(final, root / params.monitor.output)
    return final


def write_summary(summary: Summary, out: Path) -> None:
    """summary.json in the run's folder and as the latest (``out/summary.json``)."""
    data = summary.as_dict()
    files.write_json(Path(summary.folder) / "summary.json", data)
    files.write_json(out / "summary.json", data)  # the latest, for scripts


def send_alert(url: str | None, summary: Summary) -> Outcome:
    """POST the summary (JSON) to the alert webhook. Never raises: an unreachable or
    refusing webhook is recorded as ``failed`` with the reason, and the verdict stands
    (the job's exit code 1 is an alert of its own)."""
    if not url:
        return Outcome(SKIPPED, "no alert webhook (--alert-url or MODELYARD_ALERT_WEBHOOK_URL)")
    payload = {
        "source": "modelyard monitor",
        **{k: v for k, v in summary.as_dict().items() if k not in ("alert", "retrain")},
    }
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


def request_retrain(
    params: Params, summary: Summary, *, root: Path, enabled: bool, github: GitHub | None
) -> Outcome:
    """Drift: ask for a retrain. A GitHub ``repository_dispatch`` ``retrain`` when
    ``github`` is given (train.yml listens): that is a retrain *requested*. Else the
    pipeline here, as ``modelyard run`` runs it (``dvc repro``, then the idempotent
    register). Either way a new version is only a challenger: it still needs a review.
    Never raises a ModelyardError: a failure is recorded as ``failed`` with the reason."""
    if not enabled:
        return Outcome(SKIPPED, "--no-retrain")
    if params.monitor.retrain == "off":
        return Outcome(SKIPPED, "monitor.retrain is off")
    try:
        if github is not None:
            github.dispatch(
                "retrain",
                {
                    "model": summary.model or "",
                    "reason": summary.message[:200],
                    "drift_share": f"{summary.drift_share or 0:.3f}",
                },
            )
            return Outcome(
                REQUESTED,
                f"retrain requested on GitHub ({github.repository}: repository_dispatch "
                "`retrain`, train.yml); no new version yet, and the one it registers will "
                "need a review",
            )
        from pipelines import run as pipeline

        log.info("drift: retraining here (dvc repro in %s)", root)
        done = pipeline.run(params, root)
    except ModelyardError as exc:
        log.error("retraining failed: %s", exc)
        return Outcome(FAILED, str(exc))
    return retrain_outcome(done)


def retrain_outcome(done: PipelineOutcome) -> Outcome:
    """What a local retrain did, in words: a new version, or nothing (the pipeline's model
    is one the registry already holds: `dvc repro` found everything up to date, or made
    the same model again)."""
    if done.created:
        return Outcome(
            RETRAINED,
            f"retrained: {done.name} v{done.version} registered (@{done.alias}); it still "
            "needs a review (`modelyard promote`)",
            done.version,
        )
    return Outcome(
        UNCHANGED,
        f"nothing retrained: the training data has not changed since v{done.version} "
        f"({done.name} v{done.version} already holds the pipeline's model)",
        done.version,
    )


# -- the parts ----------------------------------------------------------------------------------


def plot_scores(summary: Summary, path: Path) -> None:
    """One bar per feature: its drift score against the test's threshold (red: drifted).
    For image-like features (a square count) a heat map of the scores, too."""
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
