"""Challenger vs champion on the same rows: the scores, McNemar's test and the rule.

One rule for the whole project: ``evaluate`` applies it at training time (gates
``not_worse_than_champion`` and ``not_worse_than_champion_on_production``) and the
review gate applies it again at approval time, against the champion of that moment,
on the candidate's own logged test split(s). A challenger is refused only when it is
worse on those rows (the champion gets more of the discordant rows right) and McNemar's
exact test says so significantly (p < alpha).

Pure functions on label arrays (``mcnemar``, ``scores``, ``compare_split``), plus
``predict`` (ONNX Runtime on a model file) and ``load_split`` (a split as the pipeline
logs it, read through its schema.json) for the gate, which may not import ``pipelines``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from core import files
from core.errors import DataError

REFERENCE = "reference"  # the run's artifact folder: the splits and schema.json
BASE, PRODUCTION = "test", "test_production"  # the logged test splits


@dataclass(frozen=True)
class McNemar:
    only_champion_right: int  # champion right, challenger wrong
    only_challenger_right: int
    p_value: float


def mcnemar(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray) -> McNemar:
    """McNemar's exact test on the discordant pairs of two classifiers' predictions."""
    from scipy.stats import binomtest

    ch_right, cp_right = challenger == y, champion == y
    only_champion = int((cp_right & ~ch_right).sum())
    only_challenger = int((ch_right & ~cp_right).sum())
    n = only_champion + only_challenger
    p = 1.0 if n == 0 else float(binomtest(only_champion, n, 0.5).pvalue)
    return McNemar(only_champion, only_challenger, p)


def significantly_worse(test: McNemar, alpha: float) -> bool:
    """The rule: worse on these rows, and McNemar says so at ``alpha``."""
    return test.only_champion_right > test.only_challenger_right and test.p_value < alpha


@dataclass(frozen=True)
class Scores:
    accuracy: float
    macro_f1: float
    recall: dict[str, float]  # class -> recall


def scores(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> Scores:
    """Accuracy, macro-F1 and per-class recall (sklearn's definitions with every class
    counted and zero_division=0)."""
    recall: dict[str, float] = {}
    f1 = []
    for i, name in enumerate(classes):
        tp = int(((pred == i) & (y == i)).sum())
        actual, predicted = int((y == i).sum()), int((pred == i).sum())
        r = tp / actual if actual else 0.0
        p = tp / predicted if predicted else 0.0
        recall[str(name)] = r
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    accuracy = float((pred == y).mean()) if len(y) else 0.0
    return Scores(accuracy, float(np.mean(f1)) if f1 else 0.0, recall)


@dataclass(frozen=True)
class SplitComparison:
    """Both models on the same rows of one test split."""

    split: str
    rows: int
    challenger: Scores
    champion: Scores
    test: McNemar
    worse: bool  # significantly_worse at the alpha it was judged with
    # Whose rows: the candidate's logged split, or the rows the gate kept when it approved
    # the champion (split "gate:test"...), which no trainer can choose; with their sha256.
    source: str = ""
    sha256: str = ""


def compare_split(
    split: str,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    classes: list[str],
    *,
    alpha: float,
) -> SplitComparison:
    test = mcnemar(y, challenger, champion)
    return SplitComparison(
        split,
        len(y),
        scores(y, challenger, classes),
        scores(y, champion, classes),
        test,
        significantly_worse(test, alpha),
    )


@dataclass(frozen=True)
class Comparison:
    """The candidate against the champion of the moment (None: there is none)."""

    champion: str | None  # "NAME vN"
    alpha: float
    splits: list[SplitComparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was not compared, and why

    @property
    def passed(self) -> bool:
        return not any(s.worse for s in self.splits)

    def summary(self) -> str:
        """One line per compared split (what ``modelyard approve`` prints)."""
        if self.champion is None:
            return "; ".join(self.notes) or "no champion yet: nothing to compare with"
        parts = []
        for s in self.splits:
            verdict = "WORSE" if s.worse else "not worse"
            whose = f" ({s.source}, sha256 {s.sha256[:12]})" if s.source else ""
            parts.append(
                f"vs champion {self.champion} on the same {s.rows} {s.split} rows{whose}: accuracy "
                f"{s.challenger.accuracy:.4f} vs {s.champion.accuracy:.4f}, macro-F1 "
                f"{s.challenger.macro_f1:.4f} vs {s.champion.macro_f1:.4f}; "
                f"{s.test.only_challenger_right} rows only the candidate gets right, "
                f"{s.test.only_champion_right} only the champion; McNemar p = "
                f"{s.test.p_value:.3g} ({verdict}, alpha {self.alpha:g})"
            )
        return "; ".join(parts + self.notes)

    def record(self) -> dict[str, Any]:
        """A compact, JSON-able copy (the signed approval and the audit carry it)."""

        def rounded(value: Any) -> Any:
            if isinstance(value, float):
                return round(value, 6)
            if isinstance(value, dict):
                return {k: rounded(v) for k, v in value.items()}
            if isinstance(value, list):
                return [rounded(v) for v in value]
            return value

        out: dict[str, Any] = rounded(asdict(self))
        return out | {"passed": self.passed, "summary": self.summary()}


def predict(onnx_file: Path, x: np.ndarray) -> np.ndarray:
    """Class indices a model file predicts for ``x`` (ONNX Runtime, CPU; the first input,
    the ``probabilities`` output or else the first one)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in sess.get_outputs()]
    output = "probabilities" if "probabilities" in outputs else outputs[0]
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    labels: np.ndarray = np.asarray(sess.run([output], feed)[0]).argmax(1)
    return labels


def input_width(onnx_file: Path) -> int | None:
    """How many features the model takes (None: not fixed)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    width = sess.get_inputs()[0].shape[-1]
    return width if isinstance(width, int) else None


@dataclass(frozen=True)
class LabelledRows:
    x: np.ndarray
    y: np.ndarray
    classes: list[str]


def load_split(parquet: Path, schema_file: Path) -> LabelledRows:
    """A split as train logs it (``reference/<split>.parquet``) read through the run's
    ``reference/schema.json``: features in the schema's order, labels as class indices."""
    import pandas as pd

    with open(schema_file, encoding="utf-8") as fh:
        schema = json.load(fh)
    frame = pd.read_parquet(parquet)
    features = [str(f["name"]) for f in schema["features"]]
    classes = [str(c) for c in schema["classes"]]
    missing = [c for c in [*features, schema["target"]] if c not in frame.columns]
    if missing:
        raise DataError(f"{parquet.name} lacks the schema's columns {missing[:5]}")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index.get(str(v), -1) for v in frame[schema["target"]]], dtype=np.int64)
    if (y < 0).any():
        raise DataError(f"{parquet.name} holds labels outside the schema's classes")
    x = np.ascontiguousarray(frame[features].to_numpy(dtype=np.float32))
    return LabelledRows(x, y, classes)


def compare_models(
    challenger: Path,
    champion: Path,
    reference: Path,
    *,
    champion_label: str,
    alpha: float,
    min_production_rows: int,
    source: str = "",
    prefix: str = "",
) -> Comparison:
    """Both model files on the rows of a logged ``reference`` (the folder holds
    ``test.parquet``, ``schema.json`` and, when there were any, ``test_production.parquet``:
    the challenger's own, or the ones the gate kept), judged as ``evaluate`` judges: the
    production split only with at least ``min_production_rows`` rows. ``source`` says
    whose rows they are and ``prefix`` marks the split names (``gate:``). Raises
    DataError when the base split or the schema is missing."""
    schema = reference / "schema.json"
    for needed in (reference / f"{BASE}.parquet", schema):
        if not needed.is_file():
            raise DataError(f"{REFERENCE}/{needed.name} was not logged")
    base = load_split(reference / f"{BASE}.parquet", schema)
    width = input_width(champion)
    if width is not None and width != base.x.shape[1]:
        return Comparison(
            champion_label,
            alpha,
            notes=[
                f"not compared: the champion takes {width} features, this version "
                f"{base.x.shape[1]} (another contract)"
            ],
        )
    splits, notes = [], []
    sets = [(BASE, base)]
    production = reference / f"{PRODUCTION}.parquet"
    if production.is_file():
        rows = load_split(production, schema)
        if len(rows.y) >= min_production_rows:
            sets.append((PRODUCTION, rows))
        else:
            notes.append(
                f"{PRODUCTION}: {len(rows.y)} rows, fewer than {min_production_rows}: not compared"
            )
    for name, rows in sets:
        judged = compare_split(
            f"{prefix}{name}",
            rows.y,
            predict(challenger, rows.x),
            predict(champion, rows.x),
            rows.classes,
            alpha=alpha,
        )
        digest = files.sha256(reference / f"{name}.parquet") if source else ""
        splits.append(replace(judged, source=source, sha256=digest))
    return Comparison(champion_label, alpha, splits, notes)
