"""`modelyard build` and `deploy record`: the first and last steps of deploy.yml.

The steps between are tested with the real tools: `deploy containerize` (buildah, a
registry, the image answering from inside) in test_image.py, `deploy render|apply|undo`
(kubectl kustomize, strict schema validation) in test_k8s.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST_TRAIN, FakeGitHub, Project, modelyard, new_project

pytestmark = pytest.mark.slow

NAME = "digits-classifier"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, dict[str, str]]]:
    base = tmp_path_factory.mktemp("deploy")
    project = new_project(base / "project")
    project.set_params(train=FAST_TRAIN)
    project.stages(
        "champion",
        "ingest",
        "prepare",
        "validate",
        "train",
        "export",
        "optimize",
        "evaluate",
        "register",
    )
    env = {"BENTOML_HOME": str(base / "bentoml"), "GITHUB_OUTPUT": str(base / "github_output")}
    out = modelyard(
        project.root, "build", "--model", f"{NAME}/1", "--params", str(project.params_path), env=env
    )
    assert "build: built Bento" in out.stdout
    yield project, env


def test_build_writes_the_step_outputs(built: tuple[Project, dict[str, str]]) -> None:
    _, env = built
    outputs = dict(line.split("=", 1) for line in Path(env["GITHUB_OUTPUT"]).read_text().split())
    assert outputs["model_name"] == NAME and outputs["model_version"] == "1"
    assert outputs["bento_tag"].startswith(f"{NAME}:v1-")


def test_record_then_reconcile_is_in_sync(built: tuple[Project, dict[str, str]]) -> None:
    """The reconciler deploys an undeployed champion once, waits while that deploy is
    pending, and does nothing once `deploy record` says the champion runs."""
    from registry import promotion

    project, env = built
    github = FakeGitHub()
    env = {
        **env,
        "GITHUB_REPOSITORY": "acme/models",
        "GITHUB_TOKEN": "gh-test-token",
        "GITHUB_API_URL": github.url,
    }
    params = ["--params", str(project.params_path)]
    registry = project.registry()

    def run(*args: str) -> str:
        return str(modelyard(project.root, *args, *params, env=env).stdout).strip()

    try:
        # This project is not a git repository; a clone's training commit names its author.
        registry.set_version_tags(NAME, "1", {"git.author": "dana@example.com"})
        run("promote", NAME, "1", "--reviewer", "rui@example.com")
        promoted = len(github.dispatched())
        assert (
            run("registry", "reconcile", NAME) == f"reconcile {NAME}: deploy:github:model-promoted"
        )
        assert github.dispatched()[promoted:] == [(NAME, "1")]
        assert run("registry", "reconcile", NAME) == f"reconcile {NAME}: deploy-pending"
        assert github.dispatched()[promoted:] == [(NAME, "1")]  # once

        recorded = run(
            "deploy",
            "record",
            NAME,
            "1",
            "--image",
            "ghcr.io/a/b:v1",
            "--target",
            "kubernetes",
            "--actor",
            "ci-bot",
        )
        assert recorded == "deploy record: digits-classifier v1 runs ghcr.io/a/b:v1 on kubernetes"
        tags = registry.model_tags(NAME)
        assert (
            tags[promotion.DEPLOYED] == "1" and tags[promotion.DEPLOYED_IMAGE] == "ghcr.io/a/b:v1"
        )
        assert promotion.audit_log(registry, NAME)[-1]["event"] == "deployed"
        before = len(github.requests)
        assert run("registry", "reconcile", NAME) == f"reconcile {NAME}: in-sync"
        assert len(github.requests) == before  # in sync: nothing dispatched
    finally:
        github.close()
    missing = modelyard(
        project.root,
        "deploy",
        "record",
        NAME,
        "99",
        "--image",
        "x:y",
        *params,
        env=env,
        check=False,
    )
    assert missing.returncode == 1 and "no version 99" in missing.stderr
