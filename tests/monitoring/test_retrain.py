"""The drift job's local retrain (no GitHub configured) in a real project: a git
repository with DVC, run as `.venv/bin/modelyard` without an activated venv. Retraining on
unchanged inputs must say that nothing was retrained; changed inputs register a version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from pipelines import tracking
from registry.client import Registry
from tests.conftest import FAST_OPTIMIZE, FAST_TRAIN, Project, git, git_copy, modelyard
from tests.e2e.test_dvc_pipeline import edit_params
from tests.monitoring.conftest import MODEL, split_rows, write_log

pytestmark = pytest.mark.slow

# No GitHub, no alert webhook (an empty variable counts as unset), and no venv on PATH.
ENV = {
    "PATH": "/usr/bin:/bin",
    "GITHUB_REPOSITORY": "",
    "GITHUB_TOKEN": "",
    "MODELYARD_ALERT_WEBHOOK_URL": "",
}


@pytest.fixture(scope="module")
def ran_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone whose pipeline ran once (`modelyard run`): digits-classifier v1. Tests never
    change it: each retrains in its own copy (``repo``), whatever ran before."""
    root = git_copy(tmp_path_factory.mktemp("retrain"))
    edit_params(root, train=FAST_TRAIN, optimize=FAST_OPTIMIZE, monitor={"min_rows": 200})
    git(root, "commit", "-qam", "fast params")
    modelyard(root, "run")
    assert [v.version for v in versions(root)] == ["1"]
    return root


@pytest.fixture
def repo(ran_once: Path, tmp_path: Path) -> Path:
    """This test's own copy of the clone (git, DVC cache, MLflow store)."""
    return Path(shutil.copytree(ran_once, tmp_path / "repo", symlinks=True))


def versions(root: Path) -> list[Any]:
    return Registry(tracking.tracking_uri(root)).versions(MODEL)


def drifted_job(root: Path, log_dir: Path) -> tuple[int, dict[str, Any], str]:
    """A window of occluded digits naming v1, then `monitor run` over it."""
    features, labels = split_rows(Project(root), 400, drift="occlude")
    write_log(log_dir, features, labels, f"{MODEL}/1")
    proc = modelyard(
        root, "monitor", "run", "--log-dir", str(log_dir), "--since", "1h", env=ENV, check=False
    )
    summary = json.loads((root / ".modelyard/monitoring/summary.json").read_text())
    return proc.returncode, summary, " ".join((proc.stdout + proc.stderr).split())


def test_retraining_unchanged_data_says_nothing_was_retrained(repo: Path, tmp_path: Path) -> None:
    code, summary, out = drifted_job(repo, tmp_path / "log")

    assert code == 1, out
    assert summary["status"] == "drift"
    assert summary["retrain"] == {
        "status": "unchanged",
        "detail": "nothing retrained: the training data has not changed since v1 "
        "(digits-classifier v1 already holds the pipeline's model)",
        "version": "1",
    }
    assert "retrain: nothing retrained: the training data has not changed since v1" in out
    assert "Data and pipelines are up to date" in out  # dvc repro ran, found nothing to do
    assert [v.version for v in versions(repo)] == ["1"]


def test_retraining_changed_inputs_registers_a_new_version(repo: Path, tmp_path: Path) -> None:
    edit_params(repo, train={**FAST_TRAIN, "batch_size": 32})

    code, summary, out = drifted_job(repo, tmp_path / "log")

    assert code == 1, out
    assert summary["retrain"]["status"] == "retrained"
    assert summary["retrain"]["version"] == "2"
    assert "retrain: retrained: digits-classifier v2 registered (@challenger)" in out
    assert [v.version for v in versions(repo)] == ["1", "2"]
