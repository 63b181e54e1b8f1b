"""`modelyard build` and `deploy record`: the first and last steps of deploy.yml.

The steps between are tested with the real tools: `deploy containerize` (buildah, a
registry, the image answering from inside) in test_image.py, `deploy render|apply|undo`
(kubectl kustomize, strict schema validation) in test_k8s.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    BIN,
    FakeGitHub,
    Project,
    copy_of,
    free_port,
    kill_tree,
    modelyard,
)
from tests.services.live import Gateway

pytestmark = pytest.mark.slow

NAME = "digits-classifier"


@pytest.fixture(scope="module")
def built(
    trained_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Project, dict[str, str]]]:
    base = tmp_path_factory.mktemp("deploy")
    project = copy_of(trained_template, base / "project")
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


def test_deploy_commit_names_what_trained_the_version(
    built: tuple[Project, dict[str, str]],
) -> None:
    """Issue 23: deploy.yml builds the images from the version's own commit, not from
    the default branch at deploy time. The test template is no git checkout (its version
    records `unknown`): refused; with a recorded commit: printed and a step output; with
    uncommitted changes on top (`git.dirty`): refused, no commit holds what trained it."""
    project, env = built
    params = ["--params", str(project.params_path)]
    client = project.registry().client
    tags = project.registry().version(NAME, "1").tags

    def commit() -> subprocess.CompletedProcess[str]:
        return modelyard(
            project.root, "deploy", "commit", f"{NAME}/1", *params, env=env, check=False
        )

    unknown = commit()
    assert unknown.returncode == 1 and "records no git commit (unknown)" in unknown.stderr
    sha = "4ac9549e0f1a2b3c4ac9549e0f1a2b3c4ac9549e"
    client.set_model_version_tag(NAME, "1", "git.commit", sha)
    client.set_model_version_tag(NAME, "1", "git.dirty", "False")
    try:
        done = commit()
        client.set_model_version_tag(NAME, "1", "git.dirty", "True")
        dirty = commit()
    finally:
        client.set_model_version_tag(NAME, "1", "git.commit", tags["git.commit"])
        client.set_model_version_tag(NAME, "1", "git.dirty", tags.get("git.dirty", "False"))
    assert done.returncode == 0 and done.stdout.strip() == sha
    outputs = dict(line.split("=", 1) for line in Path(env["GITHUB_OUTPUT"]).read_text().split())
    assert outputs["commit"] == sha
    assert dirty.returncode == 1 and "uncommitted changes" in " ".join(dirty.stderr.split())


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
            "production",
            "--actor",
            "ci-bot",
        )
        assert recorded == "deploy record: digits-classifier v1 runs ghcr.io/a/b:v1 on production"
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


def test_record_of_a_version_that_does_not_exist_is_1(
    built: tuple[Project, dict[str, str]],
) -> None:
    project, env = built
    missing = modelyard(
        project.root,
        "deploy",
        "record",
        NAME,
        "99",
        "--image",
        "x:y",
        "--params",
        str(project.params_path),
        env=env,
        check=False,
    )
    assert missing.returncode == 1 and "no version 99" in missing.stderr
    from registry import promotion

    assert project.registry().model_tags(NAME).get(promotion.DEPLOYED) != "99"  # nothing recorded


@pytest.fixture(scope="module")
def serving(built: tuple[Project, dict[str, str]]) -> Iterator[str]:
    """`modelyard serve` of version 1 (a real `bentoml serve`) on a free port."""
    project, env = built
    port = free_port()
    log = project.root / "serve.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "modelyard"),
                "serve",
                "--model",
                f"{NAME}/1",
                "--port",
                str(port),
                "--params",
                str(project.params_path),
            ],
            cwd=project.root,
            env={**os.environ, **env, "MODELYARD_API_KEYS": "smoke-key"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(480):
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.25)
        yield url
    finally:
        kill_tree(proc.pid)


def test_smoke_passes_against_the_version_it_serves(
    built: tuple[Project, dict[str, str]], serving: str
) -> None:
    project, env = built
    smoke = ["deploy", "smoke", serving, "--params", str(project.params_path)]
    keyed = {**env, "MODELYARD_API_KEYS": "smoke-key"}
    done = modelyard(project.root, *smoke, "--model", f"{NAME}/1", env=keyed)
    assert f"deploy smoke: {serving} serves {NAME}/1; probe -> " in done.stdout
    # The probe's label is the registered artifact's own answer (checked inside); the
    # label it printed is one of the model's classes.
    label = done.stdout.split("probe -> ")[1].strip()
    assert int(label) in range(10)


def test_smoke_waits_for_an_ingress_that_is_not_routing_yet(
    built: tuple[Project, dict[str, str]], serving: str
) -> None:
    """Issue 23: the smoke test asks the API's own route through what stands in front
    (here a gateway that answers 404, as an Ingress not routing yet does, then forwards),
    again with backoff, instead of failing the deploy on its first answer."""
    project, env = built
    with Gateway(serving, fail=2, status=404, body=b"<h1>404 Not Found</h1>") as gateway:
        done = modelyard(
            project.root,
            "deploy",
            "smoke",
            gateway.url,
            "--model",
            f"{NAME}/1",
            "--params",
            str(project.params_path),
            env={**env, "MODELYARD_API_KEYS": "smoke-key"},
        )
    assert f"serves {NAME}/1" in done.stdout
    assert gateway.seen == 4  # two 404s, then /v1/metadata and /v1/predict forwarded
    assert "answered HTTP 404; trying again" in " ".join(done.stderr.split())


def test_smoke_fails_on_another_version_a_bad_key_or_no_service(
    built: tuple[Project, dict[str, str]], serving: str
) -> None:
    project, env = built
    smoke = ["deploy", "smoke", "--params", str(project.params_path)]
    keyed = {**env, "MODELYARD_API_KEYS": "smoke-key"}
    # Version 2 exists (the same artifact, copied), but the live service still serves 1.
    project.registry().client.copy_model_version(f"models:/{NAME}/1", NAME)
    other = modelyard(
        project.root, *smoke, serving, "--model", f"{NAME}/2", "--wait", "2", env=keyed, check=False
    )
    assert other.returncode == 1
    said = " ".join(other.stderr.split())
    assert f"serves {NAME}/1, expected {NAME}/2 (still after waiting 2 s)" in said
    bad_key = modelyard(
        project.root,
        *smoke,
        serving,
        "--model",
        f"{NAME}/1",
        env={**env, "MODELYARD_API_KEYS": "wrong"},
        check=False,
    )
    assert bad_key.returncode == 1 and "HTTP 401" in " ".join(bad_key.stderr.split())
    gone = modelyard(
        project.root,
        *smoke,
        f"http://127.0.0.1:{free_port()}",
        "--model",
        f"{NAME}/1",
        "--wait",
        "1",
        env=keyed,
        check=False,
    )
    assert gone.returncode == 1 and "unreachable" in gone.stderr
    no_version = modelyard(project.root, *smoke, serving, "--model", NAME, env=keyed, check=False)
    assert no_version.returncode == 2 and "expected NAME/VERSION" in no_version.stderr


def test_a_failed_rollout_is_recorded_and_an_image_only_run_is_not_a_deploy(
    built: tuple[Project, dict[str, str]],
) -> None:
    from registry import promotion

    project, env = built
    params = ["--params", str(project.params_path)]
    registry = project.registry()
    before = registry.model_tags(NAME).get(promotion.DEPLOYED)
    image_only = modelyard(
        project.root,
        "deploy",
        "record",
        NAME,
        "1",
        "--image",
        "r/x@sha256:1",
        "--target",
        "image-only",
        *params,
        env=env,
        check=False,
    )
    assert image_only.returncode == 2 and "runs nowhere is not deployed" in image_only.stderr
    assert registry.model_tags(NAME).get(promotion.DEPLOYED) == before  # nothing recorded
    done = modelyard(
        project.root,
        "deploy",
        "record-failure",
        NAME,
        "1",
        "--env",
        "staging",
        "--reason",
        "smoke test failed",
        "--actor",
        "ci-bot",
        *params,
        env=env,
    )
    assert "failed on staging: smoke test failed" in done.stdout
    tags = registry.version(NAME, "1").tags
    assert tags["deploy.failed.env"] == "staging"
    assert tags["deploy.failed.reason"] == "smoke test failed"
    entry = promotion.audit_log(registry, NAME)[-1]
    assert entry["event"] == "deploy-failed" and entry["env"] == "staging"
    missing = modelyard(
        project.root, "deploy", "record-failure", NAME, "9", *params, env=env, check=False
    )
    assert missing.returncode == 1 and "no version 9" in " ".join(missing.stderr.split())
    unknown = modelyard(
        project.root,
        "deploy",
        "record-failure",
        NAME,
        "1",
        "--env",
        "qa",
        *params,
        env=env,
        check=False,
    )
    assert unknown.returncode == 2 and "expected one of staging, production" in unknown.stderr
