"""What a person reads of a drift run: the header of report.html and the drift scores
plot (drift_scores.png)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monitoring import drift
from monitoring.reference import Reference
from monitoring.verdict import DRIFT, OK, Summary
from pipelines.config import Monitor

log = logging.getLogger(__name__)

VERDICT_COLOURS: dict[str, str] = {OK: "#2ca02c", DRIFT: "#d62728"}


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
        color=VERDICT_COLOURS.get(summary.status, "black"),
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
