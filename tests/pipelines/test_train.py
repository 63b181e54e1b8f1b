"""train: every family trains, exports with parity, is deterministic, and stops early."""

from __future__ import annotations

import numpy as np
import pytest

from core.files import sha256
from tests.conftest import FAST_TRAIN, REPO, Project

WINE = REPO / "pipelines/examples/wine.params.yaml"


@pytest.mark.parametrize("model", ["mlp", "logreg", "gboost"])
def test_tabular_families_train_and_export(make_project, model: str) -> None:
    project: Project = make_project(WINE)
    project.set_params(train={"model": model, "epochs": 40})
    project.stages("ingest", "prepare", "validate", "train", "export")
    meta = project.report("train.json")
    assert meta["val_accuracy"] > 0.8
    export = project.report("export.json")
    assert export["argmax_mismatches"] == 0 and export["max_abs_diff"] <= 1e-4
    curve = (project.root / "data/reports/train_curve.csv").read_text().splitlines()
    assert curve[0] == "epoch,train_loss,val_loss,val_accuracy" and len(curve) >= 2


def test_training_is_deterministic(make_project) -> None:
    a, b = make_project(), make_project()
    for p in (a, b):
        p.set_params(train=FAST_TRAIN)
        p.stages("ingest", "prepare", "validate", "train", "export")
    assert sha256(a.root / "data/models/model.onnx") == sha256(b.root / "data/models/model.onnx")
    assert a.report("train.json") == b.report("train.json")


def test_early_stopping_restores_the_best_epoch(project: Project) -> None:
    project.set_params(train={"epochs": 200, "patience": 2, "lr": 0.05})
    project.stages("ingest", "prepare", "validate", "train")
    report = project.report("train.json")
    assert report["epochs_run"] < 200
    assert report["best_epoch"] == report["epochs_run"] - 2
    import csv

    rows = list(csv.DictReader((project.root / "data/reports/train_curve.csv").open()))
    losses = np.array([float(r["val_loss"]) for r in rows])
    assert int(np.argmin(losses)) + 1 == report["best_epoch"]


def test_cnn_on_non_image_data_explains(make_project) -> None:
    project: Project = make_project(WINE)
    project.set_params(train={"model": "cnn"})
    project.stages("ingest", "prepare", "validate")
    result = project.cli("train")
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "needs 64 features, the data has 13" in out and "train.model: mlp" in out
    assert not (project.root / "data/models/native").exists()


def test_any_tabular_csv_with_string_labels(e2e_tier: None, project: Project) -> None:
    """A user's own CSV (iris, species as text) declared in params runs to a version."""
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    frame = iris.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = [iris.target_names[i] for i in frame.pop("target")]
    frame.to_csv(project.root / "data/sources/iris.csv", index=False)
    (project.root / "data/expectations/iris.json").write_text('{"expectations": []}')
    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    params = project.params()
    params["data"] = {
        "target": "species",
        "features": features,
        "labels": ["setosa", "versicolor", "virginica"],
        "feature_range": [0, 10],
    }
    params["ingest"] = {"source": "data/sources/iris.csv"}
    params["validate"].update(
        min_rows=100, class_share=[0.2, 0.5], suite="data/expectations/iris.json"
    )
    params["train"].update(model="mlp", epochs=80, patience=10)
    params["evaluate"].update(
        min_accuracy=0.85, min_macro_f1=0.85, min_class_recall=0.7, min_noise_invariance=0.85
    )
    params["register"]["model_name"] = "iris"
    import yaml

    project.params_path.write_text(yaml.safe_dump(params))
    stages = ("ingest", "prepare", "validate", "train", "export", "optimize", "evaluate")
    project.stages("champion", *stages, "register")  # evaluate reads the champion pointer
    schema = __import__("json").loads((project.root / "data/prepared/schema.json").read_text())
    assert schema["classes"] == ["setosa", "versicolor", "virginica"]
    (version,) = project.registry().versions("iris")
    assert version.tags["data.source"] == "data/sources/iris.csv"
    assert set(project.report("evaluate.details.json")["per_class"]) == {
        "setosa",
        "versicolor",
        "virginica",
    }
