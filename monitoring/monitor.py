"""The drift job: `modelyard monitor run [--since ... --until ...]`.

1. Read the window of the inference log in one streaming pass: every prediction is
   counted (per model version, malformed lines skipped and counted), a seeded uniform
   sample of ``monitor.sample_rows`` predictions is kept (reservoir sampling), and
   feedback labels are joined by prediction id. Memory is bounded by the sample, not
   the log.
2. Find the reference through the registry: the serving version (the one most of the
   window's predictions name) -> its ``data.reference_uri`` tag -> the training split
   logged with its training run. Its predictions (the version's own ONNX model, run
   once) and the split are cached per version under ``monitor.output``.
3. Compare with Evidently (``monitoring.drift``): per-feature drift, the drifted share,
   prediction drift; classification quality where feedback labels exist. Data quality:
   the training contract's checks (and the checked-in GX suite's column checks) on the
   sample, through ``pipelines.validation``.
4. Write report.html, summary.json, add the run to the Evidently workspace, post the
   summary to the alert webhook, and on drift trigger retraining.

Verdicts: ``ok`` (exit 0), ``not-enough-data`` (exit 0: too few rows is no alarm),
``drift`` (exit 1); an error is exit 2.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import files, http, tools
from core.errors import ConfigError, MonitoringError, RegistryError
from monitoring import drift
from pipelines import validation
from pipelines.config import Data, Monitor, Validate
from registry.client import Registry
from services import inference_log

log = logging.getLogger(__name__)

OK, DRIFT, NOT_ENOUGH = "ok", "drift", "not-enough-data"
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


@dataclass
class WindowSample:
    since: float
    until: float
    rows: int = 0  # predictions in the window
    sample: list[dict[str, Any]] = field(default_factory=list)
    feedback: dict[str, Any] = field(default_factory=dict)
    models: Counter[str] = field(default_factory=Counter)
    stats: inference_log.ReadStats = field(default_factory=inference_log.ReadStats)
    skipped: int = 0  # complete JSON lines that are not usable records


def read_window(
    log_dir: Path, since: float, until: float, sample_rows: int, seed: int
) -> WindowSample:
    """One pass over the log: count, sample (reservoir), join feedback."""
    if not log_dir.is_dir():
        raise MonitoringError(
            f"no inference log at {log_dir}: point MODELYARD_LOG_DIR (or --log-dir) at the "
            "service's log folder"
        )
    window = WindowSample(since, until)
    rng = random.Random(seed)
    sample = window.sample
    for record in inference_log.read(log_dir, window.stats, newer_than=since):
        kind = record.get("type")
        ts = record.get("ts")
        if not isinstance(ts, (int, float)) or not since <= ts < until:
            continue
        if kind == "feedback":
            window.feedback[str(record.get("id"))] = record.get("label")
            continue
        if kind != "prediction" or not isinstance(record.get("features"), list):
            window.skipped += 1
            continue
        window.rows += 1
        window.models[str(record.get("model"))] += 1
        if len(sample) < sample_rows:
            sample.append(record)
        else:
            j = int(rng.random() * window.rows)
            if j < sample_rows:
                sample[j] = record
    return window


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
    model = registry.download(name, version) / "model.onnx"
    probs = inference.predict_proba(inference.session(model), split[features].to_numpy(np.float32))
    frame = split[features].astype("float64")
    frame[drift.PREDICTION] = [str(classes[i]) for i in probs.argmax(axis=1)]
    frame[drift.TARGET] = split[schema["target"]].astype(str).to_numpy()
    log.info("reference for %s v%s: %d training rows from %s", name, version, len(frame), uri)
    return frame, {"features": features, "classes": classes, "uri": uri}


# -- the job ------------------------------------------------------------------------------------


@dataclass
class Summary:
    status: str
    model: str | None
    window: dict[str, Any]
    rows: int
    sampled: int
    malformed_lines: int
    reference: dict[str, Any] = field(default_factory=dict)
    drift_share: float | None = None
    drift_share_threshold: float | None = None
    drifted_columns: list[str] = field(default_factory=list)
    skipped_columns: list[str] = field(default_factory=list)
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    prediction_drift: dict[str, Any] | None = None
    data_quality: dict[str, Any] | None = None
    classification: dict[str, Any] | None = None
    report: str | None = None
    workspace: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    message: str = ""
    alert: str | None = None
    retrain: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.status == DRIFT else 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(cfg: Monitor, data: Data, validate: Validate, registry: Registry, root: Path,
        log_dir: Path, since: str | None, until: str | None, seed: int = 42) -> Summary:  # fmt: skip
    clock = [time.perf_counter()]

    def lap() -> float:
        """Seconds since the previous lap (the job's per-step timings)."""
        now_ = time.perf_counter()
        elapsed, clock[0] = now_ - clock[0], now_
        return elapsed

    now = time.time()
    start = parse_time(since or cfg.window, now)
    end = parse_time(until, now) if until else now + 1
    if start >= end:
        raise MonitoringError(f"empty window: --since {since} is not before --until {until}")
    timings: dict[str, float] = {}
    window = read_window(log_dir, start, end, cfg.sample_rows, seed)
    timings["read_log"] = lap()
    out = root / cfg.output
    base = Summary(
        status=NOT_ENOUGH, model=None, rows=window.rows, sampled=len(window.sample),
        window={"since": _iso(start), "until": _iso(min(end, now)), "log_dir": str(log_dir),
                "files": len(window.stats.files)},
        malformed_lines=window.stats.malformed + window.skipped, seconds=timings,
    )  # fmt: skip
    if window.rows < cfg.min_rows:
        base.message = (
            f"not enough data: {window.rows} predictions in the window, monitor.min_rows is "
            f"{cfg.min_rows}; no verdict (widen --since or wait for traffic)"
        )
        return _finish(base, out, None)
    model_ref, _ = window.models.most_common(1)[0]
    base.model = model_ref
    if len(window.models) > 1:
        log.warning("the window mixes model versions %s; comparing the sample with %s's reference",
                    dict(window.models), model_ref)  # fmt: skip
    try:
        ref = reference_for(registry, model_ref, out / "reference")
    except RegistryError as exc:
        raise MonitoringError(f"cannot find the reference of {model_ref}: {exc}") from exc
    timings["reference"] = lap()
    current = to_frame(window.sample, ref.features)
    usable = [f for f in ref.features if f not in ref.constant]
    labelled = _labelled(ref, current, window.feedback, cfg.min_feedback)
    result = drift.compare(
        ref.frame, current, usable, cfg.drift_share, cfg.method, cfg.threshold, labelled,
        timestamp=datetime.fromtimestamp(min(end, now), UTC),
        metadata={"model": model_ref, "window_since": _iso(start)},
    )  # fmt: skip
    timings["evidently"] = lap()
    quality = _data_quality(current, ref, data, validate)
    timings["data_quality"] = lap()

    drifted = result.dataset_drift or result.prediction.drifted
    base.status = DRIFT if drifted else OK
    base.reference = {"version": ref.version, "uri": ref.uri, "rows": len(ref.frame)}
    base.drift_share, base.drift_share_threshold = result.drift_share, cfg.drift_share
    base.drifted_columns = result.drifted_columns
    base.skipped_columns = ref.constant
    base.scores = {c.column: {"score": c.score, "method": c.method, "threshold": c.threshold,
                              "drifted": c.drifted} for c in result.columns}  # fmt: skip
    base.prediction_drift = asdict(result.prediction)
    base.data_quality = quality
    if labelled is not None:
        base.classification = {"rows": len(labelled[1]), **result.quality}
    base.message = (
        f"{'DRIFT' if drifted else 'no drift'}: {len(result.drifted_columns)}/{len(usable)} features "
        f"drifted (share {result.drift_share:.2f}, threshold {cfg.drift_share}); prediction drift "
        f"{result.prediction.score:.3f} ({result.prediction.method}, threshold "
        f"{result.prediction.threshold}){' DRIFTED' if result.prediction.drifted else ''}"
    )
    return _finish(base, out, result, cfg.project)


def _finish(
    summary: Summary, out: Path, result: drift.Comparison | None, project: str = ""
) -> Summary:
    """Write the run folder (atomically: all or nothing), the latest summary, the workspace."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
    run_dir = out / "runs" / stamp
    if result is not None:
        summary.report = str(run_dir / "report.html")
        summary.workspace = str(out / "workspace")
    with files.atomic_dir(run_dir) as tmp:
        if result is not None:
            drift.save_html(result, tmp / "report.html")
            plot_scores(summary, tmp / "drift_scores.png")
        files.write_json(tmp / "summary.json", summary.as_dict())
    if result is not None:
        drift.add_to_workspace(out / "workspace", project, result)
    files.write_json(out / "summary.json", summary.as_dict())  # the latest, for scripts
    return summary


def plot_scores(summary: Summary, path: Path) -> None:
    """One bar per feature: its drift score against the test's threshold (red: drifted).
    For image-like features (a square count) a heat map of the scores, too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary.scores)
    scores = np.array([summary.scores[n]["score"] for n in names])
    drifted = [summary.scores[n]["drifted"] for n in names]
    threshold = summary.scores[names[0]]["threshold"] if names else 0.0
    side = round((len(names) + len(summary.skipped_columns)) ** 0.5)
    grid = side * side == len(names) + len(summary.skipped_columns) and side > 2
    fig, axes = plt.subplots(1, 2 if grid else 1, figsize=(13 if grid else 10, 3.6),
                             gridspec_kw={"width_ratios": [3, 1]} if grid else None)  # fmt: skip
    bars = axes[0] if grid else axes
    bars.bar(range(len(names)), scores, color=["#d62728" if d else "#1f77b4" for d in drifted])
    bars.axhline(
        threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}"
    )
    bars.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    bars.set_ylabel(summary.scores[names[0]]["method"] if names else "score", fontsize=8)
    bars.set_title(f"{summary.status}: {len(summary.drifted_columns)}/{len(names)} features drifted "
                   f"(share {summary.drift_share or 0:.2f}), {summary.rows:,} predictions", fontsize=9)  # fmt: skip
    bars.legend(fontsize=8)
    if grid:
        every = [*names, *summary.skipped_columns]
        order = sorted(every, key=lambda n: int(re.sub(r"\D", "", n) or 0))
        cells = np.array([summary.scores.get(n, {}).get("score", np.nan) for n in order])
        image = axes[1].imshow(cells.reshape(side, side), cmap="Reds")
        axes[1].set_title("score by feature position", fontsize=9)
        axes[1].set_xticks([])
        axes[1].set_yticks([])
        fig.colorbar(image, ax=axes[1], fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_frame(sample: list[dict[str, Any]], features: list[str]) -> pd.DataFrame:
    """Prediction records -> the features, PREDICTION (as text) and the prediction id."""
    width = len(features)
    rows = [r for r in sample if len(r["features"]) == width]
    if len(rows) < len(sample):
        log.warning("%d sampled records do not have %d features; left out",
                    len(sample) - len(rows), width)  # fmt: skip
    frame = pd.DataFrame(
        np.asarray([r["features"] for r in rows], dtype=np.float64), columns=features
    )
    frame[drift.PREDICTION] = [str(r.get("prediction")) for r in rows]
    frame["id"] = [str(r.get("id")) for r in rows]
    return frame


def _labelled(ref: Reference, current: pd.DataFrame, feedback: dict[str, Any],
              minimum: int) -> tuple[pd.DataFrame, pd.DataFrame] | None:  # fmt: skip
    if not feedback:
        return None
    joined = current[current["id"].isin(feedback)].copy()
    if len(joined) < minimum:
        log.info("%d sampled predictions have feedback labels (< %d): no classification quality",
                 len(joined), minimum)  # fmt: skip
        return None
    joined[drift.TARGET] = [str(feedback[i]) for i in joined["id"]]
    return ref.frame, joined


def _data_quality(
    current: pd.DataFrame, ref: Reference, data: Data, validate: Validate
) -> dict[str, Any]:
    """The training contract's column checks + the GX suite's feature checks, on the sample."""
    expectations: list[validation.Expectation] = []
    for col in ref.features:
        expectations.append(
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": col}}
        )
        bounds = data.range_for(col)
        if bounds is not None:
            expectations.append({"type": "expect_column_values_to_be_between",
                                 "kwargs": {"column": col, "min_value": bounds[0], "max_value": bounds[1]}})  # fmt: skip
    suite_path = Path(validate.suite)
    try:
        suite = validation.load_suite(suite_path) if suite_path.exists() else []
    except ConfigError as exc:  # a broken suite is reported; the drift verdict still stands
        log.warning("GX suite %s unusable on the window: %s", suite_path, exc)
        suite = []
    expectations += [e for e in suite if e["kwargs"].get("column") in ref.features]
    checks = validation.validate({"window": (current[ref.features], expectations)})
    failed = [c for c in checks if not c.success]
    return {
        "evaluated": len(checks),
        "failed": len(failed),
        "failures": [
            {"expectation": c.expectation, "column": c.column, "observed": c.observed}
            for c in failed
        ][:20],
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


# -- alerts and retraining ------------------------------------------------------------------------


def alert(url: str, summary: Summary) -> str:
    """POST the summary (JSON) to the alert webhook."""

    status, _ = http.request_json(
        "POST", url, {"source": "modelyard monitor", **summary.as_dict()}, what="the alert webhook"
    )
    return f"sent (HTTP {status})"


def retrain(summary: Summary, root: Path) -> str:
    """Drift: ask for a retrain. GitHub `repository_dispatch` `retrain` when configured
    (train.yml listens), else `dvc repro` here. Either way the new version is only a
    challenger: it still goes through the review gate."""
    import subprocess

    from core import github

    gh = github.from_env()
    if gh is not None:
        return gh.dispatch("retrain", {"model": summary.model or "", "reason": summary.message[:200],
                                       "drift_share": f"{summary.drift_share:.3f}"})  # fmt: skip
    log.info("drift: retraining locally with `dvc repro` in %s", root)
    code = subprocess.call([tools.binary("dvc"), "repro"], cwd=root, env=tools.env())
    if code != 0:
        raise MonitoringError(f"retraining (`dvc repro` in {root}) failed with exit {code}")
    return "local:dvc repro"
