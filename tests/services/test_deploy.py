"""`modelyard build|deploy apply|deploy record`: the steps of deploy.yml, run here.

(`deploy containerize` builds, pushes and runs a real image in test_image.py.) There is
no cluster on this machine, so `kubectl` is a recording stand-in on PATH for `apply`.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from services import deploy
from tests.conftest import FAST_TRAIN, FakeGitHub, Project, modelyard, new_project

pytestmark = pytest.mark.slow

NAME = "digits-classifier"

FAKE_KUBECTL = """#!/usr/bin/env bash
python3 - "$@" <<'PY'
import json, os, sys
args = sys.argv[1:]
entry = {"args": args, "kubeconfig": os.environ.get("KUBECONFIG")}
if args[:2] == ["apply", "-k"]:
    entry["kustomization"] = open(os.path.join(args[2], "kustomization.yaml")).read()
    cfg = os.environ.get("KUBECONFIG")
    if cfg:
        entry["kubeconfig_mode"] = oct(os.stat(cfg).st_mode & 0o777)
        entry["kubeconfig_content"] = open(cfg).read()
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
PY
"""


def fake_tool(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def calls(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


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


def test_apply_renders_the_overlay_and_waits_for_the_rollout(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    fake_tool(tools, "kubectl", FAKE_KUBECTL)
    log = tmp_path / "kubectl.jsonl"
    image = "ghcr.io/acme/models/digits-classifier:v3-abc"
    env = {
        "FAKE_LOG": str(log),
        "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
        "KUBE_CONFIG": "apiVersion: v1\nkind: Config\n",
    }
    done = modelyard(tmp_path, "deploy", "apply", "--image", image, "--namespace", "ml", env=env)
    assert "deployment/modelyard runs" in done.stdout
    apply_call, rollout = calls(log)
    overlay = yaml.safe_load(apply_call["kustomization"])  # type: ignore[arg-type]
    assert overlay["resources"] == [str(deploy.K8S_BASE)]
    assert overlay["images"] == [
        {"name": "modelyard", "newName": image.rsplit(":", 1)[0], "newTag": "v3-abc"}
    ]
    assert overlay["namespace"] == "ml"
    assert apply_call["kubeconfig_mode"] == "0o600"
    assert apply_call["kubeconfig_content"] == env["KUBE_CONFIG"]
    assert not Path(str(apply_call["kubeconfig"])).exists()  # removed afterwards
    assert rollout["args"][:3] == ["rollout", "status", "deployment/modelyard"]  # type: ignore[index]


def test_the_base_manifests_deploy_the_image_the_overlay_replaces() -> None:
    base = yaml.safe_load((deploy.K8S_BASE / "kustomization.yaml").read_text())
    docs = {
        name: yaml.safe_load((deploy.K8S_BASE / name).read_text()) for name in base["resources"]
    }
    container = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "modelyard"  # what overlay()'s images: entry matches
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    volume = docs["deployment.yaml"]["spec"]["template"]["spec"]["volumes"][0]
    assert (
        volume["persistentVolumeClaim"]["claimName"]
        == docs["inference-log-pvc.yaml"]["metadata"]["name"]
    )


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
