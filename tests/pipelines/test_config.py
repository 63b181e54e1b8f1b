"""params.yaml is strict: typos and bad values fail with the key's path (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from pipelines import config
from tests.conftest import REPO, Project


def test_shipped_params_load() -> None:
    params = config.load(REPO / "params.yaml")
    assert params.train.model == "cnn"
    assert params.data.feature_names[:2] == ["pixel_0", "pixel_1"]
    assert len(params.data.feature_names) == 64


@pytest.mark.parametrize("name", ["wine.params.yaml", "wide-mlp.params.yaml"])
def test_example_params_spell_out_every_section(name: str) -> None:
    import yaml

    path = REPO / "pipelines/examples" / name
    example = yaml.safe_load(path.read_text())
    # dvc.yaml interpolates paths.* and tracks whole sections: all must be spelled out.
    assert set(example) == set(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert set(example) == set(config.Params.model_fields) - {"validate_", "register_"} | {
        "validate",
        "register",
    }
    assert set(example["paths"]) == set(config.Paths.model_fields)
    config.load(path)


def test_example_params_load() -> None:
    path = REPO / "pipelines/examples/wine.params.yaml"
    params = config.load(path)
    assert params.register_.model_name == "wine-classifier"
    assert params.data.range_for("proline") == (0, 2000)
    assert params.data.range_for("hue") == (0, 200)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"train": {"epochz": 3}}, "train.epochz"),
        ({"train": {"model": "xgboost"}}, "train.model"),
        ({"prepare": {"test_size": 1.5}}, "prepare.test_size"),
        ({"data": {"ranges": {"not_a_feature": [0, 1]}}}, "not_a_feature"),
        ({"evaluate": {"min_accuracy": 2}}, "evaluate.min_accuracy"),
    ],
)
def test_bad_params_name_the_key(project: Project, override: dict, needle: str) -> None:
    project.set_params(**override)
    with pytest.raises(ConfigError) as err:
        config.load(project.params_path)
    assert needle in str(err.value)
    result = project.cli("ingest")
    assert result.exit_code == 2
    assert needle in result.output
    assert not (project.root / "data/raw/dataset.csv").exists()


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "params.yaml")


def test_git_dirty_ignores_pipeline_outputs(e2e_tier: None, tmp_path: Path) -> None:
    from pipelines import lineage
    from tests.conftest import git

    (tmp_path / "data/reports").mkdir(parents=True)
    for name in ("dvc.lock", "data/reports/m.json", "params.yaml"):
        (tmp_path / name).write_text("a")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "x")
    (tmp_path / "dvc.lock").write_text("b")
    (tmp_path / "data/reports/m.json").write_text("b")
    sha, dirty = lineage.git_commit(tmp_path, (Path("data/reports"),))
    assert len(sha) == 40 and dirty is False
    (tmp_path / "params.yaml").write_text("b")
    assert lineage.git_commit(tmp_path, (Path("data/reports"),))[1] is True
