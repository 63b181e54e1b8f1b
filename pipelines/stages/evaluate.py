"""evaluate: score the ONNX model on the held-out test set and decide the gates.

Reads the served model (``optimize``'s choice in ``paths.optimized``), the test splits
and the schema. With ONNX Runtime it measures quality (accuracy, macro-F1, per-class
precision/recall, a confusion matrix), latency (p50/p99 at batch 1 and 256) and
behaviour (invariance to small noise, minimum per-class recall) on the base test split.

The second test set, ``test_production`` (held-out production labels, see ``prepare``),
is scored too when it has at least ``evaluate.min_production_rows`` rows: accuracy and
macro-F1 (``production_*`` in the metrics). If the champion pointer
(``pipelines.pointer``) names a champion, that model (its own registered ONNX file) is
scored on the same rows of each test set, and McNemar's exact test asks whether the
challenger is significantly worse: gates ``not_worse_than_champion`` (base) and
``not_worse_than_champion_on_production`` (when the production set is large enough).

Writes ``evaluate.json`` (the DVC metric: numbers only), ``evaluate.details.json`` (the
full report: per-class scores, latency, the production scores, the champion comparisons),
``gates.json`` (each gate, its value, threshold and verdict), ``confusion.csv`` and
``confusion.png`` (plots, base test split).
It does not fail on a gate: ``register`` reads ``gates.json`` and refuses, so the report
is kept either way.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import files
from core.errors import RegistryError
from pipelines import dataset, inference, pointer, tracking
from pipelines.config import PRODUCTION_TEST, Evaluate, Params
from pipelines.models import read_meta
from registry import comparison

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gate:
    name: str
    value: float | None
    threshold: float
    op: str  # ">=" or "<="
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Result:
    metrics: dict[str, Any]
    gates: list[Gate]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def run(params: Params, root: Path) -> Result:
    paths, cfg = params.paths, params.evaluate
    schema = dataset.load_schema(paths, root)
    test = dataset.load_split(paths, "test", schema, root)
    sess = inference.session(root / paths.served_model, cfg.threads)
    probs = inference.predict_proba(sess, test.x)
    pred = probs.argmax(1)

    metrics: dict[str, Any] = quality(test.y, pred, schema.classes)
    lat = {
        f"batch_{b}": asdict(inference.latency(sess, test.x, b, runs))
        for b, runs in ((1, cfg.latency_runs), (256, max(10, cfg.latency_runs // 10)))
    }
    # The gate's figure: CPU time per call, which other processes' load cannot inflate.
    cpu = inference.cpu_latency(sess, test.x, 1, cfg.latency_runs)
    lat["batch_1"].update(
        cpu_p50_ms=cpu.p50_ms,
        cpu_p99_ms=cpu.p99_ms,
        cpu_rounds=cpu.rounds,
        load_1min=os.getloadavg()[0],
    )
    metrics["latency"] = lat
    rng = np.random.default_rng(params.seed)
    metrics["noise_invariance"] = noise_invariance(sess, test.x, pred, schema, cfg.noise_scale, rng)

    production = dataset.load_split(paths, PRODUCTION_TEST, schema, root)
    scored: dict[str, tuple[dataset.Split, np.ndarray]] = {"test": (test, pred)}
    if len(production.y) >= cfg.min_production_rows:
        production_pred = inference.predict_proba(sess, production.x).argmax(1)
        scored[PRODUCTION_TEST] = (production, production_pred)
        metrics["production"] = {
            "scored": True,
            "rows": len(production.y),
            **production_quality(production.y, production_pred, schema.classes),
        }
    else:
        metrics["production"] = {
            "scored": False,
            "rows": len(production.y),
            "reason": f"{len(production.y)} production test rows, fewer than "
            f"evaluate.min_production_rows ({cfg.min_production_rows})",
        }

    compared = compare_with_champion(params, root, schema, scored)
    if compared is not None:
        metrics["champion"] = compared["test"]
        if PRODUCTION_TEST in compared:
            metrics["champion_production"] = compared[PRODUCTION_TEST]
    gates = decide(cfg, metrics)
    result = Result(metrics, gates)

    reports = root / paths.reports
    files.write_metrics(reports / "evaluate.json", headline(metrics, gates))
    files.write_json(reports / "evaluate.details.json", metrics)
    files.write_json(
        reports / "gates.json",
        {"passed": result.passed, "gates": {g.name: asdict(g) for g in gates}},
    )
    labels = [str(c) for c in schema.classes]
    confusion = pd.DataFrame(
        {"actual": [labels[i] for i in test.y], "predicted": [labels[i] for i in pred]}
    )
    files.write_csv(reports / "confusion.csv", confusion)
    png = reports / "confusion.png"
    with files.atomic_path(png) as tmp:
        plot_confusion(test.y, pred, labels, metrics["accuracy"], tmp)

    meta = read_meta(root / paths.native)
    with tracking.resume(meta["run_id"]):
        tracking.log_metrics(
            {k: v for k, v in metrics.items() if k not in ("per_class", "production")},
            prefix="test.",
        )
        tracking.log_metrics(
            {k: v for k, v in metrics["production"].items() if k != "per_class"},
            prefix="test_production.",
        )
        tracking.log_metrics({g.name: float(g.passed) for g in gates}, prefix="gate.")
        tracking.log_artifact(png, "evaluate")
        tracking.log_artifact(reports / "gates.json", "evaluate")
    prod = metrics["production"]
    log.info(
        "accuracy %.4f; production test: %s; gates %s",
        metrics["accuracy"],
        f"accuracy {prod['accuracy']:.4f} on {prod['rows']} rows"
        if prod["scored"]
        else prod["reason"],
        "passed" if result.passed else "FAILED",
    )
    return result


def production_quality(y: np.ndarray, pred: np.ndarray, classes: list[Any]) -> dict[str, Any]:
    """Quality on the production test rows: accuracy, macro-F1, per class."""
    full = quality(y, pred, classes)
    return {k: full[k] for k in ("accuracy", "macro_f1", "min_class_recall", "per_class")}


def headline(metrics: dict[str, Any], gates: list[Gate]) -> dict[str, float]:
    """The DVC metric: test-set quality, behaviour, latency and how many gates failed;
    the production test set's accuracy and macro-F1 when it was scored, and its rows."""
    lat = metrics["latency"]
    prod = metrics.get("production") or {}
    scored = (
        {"production_accuracy": prod["accuracy"], "production_macro_f1": prod["macro_f1"]}
        if prod.get("scored")
        else {}
    )
    return {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "min_class_recall": metrics["min_class_recall"],
        "noise_invariance": metrics["noise_invariance"],
        "p50_ms_batch1": lat["batch_1"]["p50_ms"],
        "p99_ms_batch1": lat["batch_1"]["p99_ms"],
        "cpu_p99_ms_batch1": lat["batch_1"].get("cpu_p99_ms", lat["batch_1"]["p99_ms"]),
        "p50_ms_batch256": lat["batch_256"]["p50_ms"],
        "p99_ms_batch256": lat["batch_256"]["p99_ms"],
        "test_rows": metrics["test_rows"],
        **scored,
        "production_rows": int(prod.get("rows", 0)),
        "gates_failed": sum(not g.passed for g in gates),
    }


def quality(y: np.ndarray, pred: np.ndarray, classes: list[Any]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    idx = list(range(len(classes)))
    precision, recall, _, support = precision_recall_fscore_support(
        y, pred, labels=idx, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=idx, average="macro", zero_division=0)),
        "min_class_recall": float(recall[support > 0].min()) if (support > 0).any() else 0.0,
        "per_class": {
            str(c): {"precision": float(p), "recall": float(r), "support": int(s)}
            for c, p, r, s in zip(classes, precision, recall, support, strict=True)
        },
        "test_rows": len(y),
    }


def noise_invariance(
    sess: Any,
    x: np.ndarray,
    pred: np.ndarray,
    schema: dataset.Schema,
    scale: float,
    rng: np.random.Generator,
) -> float:
    """Share of test predictions unchanged under Gaussian noise of ``scale`` x train std."""
    std = np.array([f.get("train_std", 0.0) for f in schema.features], dtype=np.float32)
    noisy = x + rng.normal(size=x.shape).astype(np.float32) * std * scale
    lo = np.array([f.get("min", -np.inf) for f in schema.features], dtype=np.float32)
    hi = np.array([f.get("max", np.inf) for f in schema.features], dtype=np.float32)
    noisy = np.clip(noisy, lo, hi)
    return float((inference.predict_proba(sess, noisy).argmax(1) == pred).mean())


def mcnemar(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test on the discordant pairs of two classifiers (the review gate
    uses the same one at approval: registry.comparison)."""
    return asdict(comparison.mcnemar(y, challenger, champion))


def compare_with_champion(
    params: Params,
    root: Path,
    schema: dataset.Schema,
    scored: dict[str, tuple[dataset.Split, np.ndarray]],
) -> dict[str, dict[str, Any]] | None:
    """Score the champion the pointer file names (``pipelines.pointer``), with its own
    registered ONNX file, on the same rows as the challenger: each set in ``scored``
    (name -> (split, challenger's predictions)). One comparison per set, or None."""
    from registry.client import Registry

    champ = pointer.read(params.paths, root)
    registry = Registry(tracking.tracking_uri(root))
    # register.champion_model: in team mode the production model, not the candidates.
    now = pointer.current(registry, params.register_.champion_model)
    if now != champ:
        raise RegistryError(
            f"the champion of {now.model} changed since {params.paths.report(pointer.FILE)} "
            f"was written (it names {_named(champ)}, the registry now {_named(now)}): run "
            "`modelyard run` (or `modelyard champion`, then `dvc repro`) so evaluate compares "
            "with the current champion"
        )
    if champ.version is None:
        return None
    # The download is needed only until the session holds the model: never left behind.
    with tempfile.TemporaryDirectory(prefix="modelyard-model-") as scratch:
        onnx_file = registry.download(champ.model, champ.version, Path(scratch)) / "model.onnx"
        if champ.onnx_sha256 and files.sha256(onnx_file) != champ.onnx_sha256:
            raise RegistryError(
                f"champion {champ.model} v{champ.version}: its model.onnx does not match the "
                f"onnx.sha256 the registry recorded ({champ.onnx_sha256[:12]}...): the artifact "
                "was changed after registration; investigate before comparing against it"
            )
        sess = inference.session(onnx_file)
    n_inputs = sess.get_inputs()[0].shape[1]
    if n_inputs != len(schema.feature_names):
        log.warning(
            "champion v%s takes %s features, not %d: not compared",
            champ.version,
            n_inputs,
            len(schema.feature_names),
        )
        skipped = {
            "version": champ.version,
            "compared": False,
            "reason": "different feature schema",
        }
        return {name: dict(skipped) for name in scored}
    out: dict[str, dict[str, Any]] = {}
    for name, (split, pred) in scored.items():
        champ_pred = inference.predict_proba(sess, split.x).argmax(1)
        out[name] = {
            "model": champ.model,
            "version": champ.version,
            "compared": True,
            "rows": len(split.y),
            "accuracy": float((champ_pred == split.y).mean()),
            **mcnemar(split.y, pred, champ_pred),
        }
    return out


def _named(champ: pointer.Pointer) -> str:
    if champ.version is None:
        return f"no champion of {champ.model}"
    return f"{champ.model} v{champ.version} (sha256 {(champ.onnx_sha256 or '?')[:12]})"


def decide(cfg: Evaluate, m: dict[str, Any]) -> list[Gate]:
    """Every gate from params, with its measured value. Pure: metrics in, verdicts out."""
    gates = [
        _gate("min_accuracy", m["accuracy"], cfg.min_accuracy, ">="),
        _gate("min_macro_f1", m["macro_f1"], cfg.min_macro_f1, ">="),
        latency_gate(cfg, m["latency"]["batch_1"]),
        _gate("min_class_recall", m["min_class_recall"], cfg.min_class_recall, ">="),
        _gate("min_noise_invariance", m["noise_invariance"], cfg.min_noise_invariance, ">="),
    ]
    champ = m.get("champion")
    if champ and champ.get("compared"):
        gates.append(_champion_gate("not_worse_than_champion", champ, m["accuracy"], cfg, "test"))
    prod = m.get("production") or {}
    champ_prod = m.get("champion_production")
    if prod.get("scored") and champ_prod and champ_prod.get("compared"):
        gates.append(
            _champion_gate(
                "not_worse_than_champion_on_production",
                champ_prod,
                prod["accuracy"],
                cfg,
                "production test",
            )
        )
    return gates


def _champion_gate(
    name: str, champ: dict[str, Any], accuracy: float, cfg: Evaluate, rows: str
) -> Gate:
    """Fails only when the challenger is worse on these rows and McNemar says it is
    significant (p < ``champion_alpha``)."""
    test = comparison.McNemar(
        champ["only_champion_right"], champ["only_challenger_right"], champ["p_value"]
    )
    on = f" on {champ['rows']} {rows} rows" if "rows" in champ else ""
    of = f" of {champ['model']}" if champ.get("model") else ""
    return Gate(
        name,
        champ["p_value"],
        cfg.champion_alpha,
        ">=",
        passed=not comparison.significantly_worse(test, cfg.champion_alpha),
        detail=(
            f"champion v{champ['version']}{of}{on}: accuracy {champ['accuracy']:.4f} vs "
            f"{accuracy:.4f}, McNemar p={champ['p_value']:.3g}"
        ),
    )


TIMING_GATES = ("max_p99_ms",)  # gates on a measured time: re-measuring can change them


def latency_gate(cfg: Evaluate, batch_1: dict[str, Any]) -> Gate:
    """``max_p99_ms`` on the p99 CPU time per batch-1 call (median of rounds): what the
    model costs, not how busy the machine was. The wall-clock p99 and the load average at
    the time are in the detail, reported, never gated."""
    cpu = batch_1.get("cpu_p99_ms")
    if cpu is None:  # a report from before CPU time was measured
        return _gate("max_p99_ms", batch_1["p99_ms"], cfg.max_p99_ms, "<=")
    load = batch_1.get("load_1min")
    detail = (
        f"CPU time per call, p99 (median of {batch_1.get('cpu_rounds', '?')} rounds); "
        f"wall-clock p99 {batch_1['p99_ms']:.4g} ms"
        + (f" at load average {load:.2f}" if load is not None else "")
        + " (reported, not gated)"
    )
    gate = _gate("max_p99_ms", cpu, cfg.max_p99_ms, "<=")
    if not gate.passed:
        detail += (
            "; a timing: if the machine was busy, measure again when it is quiet with "
            "`modelyard run --remeasure` (or `dvc repro -f -s evaluate`), else make the "
            "model cheaper or raise evaluate.max_p99_ms"
        )
    return Gate(gate.name, gate.value, gate.threshold, gate.op, gate.passed, detail)


def _gate(name: str, value: float, threshold: float, op: str) -> Gate:
    passed = value >= threshold if op == ">=" else value <= threshold
    return Gate(name, float(value), threshold, op, passed)


def plot_confusion(
    y: np.ndarray, pred: np.ndarray, labels: list[str], acc: float, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y, pred, labels=list(range(len(labels))))
    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)), dpi=110)
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        if v:
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                color="white" if v > cm.max() / 2 else "black",
                fontsize=8,
            )
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(f"Test confusion matrix (accuracy {acc:.3f})")
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
