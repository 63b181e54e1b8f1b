"""`modelyard build`: an exact registry version becomes a Bento, or a clear refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST_TRAIN, PIPELINE, Project, modelyard

pytestmark = pytest.mark.slow


def test_build_from_registry_version(project: Project, tmp_path: Path) -> None:
    project.set_params(train=FAST_TRAIN)
    project.stages(*PIPELINE)
    env = {"BENTOML_HOME": str(tmp_path / "bentoml")}
    params = ["--params", str(project.params_path)]

    first = modelyard(project.root, "build", "--model", "digits-classifier/1", *params, env=env)
    assert "build: built Bento digits-classifier:v1-" in first.stdout
    (bento,) = (tmp_path / "bentoml/bentos/digits-classifier").glob("v1-*/bento.yaml")
    manifest = yaml.safe_load(bento.read_text())
    (version,) = project.registry().versions("digits-classifier")
    assert manifest["labels"]["model_version"] == "1"
    assert manifest["labels"]["onnx_sha256"] == version.tags["onnx.sha256"]
    assert manifest["args"]["model_tag"].startswith("digits-classifier:v1-")
    assert (bento.parent / "env/docker/Dockerfile").exists()  # what CI containerizes

    again = modelyard(project.root, "build", *params, env=env)  # default: @challenger
    assert "up to date" in again.stdout and "no @champion yet" in again.stderr

    missing = modelyard(
        project.root,
        "build",
        "--model",
        "digits-classifier@champion",
        *params,
        env=env,
        check=False,
    )
    assert missing.returncode == 1 and "no version with alias @champion" in missing.stderr
    malformed = modelyard(
        project.root, "build", "--model", "digits classifier", *params, env=env, check=False
    )
    assert malformed.returncode == 2 and "NAME@ALIAS" in malformed.stderr

    # The registered artifact changes after registration: refuse, don't ship it.
    (artifact,) = (project.root / ".modelyard/artifacts/models").glob("*/artifacts/model.onnx")
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    tampered = modelyard(
        project.root,
        "build",
        "--model",
        "digits-classifier/1",
        *params,
        env={"BENTOML_HOME": str(tmp_path / "other")},
        check=False,
    )
    assert tampered.returncode == 1
    assert "refusing to build" in " ".join(tampered.stderr.split())
