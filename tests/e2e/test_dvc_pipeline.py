"""The whole pipeline as a data scientist runs it: `dvc repro` in a git repository."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from pipelines import tracking
from registry.client import Registry
from tests.conftest import FAST_OPTIMIZE, REPO, copy_repo, dvc, git, git_copy, modelyard

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("e2e_tier")]


def registry(root: Path) -> Registry:
    return Registry(tracking.tracking_uri(root))


def ran_stages(output: str) -> set[str]:
    return {
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    }


def edit_params(root: Path, **sections: Any) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        params[name] = {**params.get(name, {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def fresh_run(ran_repo: Path) -> Path:
    """A fresh clone after `make run`'s main step: `modelyard run` (dvc repro + summary),
    run as `.venv/bin/modelyard run` without an activated venv (tests.conftest.ran_repo,
    built once per session). Tests never change it: each works on its own copy (``repo``)."""
    out = ran_repo.with_suffix(".out").read_text()
    # Stages whose outputs are cached (not in git) must run on a fresh clone; validate,
    # evaluate and register may be skipped by DVC when their git-kept outputs match.
    assert {"ingest", "prepare", "train", "export"} <= ran_stages(out)
    flat = " ".join(out.split())
    assert "gates: all passed" in flat
    assert "digits-classifier v1" in flat and "modelyard ui" in flat
    return ran_repo


@pytest.fixture
def repo(fresh_run: Path, tmp_path: Path) -> Path:
    """This test's own copy of the fresh clone after its run (git, DVC cache, MLflow store,
    its store's paths naming the copy)."""
    return copy_repo(fresh_run, tmp_path / "digits")


def test_repro_registers_a_version_with_full_lineage(repo: Path) -> None:
    (version,) = registry(repo).versions("digits-classifier")
    tags = version.tags
    assert tags["git.commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert tags["git.dirty"] == "False"
    assert tags["git.author"] == "t@example.com"  # the four-eyes rule compares reviewers with it
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert tags["dvc.data_md5"] == lock["ingest"]["outs"][0]["md5"]
    assert tags["dvc.prepared_md5"] == lock["prepare"]["outs"][0]["md5"]
    assert len(tags["dvc.params_sha256"]) == 64
    assert tags["validation.success"] == "True"
    assert tags["onnx.opset"] == "18"
    assert tags["model.family"] == "cnn"
    assert float(tags["metric.accuracy"]) >= 0.97  # the default CNN's target on digits
    challenger = registry(repo).by_alias("digits-classifier", "challenger")
    assert challenger is not None and challenger.version == version.version


def test_run_again_registers_nothing_new(repo: Path) -> None:
    proc = modelyard(repo, "run")
    assert "already registered" in proc.stdout
    assert len(registry(repo).versions("digits-classifier")) == 1


def test_noop_repro_runs_nothing(repo: Path) -> None:
    proc = dvc(repo, "repro")
    assert ran_stages(proc.stdout) == set()
    assert "Data and pipelines are up to date" in proc.stdout


def test_train_change_reruns_train_and_after_only(repo: Path) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first run")
    status = json.loads(dvc(repo, "status", "--json").stdout or "{}")
    assert status == {}

    proc = dvc(repo, "exp", "run", "-S", "train.epochs=10")

    assert ran_stages(proc.stdout) == {"train", "export", "optimize", "evaluate", "register"}
    diff = json.loads(dvc(repo, "metrics", "diff", "--json").stdout)
    changed = diff["data/reports/train.json"]
    assert changed["epochs_run"]["new"] <= 10 < changed["epochs_run"]["old"]
    params = json.loads(dvc(repo, "params", "diff", "--json").stdout)
    assert params["params.yaml"]["train.epochs"] == {"old": 60, "new": 10, "diff": -50}
    versions = registry(repo).versions("digits-classifier")
    assert [v.version for v in versions] == ["1", "2"]
    challenger = registry(repo).by_alias("digits-classifier", "challenger")
    assert challenger is not None and challenger.version == "2"


def test_bad_data_stops_repro_before_anything_is_registered(tmp_path: Path) -> None:
    root = git_copy(tmp_path / "bad")
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    frame.columns = [*(f"pixel_{i}" for i in range(64)), "label"]
    frame.loc[[4, 9], "pixel_12"] = None
    frame.to_csv(root / "data/sources/digits.csv", index=False)
    edit_params(root, ingest={"source": "data/sources/digits.csv"})

    proc = dvc(root, "repro", check=False)

    assert proc.returncode != 0
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "raw.pixel_12: expect_column_values_to_not_be_null: 2 bad value(s)" in out
    assert "failed to reproduce 'validate'" in out
    assert ran_stages(proc.stdout) == {"ingest", "prepare", "validate"}
    assert not (root / "data/models").exists()
    assert registry(root).versions("digits-classifier") == []


def test_second_dataset_config_end_to_end(tmp_path: Path) -> None:
    root = git_copy(tmp_path / "wine")
    shutil.copy(REPO / "pipelines/examples/wine.params.yaml", root / "params.yaml")
    edit_params(root, optimize=FAST_OPTIMIZE)  # every variant built, fewer timed calls
    # A plain `dvc repro` on another model: the committed champion pointer names the
    # digits model, so evaluate refuses it until the pointer is rewritten for this one.
    stale = dvc(root, "repro", check=False)
    said = " ".join((stale.stdout + stale.stderr).split())
    assert stale.returncode != 0 and "modelyard champion" in said, said[-2000:]
    modelyard(root, "champion")

    dvc(root, "repro")

    raw = pd.read_csv(root / "data/raw/dataset.csv")
    assert raw.shape == (178, 14) and "proline" in raw.columns
    (version,) = registry(root).versions("wine-classifier")
    assert version.tags["model.family"] == "logreg"
    assert float(version.tags["metric.accuracy"]) >= 0.9
    assert version.tags["data.source"] == "sklearn:wine"


def test_run_on_a_fresh_store_registers_again(repo: Path, tmp_path: Path) -> None:
    """DVC finds everything up to date, but a new MLflow store (here: switched with
    MLFLOW_TRACKING_URI) has no version: `modelyard run` still ends with one."""
    uri = f"sqlite:///{tmp_path}/fresh.db"

    proc = modelyard(repo, "run", env={"MLFLOW_TRACKING_URI": uri})

    assert ran_stages(proc.stdout) == set(), proc.stdout
    (version,) = Registry(uri).versions("digits-classifier")
    assert "training.run_missing" in version.tags  # honest about the lost training run
    assert "data.reference_uri" not in version.tags
    assert "(new version)" in proc.stdout


def test_run_push_sends_the_outputs_to_the_dvc_remote(repo: Path, tmp_path: Path) -> None:
    """train.yml's step: `modelyard run --push` (remote from DVC_REMOTE_URL)."""
    remote = tmp_path / "remote"
    proc = modelyard(repo, "run", "--push", env={"DVC_REMOTE_URL": str(remote)})
    assert proc.returncode == 0
    pushed = {p.parent.name + p.name for p in (remote / "files/md5").glob("*/*")}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in ("ingest", "train", "export"):
        md5 = lock[stage]["outs"][0]["md5"].removesuffix(".dir")
        assert md5 in {p.removesuffix(".dir") for p in pushed}, f"{stage} output not pushed"
    # Then a fresh clone can pull it instead of recomputing.
    assert "in sync" in dvc(repo, "status", "--cloud", "--remote", "modelyard-push").stdout


def test_run_push_failure_registers_nothing(repo: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/store.db"
    proc = modelyard(repo, "run", "--push", "--remote-url", "s3://no-such-bucket/x",
                     env={"MLFLOW_TRACKING_URI": uri}, check=False)  # fmt: skip
    assert proc.returncode == 1
    assert "dvc push failed" in proc.stderr and "nothing was registered" in proc.stderr
    assert Registry(uri).versions("digits-classifier") == []


def test_diff_comments_metrics_and_params_on_the_pull_request(repo: Path) -> None:
    """ci.yml's PR step: `modelyard diff --base ... --pr N` against a stand-in GitHub."""
    from tests.conftest import FakeGitHub

    github = FakeGitHub()
    env = {"GITHUB_REPOSITORY": "acme/models", "GITHUB_TOKEN": "t0k", "GITHUB_API_URL": github.url}
    original = (repo / "params.yaml").read_text()
    try:
        edit_params(repo, train={"epochs": 3})
        out = modelyard(repo, "diff", "--base", "HEAD", "--pr", "7", env=env).stdout
        assert re.search(r"\|\s*params.yaml\s*\|\s*train.epochs\s*\|", out)  # the change
        assert "accuracy" in out  # --all: the current metrics, changed or not
        assert "comment created on acme/models#7" in out
        (comment,) = github.comments.values()
        assert comment["pr"] == 7 and "train.epochs" in comment["body"]
        assert github.requests[-1]["auth"] == "Bearer t0k"

        (repo / "params.yaml").write_text(git(repo, "show", "HEAD:params.yaml"))  # as committed
        again = modelyard(repo, "diff", "--base", "HEAD", "--pr", "7", env=env).stdout
        assert "comment updated" in again and len(github.comments) == 1  # one sticky comment
        assert "_no params changed_" in github.comments[1]["body"]

        bad = modelyard(repo, "diff", "--base", "no-such-rev", env=env, check=False)
        assert bad.returncode == 1 and "dvc metrics diff no-such-rev failed" in bad.stderr
    finally:
        (repo / "params.yaml").write_text(original)
        github.close()


def test_drift_without_labels_on_a_fresh_run_retrains_nothing(repo: Path, tmp_path: Path) -> None:
    """monitor run on a log written by the service's own log writer (occluded digits), in
    the project `make run` left: drift, no GitHub configured, no feedback label since v1,
    so nothing runs and the job says what to do. (With labels the retrain runs here:
    tests/e2e/test_loop.py.)"""
    from services.inference_log import InferenceLog

    test = pd.read_parquet(repo / "data/prepared/test.parquet")
    features = [c for c in test.columns if c.startswith("pixel_")]
    x = test[features].to_numpy(float)
    x.reshape(-1, 8, 8)[:, :, :4] = 0  # the left half of every image goes dark
    writer = InferenceLog(tmp_path / "log", fsync_every=60)
    now = time.time()
    writer.append([{"type": "prediction", "id": f"p{i}", "ts": now, "model": "digits-classifier/1",
                    "features": x[i % len(x)].tolist(), "prediction": int(test["label"].iloc[i % len(x)])}
                   for i in range(500)])  # fmt: skip
    writer.close()

    proc = modelyard(repo, "monitor", "run", "--log-dir", str(tmp_path / "log"), check=False)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    flat = " ".join(proc.stdout.split())
    assert "0 new labels since v1: collect feedback (POST /v1/feedback), nothing retrained" in flat
    assert "Running stage" not in proc.stdout + proc.stderr  # no pipeline ran
    summary = json.loads((repo / ".modelyard/monitoring/summary.json").read_text())
    assert summary["status"] == "drift" and summary["model"] == "digits-classifier/1"
    assert summary["retrain"]["status"] == "no-new-labels"


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(inner, f"{path}.{key}" if path else str(key))
    else:
        yield path, value


def test_metrics_files_hold_only_numbers_and_dvc_shows_them_narrow(repo: Path) -> None:
    """Every declared metrics file holds numbers and booleans only (text, per-class lists
    and CPU flags live in the reports), so `dvc metrics show` stays a readable table."""
    declared = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = {
        next(iter(m)).replace("${paths.reports}", "data/reports")
        for stage in declared.values()
        for m in stage.get("metrics", [])
    }
    shown = json.loads(dvc(repo, "metrics", "show", "--json").stdout)[""]["data"]
    assert set(shown) == paths  # every declared file exists after a run
    for path, content in shown.items():
        assert content["data"], path
        for key, value in _leaves(content["data"]):
            assert isinstance(value, int | float), f"{path}: {key} = {value!r} is not a number"

    table = dvc(repo, "metrics", "show").stdout.splitlines()
    columns = table[0].split()
    assert len(columns) <= 40, f"{len(columns)} columns: {columns}"  # was 162
    cells = [cell for line in table[1:] for cell in line.split()]
    assert max(map(len, cells)) <= 26, max(cells, key=len)  # a path or a number; no sentence
