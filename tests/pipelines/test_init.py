"""init: a DataFrame in, params and a suite out (pure), then written without clobbering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from core.errors import ConfigError, DataError
from pipelines import config, validation
from pipelines.init import apply, default_name, propose
from tests.conftest import REPO, Project


def iris() -> pd.DataFrame:
    from sklearn.datasets import load_iris

    bunch = load_iris(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["species"] = [bunch.target_names[i] for i in frame.pop("target")]
    return frame


SOURCE = "data/sources/iris.csv"


def test_propose_reads_features_labels_ranges_shares_and_rows() -> None:
    frame = iris().iloc[:120]  # setosa 50, versicolor 50, virginica 20
    p = propose(frame, source=SOURCE, target="species", name="iris-classifier")

    assert p.value("ingest.source") == SOURCE
    assert p.value("data.target") == "species"
    assert p.value("data.features") == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    assert p.value("data.labels") == ["setosa", "versicolor", "virginica"]
    ranges = p.value("data.ranges")
    for col, (lo, hi) in ranges.items():
        assert lo <= frame[col].min() and frame[col].max() <= hi
        assert lo >= 0  # non-negative measurements stay non-negative
    # widened by about 10% of the span, not more
    span = frame["sepal_length"].max() - frame["sepal_length"].min()
    assert ranges["sepal_length"][1] - frame["sepal_length"].max() <= 0.11 * span
    assert p.value("validate.min_rows") == 60 and p.value("validate.max_rows") == 1200
    low, high = p.value("validate.class_share")  # shares seen: 20/120 .. 50/120
    assert low <= 20 / 120 / 2 + 0.01 and high >= 50 / 120 * 1.5 - 0.01
    assert p.value("validate.suite") == "data/expectations/iris-classifier.json"
    assert p.value("train.model") in {"logreg", "gboost"}
    assert p.value("evaluate.min_accuracy") > 50 / 120  # beats the majority answer
    assert p.value("register.model_name") == "iris-classifier"
    # Every value is one the typed params accept.
    sections: dict[str, dict[str, object]] = {}
    for c in p.choices:
        section, key = c.key.split(".")
        sections.setdefault(section, {})[key] = c.value
    params = config.Params.model_validate(sections)
    assert params.data.range_for("petal_width") == tuple(ranges["petal_width"])


def test_integer_labels_stay_integers() -> None:
    frame = pd.DataFrame({"x": np.arange(12.0), "y": [2, 0, 1] * 4})
    p = propose(frame, source="data/sources/t.csv", target="y", name="t")
    assert p.value("data.labels") == [0, 1, 2]


def test_the_suite_passes_the_data_it_was_written_from_and_fails_shifted_data() -> None:
    frame = iris()
    p = propose(frame, source=SOURCE, target="species", name="iris-classifier")
    expectations = [{"type": e["type"], "kwargs": e["kwargs"]} for e in p.suite["expectations"]]
    assert {e["type"] for e in expectations} == {
        "expect_column_mean_to_be_between",
        "expect_column_stdev_to_be_between",
    }
    assert all(c.success for c in validation.validate({"raw": (frame, expectations)}))

    shifted = frame.assign(petal_length=frame["petal_length"] * 10)  # cm -> mm
    failed = [c for c in validation.validate({"raw": (shifted, expectations)}) if not c.success]
    assert {(c.column, c.expectation) for c in failed} == {
        ("petal_length", "expect_column_mean_to_be_between"),
        ("petal_length", "expect_column_stdev_to_be_between"),
    }


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (iris().drop(columns="species"), "--target 'species' is not a column"),
        (iris().assign(colour="red"), "features must be numbers; these columns are not: colour"),
        (iris().assign(sepal_width=lambda f: f.sepal_width.mask(f.index < 4)), "'sepal_width': 4"),
        (iris().assign(species=lambda f: f.sepal_length), "labels must be integers or text"),
        (iris().assign(species="setosa"), "has one label only"),
        (iris().assign(species=lambda f: f.species.mask(f.index < 3)), "3 rows have no 'species'"),
        (iris().iloc[:52], "fewer than 3 rows cannot be split"),
    ],
    ids=[
        "no-target",
        "text-feature",
        "missing-values",
        "float-target",
        "one-label",
        "unlabelled",
        "rare-label",
    ],
)
def test_data_the_pipeline_cannot_use_is_refused_with_the_reason(
    frame: pd.DataFrame, message: str
) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("[", r"\[")):
        propose(frame, source=SOURCE, target="species", name="iris-classifier")


def test_default_name_comes_from_the_file() -> None:
    assert default_name("data/sources/Iris Data.csv") == "iris-data-classifier"
    assert default_name("sklearn:wine") == "wine-classifier"
    with pytest.raises(ConfigError, match="model name"):
        propose(iris(), source=SOURCE, target="species", name="../x")


# -- writing -----------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "data/expectations", tmp_path / "data/expectations")
    return tmp_path


def test_apply_writes_the_keys_and_keeps_the_rest_of_params_yaml(root: Path) -> None:
    before = (root / "params.yaml").read_text()
    p = propose(iris(), source=SOURCE, target="species", name="iris-classifier")

    written = apply(p, root / "params.yaml")

    text = (root / "params.yaml").read_text()
    params = config.load(root / "params.yaml")
    assert params.ingest.source == SOURCE and params.data.target == "species"
    assert params.validate_.suite == Path("data/expectations/iris-classifier.json")
    assert params.train.model == p.value("train.model")
    assert params.register_.model_name == "iris-classifier"
    assert set(written.changed) == {c.key for c in p.choices}
    # Comments and untouched sections are as they were.
    assert "# cnn | mlp | logreg | gboost" in text and "# The dataset's contract" in text
    old, new = yaml.safe_load(before), yaml.safe_load(text)
    for section in ("paths", "prepare", "export", "optimize", "tracking", "monitor", "seed"):
        assert new[section] == old[section], section
    assert new["train"]["epochs"] == old["train"]["epochs"]
    suite = json.loads((root / "data/expectations/iris-classifier.json").read_text())
    assert suite == p.suite and written.suite_written

    again = apply(p, root / "params.yaml")  # the same data again: nothing to change
    assert again.changed == () and not again.suite_written
    assert (root / "params.yaml").read_text() == text


def test_apply_refuses_to_overwrite_params_of_your_own_or_a_different_suite(root: Path) -> None:
    first = propose(iris(), source=SOURCE, target="species", name="iris-classifier")
    apply(first, root / "params.yaml")
    params, suite = root / "params.yaml", root / "data/expectations/iris-classifier.json"
    params.write_text(params.read_text().replace("min_accuracy: 0.35", "min_accuracy: 0.9"))
    kept = params.read_text(), suite.read_text()
    fewer = propose(iris().iloc[10:], source=SOURCE, target="species", name="iris-classifier")

    with pytest.raises(ConfigError) as refused:
        apply(fewer, params)

    message = " ".join(str(refused.value).split())
    assert "init wrote nothing" in message and "--force" in message
    assert "data/expectations/iris-classifier.json exists and differs" in message
    assert "already describes data/sources/iris.csv" in message
    assert "evaluate.min_accuracy: 0.9 -> " in message  # the hand edit it would undo
    assert (params.read_text(), suite.read_text()) == kept

    written = apply(fewer, params, force=True)
    assert "evaluate.min_accuracy" in written.changed and written.suite_written
    assert config.load(params).validate_.min_rows == 70


def test_run_refuses_a_file_outside_the_sources_folder(root: Path) -> None:
    from pipelines import init

    iris().to_csv(root / "iris.csv", index=False)
    with pytest.raises(ConfigError, match="put the file under data/sources/"):
        init.run(root / "params.yaml", source="iris.csv", target="species", name=None, force=False)


# -- the command ---------------------------------------------------------------------------


def test_init_command_prints_its_choices_and_maps_errors_to_exit_codes(project: Project) -> None:
    iris().to_csv(project.root / SOURCE, index=False)

    done = project.cli("init", "--source", SOURCE, "--target", "species")

    assert done.exit_code == 0, done.output
    out = " ".join(done.output.split())
    for key in ("data.features", "validate.class_share", "train.model", "register.model_name"):
        assert key in out
    assert "wrote data/expectations/iris-classifier.json" in out

    bad = project.cli("init", "--source", SOURCE, "--target", "colour")
    assert bad.exit_code == 1 and "'colour' is not a column" in bad.output

    iris().iloc[5:].to_csv(project.root / SOURCE, index=False)
    refused = project.cli("init", "--source", SOURCE, "--target", "species")
    assert refused.exit_code == 2 and "--force" in refused.output
    forced = project.cli("init", "--source", SOURCE, "--target", "species", "--force")
    assert forced.exit_code == 0, forced.output
