"""The drift job's retrain in a real project: a git repository with DVC, run as
`.venv/bin/modelyard` without an activated venv (issue 13, item 3).

- drift without a label since the last training retrains nothing and says so (exit 1);
- (drift with new labels retraining here, the new version linked to the drift's MLflow
  run both ways: tests/e2e/test_loop.py, the whole loop;)
- a harvest that fails is a failed retrain (exit 2), never "no new labels";
- on GitHub the `retrain` dispatch carries the drift run and the labels' DVC pointer,
  pushed to the DVC remote first; train.yml's `run` line pulls them and links the version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines import tracking
from registry.client import Registry
from services.inference_log import InferenceLog
from tests.conftest import FAST_TRAIN, FakeGitHub, Project, copy_repo, git, modelyard
from tests.e2e.test_dvc_pipeline import edit_params
from tests.monitoring.conftest import MODEL, split_rows, write_log

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("e2e_tier")]

# No GitHub, no alert webhook (an empty variable counts as unset), and no venv on PATH.
ENV = {
    "PATH": "/usr/bin:/bin",
    "GITHUB_REPOSITORY": "",
    "GITHUB_TOKEN": "",
    "MODELYARD_ALERT_WEBHOOK_URL": "",
}


@pytest.fixture
def repo(ran_repo: Path, tmp_path: Path) -> Path:
    """This test's own copy of a clone whose pipeline ran once (tests.conftest.ran_repo:
    `modelyard run`, digits-classifier v1, monitor.min_rows 200)."""
    root = copy_repo(ran_repo, tmp_path / "repo")
    assert [v.version for v in versions(root)] == ["1"]
    # A retrain here (CI's run in the GitHub test) needs no good model: the suite's short
    # training, committed as a data scientist would.
    edit_params(root, train=FAST_TRAIN)
    git(root, "commit", "-qam", "fast training")
    return root


def versions(root: Path) -> list[Any]:
    return Registry(tracking.tracking_uri(root)).versions(MODEL)


def drifted_job(
    root: Path, log_dir: Path, *, labelled: int = 0, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    """A window of occluded digits naming v1 (the first ``labelled`` of them with their
    true label as feedback), then `monitor run` over it."""
    features, labels = split_rows(Project(root), 400, drift="occlude")
    write_log(log_dir, features, labels, f"{MODEL}/1")
    if labelled:
        ids = [r["id"] for r in read_predictions(log_dir)][:labelled]
        writer = InferenceLog(log_dir)
        writer.append(
            [{"type": "feedback", "id": i, "label": y, "ts": time.time()}
             for i, y in zip(ids, labels, strict=False)]
        )  # fmt: skip
        writer.close()
    proc = modelyard(
        root,
        "monitor",
        "run",
        "--log-dir",
        str(log_dir),
        "--since",
        "1h",
        env={**ENV, **(env or {})},
        check=False,
    )
    summary = json.loads((root / ".modelyard/monitoring/summary.json").read_text())
    return proc.returncode, summary, " ".join((proc.stdout + proc.stderr).split())


def read_predictions(log_dir: Path) -> list[dict[str, Any]]:
    from services import inference_log

    return [r for r in inference_log.read(log_dir) if r.get("type") == "prediction"]


def test_drift_without_new_labels_retrains_nothing_and_says_so(repo: Path, tmp_path: Path) -> None:
    code, summary, out = drifted_job(repo, tmp_path / "log")

    assert code == 1, out  # the verdict stays drift
    drifted, features = len(summary["drifted_columns"]), len(summary["scores"])
    assert drifted > 0
    detail = (
        f"drift on {drifted}/{features} features; 0 new labels since v1: collect feedback "
        "(POST /v1/feedback), nothing retrained"
    )
    assert summary["retrain"] == {"status": "no-new-labels", "detail": detail, "version": "1"}
    assert summary["labels"]["count"] == 0 and summary["labels"]["since_version"] == "1"
    assert f"retrain: {detail}" in out
    assert "Running stage" not in out and "up to date" not in out  # no pipeline ran
    assert [v.version for v in versions(repo)] == ["1"]


def test_a_failed_harvest_is_a_failed_retrain(repo: Path, tmp_path: Path) -> None:
    suite = repo / "data/expectations/digits.json"  # validate.suite: the harvest's contract
    suite.write_text("{not json")

    code, summary, out = drifted_job(repo, tmp_path / "log", labelled=50)

    assert code == 2, out
    assert summary["status"] == "drift"  # the verdict is kept
    assert summary["retrain"]["status"] == "failed"
    assert summary["retrain"]["detail"].startswith(
        "harvesting the feedback labels failed, so nothing was retrained: "
    )
    assert "retrain FAILED: harvesting the feedback labels failed" in out
    assert [v.version for v in versions(repo)] == ["1"]


def test_a_github_retrain_carries_the_drift_run_and_the_labels_through_the_dvc_remote(
    repo: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "dvc-remote"
    github = FakeGitHub()
    try:
        code, summary, out = drifted_job(
            repo,
            tmp_path / "log",
            labelled=400,
            env={
                "GITHUB_REPOSITORY": "acme/models",
                "GITHUB_TOKEN": "t0k",
                "GITHUB_API_URL": github.url,
                "DVC_REMOTE_URL": str(remote),
            },
        )
    finally:
        github.close()

    assert code == 1, out
    assert summary["retrain"]["status"] == "requested", summary["retrain"]
    assert "400 new labels since v1: retrain requested on GitHub" in out
    (payload,) = github.dispatches("retrain")
    pointer = repo / "data/production/labelled.parquet.dvc"
    assert payload["drift_run"] == summary["drift_run"]["run_id"]
    assert payload["production_dvc"] == pointer.read_text()
    md5 = yaml.safe_load(pointer.read_text())["outs"][0]["md5"]
    assert (remote / "files/md5" / md5[:2] / md5[2:]).is_file()  # pushed before the dispatch
    assert [v.version for v in versions(repo)] == ["1"]  # nothing trained here

    # CI (train.yml): a checkout without the labels, the same store; its run line.
    ci = copy_repo(repo, tmp_path / "ci")
    (ci / "data/production/labelled.parquet").unlink()
    (ci / "data/production/labelled.parquet.dvc").unlink()
    (ci / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink()
    modelyard(
        ci,
        "run",
        "--push",
        "--drift-run",
        payload["drift_run"],
        "--production-dvc",
        payload["production_dvc"],
        env={**ENV, "DVC_REMOTE_URL": str(remote)},
    )
    assert (ci / "data/production/labelled.parquet.dvc").read_text() == payload["production_dvc"]
    assert (ci / "data/production/labelled.parquet").is_file()  # pulled from the remote
    store = Registry(tracking.tracking_uri(ci))
    v2 = store.version(MODEL, "2")
    assert v2.tags["monitor.drift_run_id"] == payload["drift_run"]
    run = store.run(payload["drift_run"])
    assert run is not None and run.tags["retrain.version"] == "2"


@pytest.mark.parametrize(
    "pointer",
    [
        "{not yaml: [",
        "outs:\n- md5: 0123456789abcdef0123456789abcdef\n  path: ../../params.yaml\n",
        "outs:\n- path: labelled.parquet\n",  # no md5
    ],
)
def test_run_refuses_a_pointer_that_is_not_the_labels_and_writes_nothing(
    pointer: str, tmp_path: Path
) -> None:
    from core.errors import ConfigError
    from pipelines import config
    from pipelines import run as pipeline
    from tests.conftest import new_project

    project = new_project(tmp_path / "project")
    params = config.load(project.params_path)

    with pytest.raises(ConfigError, match="--production-dvc is not the DVC pointer"):
        pipeline.run(params, project.root, production_pointer=pointer)
    assert not (project.root / "data/production").exists()


def test_run_refuses_a_drift_run_the_store_does_not_hold(tmp_path: Path) -> None:
    from core.errors import ConfigError
    from pipelines import config
    from pipelines import run as pipeline
    from tests.conftest import new_project

    project = new_project(tmp_path / "project")
    params = config.load(project.params_path)

    with pytest.raises(
        ConfigError, match=r"--drift-run 0123abcd is not a run in .*nothing was run"
    ):
        pipeline.run(params, project.root, drift_run="0123abcd")
    assert not (project.root / "data/raw").exists()  # dvc repro never started
