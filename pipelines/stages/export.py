"""export: the native model to ONNX (dynamic batch axis), with a parity check.

Reads the native model and the test split. Exports to a temporary file, compares
ONNX Runtime's probabilities with the native model's on the whole test set, and only
then moves the file to ``paths.onnx``. Writes ``export.json`` (a DVC metric) and logs
the parity numbers to the pipeline's MLflow run. A parity failure raises
ExportParityError and leaves no ONNX file behind.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core import files
from core.errors import ExportParityError
from core.tagkeys import LineageTag
from pipelines import dataset, inference, tracking
from pipelines.config import Params
from pipelines.models import load_native

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parity:
    rows: int
    max_abs_diff: float
    argmax_mismatches: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.argmax_mismatches == 0


def check_parity(native: np.ndarray, onnx: np.ndarray, tolerance: float) -> Parity:
    if native.shape != onnx.shape:
        raise ExportParityError(f"ONNX output shape {onnx.shape} != native {native.shape}")
    return Parity(
        rows=len(native),
        max_abs_diff=float(np.max(np.abs(native - onnx))) if native.size else 0.0,
        argmax_mismatches=int((native.argmax(1) != onnx.argmax(1)).sum()),
        tolerance=tolerance,
    )


@dataclass(frozen=True)
class Result:
    parity: Parity
    sha256: str
    size_bytes: int
    opset: int


def run(params: Params, root: Path) -> Result:
    paths, cfg = params.paths, params.export
    schema = dataset.load_schema(paths, root)
    test = dataset.load_split(paths, "test", schema, root)
    adapter, model, meta = load_native(root / paths.native)

    target = root / paths.onnx
    target.unlink(missing_ok=True)
    with files.atomic_path(target) as tmp:
        adapter.export_onnx(model, len(schema.feature_names), tmp, cfg.opset)
        parity = check_parity(
            adapter.predict_proba(model, test.x),
            inference.predict_proba(inference.session(tmp), test.x),
            cfg.parity_tolerance,
        )
        if not parity.ok:
            raise ExportParityError(
                f"ONNX and {meta['family']} disagree on the test set: max |p_native - p_onnx| = "
                f"{parity.max_abs_diff:.3g} (tolerance {cfg.parity_tolerance:g}), "
                f"{parity.argmax_mismatches} of {parity.rows} predicted classes differ. "
                "No ONNX file was written. Check the exporter/opset (export.opset) or the model."
            )
        result = Result(parity, files.sha256(tmp), tmp.stat().st_size, inference.opset(tmp))

    # Numbers only (a DVC metric); the file's sha256 is tagged on the MLflow run below.
    report = {**asdict(parity), "opset": result.opset, "size_bytes": result.size_bytes}
    files.write_metrics(root / paths.report("export.json"), report)
    with tracking.resume(meta["run_id"]):
        tracking.log_metrics(
            {"parity_max_abs_diff": parity.max_abs_diff, "onnx_size_bytes": result.size_bytes}
        )
        tracking.set_tags(
            {LineageTag.ONNX_SHA256: result.sha256, LineageTag.ONNX_OPSET: result.opset}
        )
    log.info("exported %s (%d bytes), parity %.2g", target, result.size_bytes, parity.max_abs_diff)
    return result
