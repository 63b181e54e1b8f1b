"""export: ONNX parity with the native model, or nothing is written."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import ExportParityError
from pipelines.stages.export import check_parity
from tests.conftest import FAST_TRAIN, Project


def test_parity_passes_within_tolerance() -> None:
    p = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    result = check_parity(p, p + 1e-6, tolerance=1e-5)
    assert result.ok and result.argmax_mismatches == 0


@pytest.mark.parametrize(
    "onnx",
    [
        np.array([[0.9, 0.1], [0.2, 0.8]]) + 1e-3,  # too far apart
        np.array([[0.9, 0.1], [0.8, 0.2]]),  # a class flips
    ],
)
def test_parity_fails(onnx: np.ndarray) -> None:
    native = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert not check_parity(native, onnx, tolerance=1e-4).ok


def test_parity_rejects_shape_mismatch() -> None:
    with pytest.raises(ExportParityError, match="shape"):
        check_parity(np.zeros((3, 2)), np.zeros((3, 4)), 1e-4)


def test_export_writes_a_dynamic_batch_model(project: Project) -> None:
    project.set_params(train=FAST_TRAIN)
    project.stages("ingest", "prepare", "validate", "train", "export")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(project.root / "data/models/model.onnx"))
    assert sess.get_inputs()[0].name == "features"
    for batch in (1, 7, 300):
        (probs,) = sess.run(["probabilities"], {"features": np.zeros((batch, 64), np.float32)})
        assert probs.shape == (batch, 10)
        assert np.allclose(probs.sum(1), 1, atol=1e-5)
    report = project.report("export.json")
    assert report["argmax_mismatches"] == 0 and report["max_abs_diff"] < 1e-4


def test_parity_failure_stops_export(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exporter that produces a different model (here: perturbed weights) is caught."""
    import torch

    from pipelines.models import torch_nets

    project.set_params(train=FAST_TRAIN)
    project.stages("ingest", "prepare", "validate", "train")
    real_export = torch_nets.Adapter.export_onnx

    def broken_export(self: Any, model: Any, n_features: int, path: Path, opset: int) -> None:
        other = copy.deepcopy(model)  # the native model itself stays as trained
        with torch.no_grad():
            other.body[-1].bias.add_(torch.linspace(-3, 3, other.body[-1].bias.numel()))
        real_export(self, other, n_features, path, opset)

    monkeypatch.setattr(torch_nets.Adapter, "export_onnx", broken_export)
    result = project.cli("export")

    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "ONNX and cnn disagree on the test set" in out
    assert "No ONNX file was written" in out
    models = project.root / "data/models"
    assert not (models / "model.onnx").exists()
    assert [p.name for p in models.iterdir()] == ["native"]  # no temp file left either
