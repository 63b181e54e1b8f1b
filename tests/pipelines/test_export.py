"""export: ONNX parity with the native model, or nothing is written."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core import files
from core.errors import ExportParityError
from pipelines.models import strip_debug_info
from pipelines.stages.export import check_parity
from tests.conftest import FAST_TRAIN, REPO, Project


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


def _model_with_debug_info(path: Path) -> None:
    """A tiny ONNX model carrying doc strings and metadata everywhere the exporters put
    them: the model, the graph, nodes, a subgraph inside an If node, values, initializers
    and a local function."""
    import onnx
    from onnx import TensorProto, helper

    def notes(proto: Any, where: str) -> None:
        proto.doc_string = f"{where}: /home/someone/clone/pipelines/models/torch_nets.py:92"
        helper.set_metadata_props(proto, {"pkg.torch.onnx.stack_trace": f'File "/x/{where}.py"'})

    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [2.0, 3.0])
    notes(weight, "initializer")
    branch_out = helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 2])
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["b"])], "then", [], [branch_out])
    otherwise = helper.make_graph([helper.make_node("Neg", ["x"], ["b"])], "else", [], [branch_out])
    for g in (then, otherwise):
        notes(g, g.name)
        notes(g.node[0], f"{g.name}_node")
    scale = helper.make_node("Scale", ["x", "w"], ["y"], domain="local")
    notes(scale, "call")
    cond = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", 9, [], [True]))
    branch = helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=otherwise)
    notes(branch, "if")
    body = helper.make_node("Mul", ["a", "b"], ["out"])
    notes(body, "function_node")
    function = helper.make_function(
        "local", "Scale", ["a", "b"], ["out"], [body], [helper.make_opsetid("", 18)]
    )
    notes(function, "function")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])
    notes(x, "input")
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 2]) for n in "yz"]
    graph = helper.make_graph([scale, cond, branch], "g", [x], outputs, [weight])
    notes(graph, "graph")
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
        functions=[function],
        producer_name="pytorch",
        producer_version="2.13.0+cpu",
    )
    notes(model, "model")
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_strip_debug_info_clears_every_note_and_keeps_the_model(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    path = tmp_path / "m.onnx"
    _model_with_debug_info(path)
    x = np.array([[1.0, -2.0], [0.5, 4.0]], np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"x": x})
    assert b"/home/someone/clone" in path.read_bytes()

    strip_debug_info(path)

    data = path.read_bytes()
    assert b"/home/someone/clone" not in data and b"stack_trace" not in data
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert (model.producer_name, model.producer_version) == ("pytorch", "2.13.0+cpu")
    assert [f.name for f in model.functions] == ["Scale"]
    (weight,) = model.graph.initializer
    assert weight.name == "w"
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(weight), [2.0, 3.0])
    after = ort.InferenceSession(str(path)).run(None, {"x": x})
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    strip_debug_info(path)
    assert path.read_bytes() == data  # idempotent: stripping a stripped file changes nothing


def _exported_in(clone: Path) -> bytes:
    """``modelyard export`` run with the project's code imported from ``clone`` (as in a
    fresh clone with its own editable install), in that clone's project."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PYTHONPATH")}
    where = subprocess.run(
        [sys.executable, "-c", "import pipelines.models; print(pipelines.models.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(clone.resolve()), where  # the clone's own code
    proc = subprocess.run(
        [sys.executable, "-m", "modelyard.app", "export", "--params", str(clone / "params.yaml")],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (clone / "data/models/model.onnx").read_bytes()


@pytest.mark.slow
def test_the_same_model_exports_to_the_same_bytes_from_any_folder(
    e2e_tier: None, project: Project, tmp_path: Path
) -> None:
    """The README's "same commit, same ONNX file, byte for byte", across clones: torch's
    exporter wrote each node's stack trace (this checkout's absolute paths) into the file,
    so two clones in different folders committed different ONNX files for one model."""
    project.set_params(train=FAST_TRAIN)
    project.stages("ingest", "prepare", "validate", "train")
    short, long = tmp_path / "c", tmp_path / "clones" / "a-clone-in-a-much-longer-folder-name"
    for package in ("core", "pipelines", "registry", "services", "monitoring", "modelyard"):
        shutil.copytree(
            REPO / package, short / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copytree(project.root, short, dirs_exist_ok=True)
    shutil.copytree(short, long)

    first, second = _exported_in(short), _exported_in(long)

    assert first == second, f"{len(first)} bytes from {short}, {len(second)} from {long}"
    assert str(short).encode() not in first and str(REPO).encode() not in first
    report = files.read_json(long / "data/reports/export.json")
    assert report["size_bytes"] == len(first) and report["argmax_mismatches"] == 0
