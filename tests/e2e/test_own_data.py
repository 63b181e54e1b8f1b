"""Bringing your own data, as the README tells a user: a CSV with a text label under
data/sources/, `modelyard init`, `modelyard run`. In a fresh git repository, real DVC."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines import tracking
from registry.client import Registry
from tests.conftest import git_copy, modelyard

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("e2e_tier")]


def penguins_like(path: Path) -> None:
    """A tabular CSV whose label is text: the wine data with cultivar names."""
    from sklearn.datasets import load_wine

    bunch = load_wine(as_frame=True)
    frame = bunch.frame.rename(columns=lambda c: c.replace("/", "_"))
    names = ["barolo", "grignolino", "barbera"]
    frame["cultivar"] = [names[i] for i in frame.pop("target")]
    frame.to_csv(path, index=False)


def test_init_then_run_succeeds_on_the_first_try(tmp_path: Path) -> None:
    root = git_copy(tmp_path / "own")
    penguins_like(root / "data/sources/wines.csv")

    init = modelyard(root, "init", "--source", "data/sources/wines.csv", "--target", "cultivar")

    out = " ".join(init.stdout.split())
    assert "wrote data/expectations/wines-classifier.json" in out
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["data"]["labels"] == ["barbera", "barolo", "grignolino"]
    assert params["register"]["model_name"] == "wines-classifier"

    run = modelyard(root, "run")  # raises with the output if it fails

    out = " ".join(run.stdout.split())
    assert "gates: all passed" in out and "wines-classifier v1" in out
    (version,) = Registry(tracking.tracking_uri(root)).versions("wines-classifier")
    assert version.tags["data.source"] == "data/sources/wines.csv"
    assert version.tags["model.family"] == params["train"]["model"]
    assert version.tags["validation.failed"] == "0"


def test_run_with_a_missing_suite_says_what_to_do_and_runs_nothing(tmp_path: Path) -> None:
    root = git_copy(tmp_path / "nosuite")
    path = root / "params.yaml"
    path.write_text(
        path.read_text().replace(
            "suite: data/expectations/digits.json", "suite: data/expectations/mine.json"
        )
    )

    proc = modelyard(root, "run", check=False)

    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "validate.suite: data/expectations/mine.json does not exist" in err
    assert "modelyard init --source data/sources/FILE --target COLUMN" in err
    assert "Errno" not in proc.stdout + proc.stderr
    assert not (root / "data/raw").exists()  # nothing ran
