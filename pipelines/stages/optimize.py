"""optimize: make the served model smaller or faster, measured, within an accuracy budget.

Builds variants of the exported FP32 model (``paths.onnx``), checks each one's accuracy
on the validation split, benchmarks it with ONNX Runtime on this machine, and picks one
with ``choose`` (a pure function: a table in, a choice out).

Variants (those that apply to the model family):

- ``fp32``: the exported model, the reference;
- ``fp32-ort``: ONNX Runtime's offline graph optimizations saved to a file;
- ``int8-dynamic``: dynamic quantization (int8 weights, activations quantized at run time);
- ``int8-static``: static QDQ quantization, per-channel weights, calibrated on a sample of
  the training split (``optimize.calibration_rows``);
- ``pruned``: torch models: global magnitude pruning (``optimize.sparsity``) with a short
  fine-tune, exported again;
- ``pruned-int8-static``: the pruned model, statically quantized.

Scikit-learn models export to ONNX-ML operators that the quantizer leaves alone: a
quantized file with no quantized operator is reported as not applicable, not measured
as if it were int8.

Outputs: ``paths.optimized`` (a folder: ``model.onnx`` = the choice, ``variants/``),
``optimize.json`` (DVC metric: the chosen variant's numbers against fp32),
``optimize.details.json`` (the choice, its reason, the table, the CPU), ``optimize.md``,
``optimize.png`` (bar chart), all logged to the pipeline's MLflow run. ``evaluate`` and
``register`` use the chosen file; ``paths.onnx`` stays as the FP32 reference.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core import files
from core.errors import TrainingError
from pipelines import dataset, inference, tracking
from pipelines.config import Optimize, Params

log = logging.getLogger(__name__)

REFERENCE = "fp32"
METRICS = (
    "p99_ms_batch1",
    "p50_ms_batch1",
    "p99_ms_batch256",
    "p50_ms_batch256",
    "neg_rows_per_s",
    "size_bytes",
)
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16")


@dataclass(frozen=True)
class Row:
    """One variant's measurements."""

    variant: str
    accuracy: float
    size_bytes: int
    p50_ms_batch1: float
    p99_ms_batch1: float
    p50_ms_batch256: float
    p99_ms_batch256: float
    rows_per_s: float  # at batch 256

    @property
    def neg_rows_per_s(self) -> float:  # lower is better, like the other metrics
        return -self.rows_per_s

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass(frozen=True)
class Choice:
    variant: str
    reason: str
    eligible: list[str]
    rejected: dict[str, str]  # variant -> why it was not eligible


def choose(
    table: list[Row],
    metric: str,
    budget_points: float,
    tie_tolerance: float = 0.0,
    reference: str = REFERENCE,
) -> Choice:
    """The fastest variant by ``metric`` (lower is better) whose accuracy is at most
    ``budget_points`` percentage points below the reference's. Variants within
    ``tie_tolerance`` (relative) of the fastest are tied; ties go to the smaller file,
    then to the reference, then by name."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: one of {', '.join(METRICS)}")
    by_name = {r.variant: r for r in table}
    if reference not in by_name:
        raise ValueError(f"the table has no reference variant {reference!r}")
    floor = by_name[reference].accuracy
    eligible: list[Row] = []
    rejected: dict[str, str] = {}
    for row in table:
        drop = (floor - row.accuracy) * 100
        # A tiny epsilon so a drop of exactly the budget (in float arithmetic) is allowed.
        if drop > budget_points + 1e-9:
            rejected[row.variant] = f"accuracy drop {drop:.2f} points > budget {budget_points:g}"
        else:
            eligible.append(row)
    best = min(r.metric(metric) for r in eligible)
    margin = abs(best) * tie_tolerance
    tied = [r for r in eligible if r.metric(metric) <= best + margin]
    pick = min(tied, key=lambda r: (r.size_bytes, r.variant != reference, r.variant))
    others = ", ".join(r.variant for r in tied if r is not pick)
    fastest = min(tied, key=lambda r: r.metric(metric))
    reason = (
        f"{metric} {pick.metric(metric):.4g}, the best of {len(eligible)} variants within "
        f"{budget_points:g} accuracy points of {reference}"
    )
    if others:
        reason += (
            f", give or take {tie_tolerance:.0%} (fastest: {fastest.variant} at {best:.4g}); "
            f"tied with {others}, so the smaller file (then {reference}) wins"
        )
    return Choice(pick.variant, reason, [r.variant for r in eligible], rejected)


# -- CPU -------------------------------------------------------------------------------------


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU's model and the SIMD flags that decide whether int8 can pay, read from
    ``cpuinfo`` (Linux); elsewhere only the platform's processor name."""
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    return parse_cpuinfo(text, platform.processor() or platform.machine())


def parse_cpuinfo(text: str, default_model: str) -> dict[str, Any]:
    """``cpu_features`` of a /proc/cpuinfo text: the first CPU's flags and model name."""
    flags: set[str] = set()
    model = default_model
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "model name":
            model = value.strip()
    wanted = (
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    )
    present = {f: f in flags for f in wanted}
    vnni = any(present[f] for f in INT8_FLAGS)
    return {
        "model": model,
        "flags": present,
        "int8_acceleration": vnni,
        "note": (
            "VNNI/AMX present: int8 dot products are accelerated"
            if vnni
            else "no VNNI/AMX: int8 runs on plain AVX2 instructions; expect FP32 to win unless "
            "the model is large enough for the 4x smaller weights to matter"
        ),
    }


# -- variants --------------------------------------------------------------------------------


class NotApplicable(Exception):
    """This variant does not apply to this model (reported, not measured)."""


def _graph_optimized(src: Path, out: Path, level: str) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def _preprocessed(src: Path, tmp: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp / f"{src.stem}.pre.onnx"
    # Symbolic shape inference writes a temporary file into the working directory.
    with contextlib.chdir(tmp):
        try:
            quant_pre_process(str(src.resolve()), str(out), skip_symbolic_shape=False)
        except Exception as exc:  # onnxruntime raises a bare Exception for this case
            if cannot_infer_shapes(exc):
                raise NotApplicable(
                    "ONNX Runtime's symbolic shape inference, which quantization needs, has no "
                    f"rule for an operator of this graph ({exc})"
                ) from exc
            raise
    return out


INCOMPLETE_SHAPES = "Incomplete symbolic shape inference"


def cannot_infer_shapes(exc: BaseException) -> bool:
    """Whether ``exc`` is onnxruntime's symbolic shape inference giving up on operators it
    has no rule for (ONNX-ML's, for one): the one quantizer failure that means "does not
    apply to this model". Any other error is a real failure and stops the stage."""
    return type(exc) is Exception and str(exc) == INCOMPLETE_SHAPES


def _check_quantized(path: Path) -> None:
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    quantized = {
        "QuantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeMatMul",
    }
    if not ops & quantized:
        raise NotApplicable(
            f"no operator of this model was quantized (ops: {', '.join(sorted(ops))})"
        )


QUANTIZABLE = {"Conv", "MatMul", "Gemm"}


def _quantizable(src: Path) -> None:
    import onnx

    ops = {n.op_type for n in onnx.load(str(src)).graph.node}
    if not ops & QUANTIZABLE:
        raise NotApplicable(
            f"no {'/'.join(sorted(QUANTIZABLE))} operators to quantize (ops: {', '.join(sorted(ops))})"
        )


def _dynamic_int8(src: Path, out: Path, tmp: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    _quantizable(src)
    quantize_dynamic(str(_preprocessed(src, tmp)), str(out), weight_type=QuantType.QInt8)
    _check_quantized(out)


def _static_int8(src: Path, out: Path, tmp: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [
                    {inference.INPUT_NAME: calibration[i : i + 32]}
                    for i in range(0, len(calibration), 32)
                ]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    _quantizable(src)
    quantize_static(
        str(_preprocessed(src, tmp)),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    _check_quantized(out)


# -- measurement -------------------------------------------------------------------------------


def measure(
    built: dict[str, Path],
    x_val: np.ndarray,
    y_val: np.ndarray,
    cfg: Optimize,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Accuracy on the validation split, size, and latency of every variant.

    Latency is taken in ``cfg.rounds`` interleaved rounds (each round times every variant
    in turn), so background noise on the machine hits all variants alike. p50 is over
    all calls; p99 is the median of the per-round p99s, which one stray hiccup cannot move.
    """
    sessions = {name: inference.session(path, cfg.threads) for name, path in built.items()}
    one: dict[str, list[np.ndarray]] = {name: [] for name in built}
    big: dict[str, list[np.ndarray]] = {name: [] for name in built}
    per_round_1 = max(cfg.runs // cfg.rounds, 10)
    per_round_256 = max(cfg.runs // 4 // cfg.rounds, 5)
    for sess in sessions.values():  # warm every session up once, before any timing
        inference.timings(sess, x_val, 1, 1, cfg.warmup)
        inference.timings(sess, x_val, 256, 1, max(cfg.warmup // 4, 2))
    for rnd in range(cfg.rounds):
        if progress:
            progress(f"timing round {rnd + 1}/{cfg.rounds}")
        for name, sess in sessions.items():
            one[name].append(inference.timings(sess, x_val, 1, per_round_1, 2))
            big[name].append(inference.timings(sess, x_val, 256, per_round_256, 1))
    rows = []
    for name, sess in sessions.items():
        accuracy = float((inference.predict_proba(sess, x_val).argmax(1) == y_val).mean())
        t1, t256 = np.concatenate(one[name]) * 1e3, np.concatenate(big[name]) * 1e3
        rows.append(
            Row(
                name,
                accuracy,
                built[name].stat().st_size,
                float(np.median(t1)),
                float(np.median([np.percentile(r * 1e3, 99) for r in one[name]])),
                float(np.median(t256)),
                float(np.median([np.percentile(r * 1e3, 99) for r in big[name]])),
                float(256 / (t256.mean() / 1e3)),
            )
        )
    return rows


# -- the stage ---------------------------------------------------------------------------------


@dataclass
class Result:
    choice: Choice
    table: list[Row]
    skipped: dict[str, str] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)


def run(params: Params, root: Path, progress: Callable[[str], None] | None = None) -> Result:
    from pipelines.models import load_native

    paths, cfg = params.paths, params.optimize
    schema = dataset.load_schema(paths, root)
    train = dataset.load_split(paths, "train", schema, root)
    val = dataset.load_split(paths, "val", schema, root)
    fp32 = root / paths.onnx
    rng = np.random.default_rng(params.seed)
    calibration = train.x[rng.permutation(len(train.x))[: cfg.calibration_rows]].astype(np.float32)

    target = root / paths.optimized
    with files.atomic_dir(target) as out, tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        variants = out / "variants"
        variants.mkdir()
        built: dict[str, Path] = {}
        skipped: dict[str, str] = {}

        def build(name: str, make: Callable[[Path], object]) -> None:
            if name not in cfg.variants:
                return
            if progress:
                progress(f"building {name}")
            path = variants / f"{name}.onnx"
            try:
                make(path)
            except NotApplicable as exc:
                skipped[name] = str(exc)
                path.unlink(missing_ok=True)
                log.info("optimize: %s not applicable: %s", name, exc)
                return
            built[name] = path

        build(REFERENCE, lambda p: shutil.copyfile(fp32, p))
        build("fp32-ort", lambda p: _graph_optimized(fp32, p, cfg.graph_level))
        build("int8-dynamic", lambda p: _dynamic_int8(fp32, p, tmp))
        build("int8-static", lambda p: _static_int8(fp32, p, tmp, calibration))
        adapter, model, meta = load_native(root / paths.native)
        pruner = getattr(adapter, "prune", None)
        if pruner is None:
            for name in ("pruned", "pruned-int8-static"):
                if name in cfg.variants:
                    skipped[name] = f"{meta['family']} models have no weights to prune"
        else:

            def make_pruned(p: Path) -> None:
                pruned = pruner(
                    model,
                    cfg.sparsity,
                    train.x,
                    train.y,
                    cfg.finetune_epochs,
                    params.train,
                    params.seed,
                )
                adapter.export_onnx(pruned, len(schema.feature_names), p, params.export.opset)

            build("pruned", make_pruned)
            if "pruned" in built:
                build(
                    "pruned-int8-static",
                    lambda p: _static_int8(built["pruned"], p, tmp, calibration),
                )
        if REFERENCE not in built:
            raise TrainingError("optimize.variants must include fp32, the reference")

        table = measure(built, val.x, val.y, cfg, progress)
        choice = choose(table, cfg.metric, cfg.accuracy_budget, cfg.tie_tolerance)
        shutil.copyfile(built[choice.variant], out / "model.onnx")
    cpu = cpu_features()
    result = Result(choice, table, skipped, cpu)
    _write_reports(result, cfg, root / paths.reports)
    _log(result, root / paths.reports, meta)
    return result


def headline(result: Result, cfg: Optimize) -> dict[str, float]:
    """The DVC metric: the served variant's numbers and how they compare with fp32."""
    by_name = {r.variant: r for r in result.table}
    chosen, ref = by_name[result.choice.variant], by_name[REFERENCE]
    return {
        "speedup_vs_fp32": speedup(ref, chosen, cfg.metric),
        "size_ratio_vs_fp32": chosen.size_bytes / ref.size_bytes,
        "accuracy_drop_points": (ref.accuracy - chosen.accuracy) * 100,
        "size_bytes": chosen.size_bytes,
    }


def report(result: Result, cfg: Optimize) -> dict[str, Any]:
    """The full report (``optimize.details.json``): choice, reason, table, CPU."""
    by_name = {r.variant: r for r in result.table}
    chosen, ref = by_name[result.choice.variant], by_name[REFERENCE]
    return {
        "chosen": result.choice.variant,
        "reason": result.choice.reason,
        "metric": cfg.metric,
        "accuracy_budget_points": cfg.accuracy_budget,
        "threads": cfg.threads,
        "speedup_vs_fp32": speedup(ref, chosen, cfg.metric),
        "size_ratio_vs_fp32": chosen.size_bytes / ref.size_bytes,
        "accuracy_drop_points": (ref.accuracy - chosen.accuracy) * 100,
        "int8": int8_verdict(result, cfg),
        "rejected": result.choice.rejected,
        "not_applicable": result.skipped,
        "cpu": result.cpu,
        "variants": {
            r.variant: {k: v for k, v in asdict(r).items() if k != "variant"} for r in result.table
        },
    }


def markdown(result: Result, cfg: Optimize) -> str:
    ref = next(r for r in result.table if r.variant == REFERENCE)
    lines = [
        "| variant | size KB | x fp32 size | val accuracy | drop (points) | p50/p99 ms @1 "
        "| p50/p99 ms @256 | rows/s @256 | chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.table:
        mark = "**yes**" if r.variant == result.choice.variant else ""
        if r.variant in result.choice.rejected:
            mark = "over budget"
        lines.append(
            f"| {r.variant} | {r.size_bytes / 1024:.1f} | {r.size_bytes / ref.size_bytes:.2f} "
            f"| {r.accuracy:.4f} | {(ref.accuracy - r.accuracy) * 100:+.2f} "
            f"| {r.p50_ms_batch1:.4f}/{r.p99_ms_batch1:.4f} | {r.p50_ms_batch256:.3f}/{r.p99_ms_batch256:.3f} "
            f"| {r.rows_per_s:,.0f} | {mark} |"
        )
    for name, why in result.skipped.items():
        lines.append(f"| {name} | - | - | - | - | - | - | - | n/a: {why[:80]} |")
    cpu = result.cpu
    flags = ", ".join(f for f, on in cpu.get("flags", {}).items() if on)
    lines += [
        "",
        f"Chosen: **{result.choice.variant}**: {result.choice.reason}.",
        int8_verdict(result, cfg),
        f"CPU: {cpu.get('model')} ({flags}); {cpu.get('note')}.",
        f"ONNX Runtime {inference.runtime_version()}, {cfg.threads} thread(s).",
    ]
    return "\n".join(lines) + "\n"


def speedup(reference: Row, row: Row, metric: str) -> float:
    """How many times better than the reference ``row`` is by ``metric`` (lower is better)."""
    value = row.metric(metric)
    return reference.metric(metric) / value if value else 1.0


def int8_verdict(result: Result, cfg: Optimize) -> str:
    """Say plainly whether int8 paid on this machine, by the selection metric."""
    by_name = {r.variant: r for r in result.table}
    int8 = [r for r in result.table if "int8" in r.variant]
    if not int8:
        return "int8: not applicable to this model."
    best = min(int8, key=lambda r: r.metric(cfg.metric))
    ref = by_name[REFERENCE]
    ratio = speedup(ref, best, cfg.metric)
    if "int8" in result.choice.variant:
        chosen = by_name[result.choice.variant]
        return (
            f"int8 pays here: {chosen.variant} is {speedup(ref, chosen, cfg.metric):.2f}x "
            f"fp32 by {cfg.metric}."
        )
    if best.variant in result.choice.rejected:
        return (
            f"int8: {best.variant} is {ratio:.2f}x fp32 by {cfg.metric} but over the accuracy "
            f"budget ({result.choice.rejected[best.variant]})."
        )
    accel = "even with" if result.cpu.get("int8_acceleration") else "without"
    return (
        f"int8 does not pay here ({accel} VNNI/AMX): the best int8 variant, {best.variant}, "
        f"is {ratio:.2f}x fp32 by {cfg.metric}; quantize/dequantize overhead outweighs "
        "the cheaper arithmetic for a model this small."
    )


def _write_reports(result: Result, cfg: Optimize, reports: Path) -> None:
    files.write_metrics(reports / "optimize.json", headline(result, cfg))
    files.write_json(reports / "optimize.details.json", report(result, cfg))
    files.write_text(reports / "optimize.md", markdown(result, cfg))
    _plot(result, cfg, reports / "optimize.png")


def _plot(result: Result, cfg: Optimize, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.variant for r in result.table]
    colours = [
        "#2ca02c"
        if n == result.choice.variant
        else ("#bbbbbb" if n in result.choice.rejected else "#1f77b4")
        for n in names
    ]
    panels = [
        ("p99 ms, batch 1", [r.p99_ms_batch1 for r in result.table]),
        ("p50 ms, batch 256", [r.p50_ms_batch256 for r in result.table]),
        ("size KB", [r.size_bytes / 1024 for r in result.table]),
        ("val accuracy", [r.accuracy for r in result.table]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.barh(names, values, color=colours)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
    low = min(r.accuracy for r in result.table)
    axes[3].set_xlim(max(0.0, low - 0.02), 1.0)
    fig.suptitle(
        f"optimize: chose {result.choice.variant} (green) by {cfg.metric}, budget "
        f"{cfg.accuracy_budget:g} points (grey: over budget)",
        fontsize=10,
    )
    fig.tight_layout()
    with files.atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _log(result: Result, reports: Path, meta: dict[str, Any]) -> None:
    with tracking.resume(meta["run_id"]):
        tracking.set_tags({"optimize.chosen": result.choice.variant})
        for r in result.table:
            tracking.log_metrics(
                {
                    "accuracy": r.accuracy,
                    "size_bytes": r.size_bytes,
                    "p50_ms_b1": r.p50_ms_batch1,
                    "p99_ms_b1": r.p99_ms_batch1,
                    "p50_ms_b256": r.p50_ms_batch256,
                    "p99_ms_b256": r.p99_ms_batch256,
                    "rows_per_s": r.rows_per_s,
                },
                prefix=f"optimize.{r.variant}.",
            )
        for name in ("optimize.json", "optimize.details.json", "optimize.md", "optimize.png"):
            tracking.log_artifact(reports / name, "optimize")
