"""`modelyard build`: an exact registry version becomes a Bento, or a clear refusal.

Each test builds from its own copy of the session's trained digits project
(tests.conftest.trained_project: digits-classifier v1 registered, @challenger)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import Project, modelyard

pytestmark = pytest.mark.slow


def build(project: Project, tmp_path: Path, *args: str, home: str = "bentoml") -> object:
    return modelyard(
        project.root,
        "build",
        *args,
        "--params",
        str(project.params_path),
        env={"BENTOML_HOME": str(tmp_path / home)},
        check=False,
    )


def test_build_from_registry_version(trained_project: Project, tmp_path: Path) -> None:
    project = trained_project
    first = build(project, tmp_path, "--model", "digits-classifier/1")
    assert first.returncode == 0, first.stderr
    assert "build: built Bento digits-classifier:v1-" in first.stdout
    (bento,) = (tmp_path / "bentoml/bentos/digits-classifier").glob("v1-*/bento.yaml")
    manifest = yaml.safe_load(bento.read_text())
    (version,) = project.registry().versions("digits-classifier")
    assert manifest["labels"]["model_version"] == "1"
    assert manifest["labels"]["onnx_sha256"] == version.tags["onnx.sha256"]
    assert manifest["args"]["model_tag"].startswith("digits-classifier:v1-")
    assert (bento.parent / "env/docker/Dockerfile").exists()  # what CI containerizes


def test_a_second_build_of_the_same_version_is_up_to_date(
    trained_project: Project, tmp_path: Path
) -> None:
    assert build(trained_project, tmp_path, "--model", "digits-classifier/1").returncode == 0
    again = build(trained_project, tmp_path)  # default: @challenger, which is v1
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout and "no @champion yet" in again.stderr


def test_an_alias_nobody_holds_is_refused_with_1(trained_project: Project, tmp_path: Path) -> None:
    missing = build(trained_project, tmp_path, "--model", "digits-classifier@champion")
    assert missing.returncode == 1 and "no version with alias @champion" in missing.stderr
    assert not (tmp_path / "bentoml/bentos").exists()  # nothing built


def test_a_malformed_model_reference_is_refused_with_2(
    trained_project: Project, tmp_path: Path
) -> None:
    malformed = build(trained_project, tmp_path, "--model", "digits classifier")
    assert malformed.returncode == 2 and "NAME@ALIAS" in malformed.stderr


def test_an_artifact_changed_after_registration_is_refused(
    trained_project: Project, tmp_path: Path
) -> None:
    """The registered artifact changes after registration: refuse, don't ship it."""
    project = trained_project
    (artifact,) = (project.root / ".modelyard/artifacts/models").glob("*/artifacts/model.onnx")
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    tampered = build(project, tmp_path, "--model", "digits-classifier/1", home="other")
    assert tampered.returncode == 1
    assert "refusing to build" in " ".join(tampered.stderr.split())
    assert not (tmp_path / "other/bentos").exists()  # nothing built
