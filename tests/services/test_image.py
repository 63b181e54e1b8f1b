"""A registry version becomes a real OCI image, pushed to a real registry, that answers a
real prediction from inside the image.

Real tools, no stand-ins: mmdebstrap builds a python:3.11-slim stand-in from Debian
packages (Docker Hub is unreachable here; the root filesystem is cached in
~/.cache/modelyard, so only the first session pays for it), ``bentoml containerize
--backend buildah`` builds the Bento's own Dockerfile, buildah pushes it to Debian's
``docker-registry`` on a free loopback port, and ``buildah run --isolation chroot`` (host
network) runs the image pulled back from that registry by digest. One image is built per
session; the tests below share it.

Without buildah, docker-registry or mmdebstrap (``make system-tools`` installs them as
root), or without root, the image tests report skipped with the reason.
"""

from __future__ import annotations

import ast
import base64
import importlib.metadata
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from services import build, inference_log
from tests.conftest import (
    REPO,
    Project,
    copy_of,
    free_port,
    kill_tree,
    modelyard,
)
from tests.services.oci import http, wait_for

NAME = "digits-classifier"
BASE = "localhost/modelyard-base:bookworm-py3.11"
KEY = "image-test-key"
ENTRYPOINT = "/home/bentoml/bento/env/docker/entrypoint.sh"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Pushed:
    project: Project
    env: dict[str, str]  # buildah's storage + isolation, BENTOML_HOME
    registry: str  # 127.0.0.1:PORT
    outputs: dict[str, str]  # the command's GitHub step outputs
    stdout: str


@pytest.fixture(scope="module")
def pushed(
    buildah_env: dict[str, str],
    oci_registry: str,
    trained_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Pushed:
    """The one image build of the session: version 1 -> Bento -> image -> registry."""
    base = tmp_path_factory.mktemp("image")
    project = copy_of(trained_template, base / "project")
    outputs = base / "github_output"
    env = {**buildah_env, "BENTOML_HOME": str(base / "bentoml"), "GITHUB_OUTPUT": str(outputs)}
    made = modelyard(project.root, "deploy", "base-image", env=env)  # cache: ~/.cache/modelyard
    assert f"base-image: {BASE}" in made.stdout
    started = time.perf_counter()
    done = modelyard(
        project.root,
        "deploy",
        "containerize",
        f"{NAME}/1",
        "--backend",
        "buildah",
        "--base-image",
        BASE,
        "--push",
        f"{oci_registry}/modelyard",
        "--no-tls-verify",
        "--params",
        str(project.params_path),
        env=env,
    )
    sys.stderr.write(f"\n[image] containerize + push took {time.perf_counter() - started:.0f} s\n")
    found = dict(line.split("=", 1) for line in outputs.read_text().split())
    return Pushed(project, env, oci_registry, found, " ".join(done.stdout.split()))


def manifest(registry: str, repository: str, reference: str) -> tuple[int, dict[str, Any], str]:
    status, body, headers = http(
        f"http://{registry}/v2/{repository}/manifests/{reference}",
        headers={"Accept": OCI_MANIFEST},
    )
    digest = {k.lower(): v for k, v in headers.items()}.get("docker-content-digest", "")
    return status, (json.loads(body) if status == 200 else {}), digest


@pytest.mark.slow
def test_the_recorded_digest_is_the_manifest_the_registry_serves(pushed: Pushed) -> None:
    image, digest = pushed.outputs["image"], pushed.outputs["digest"]
    repository = f"modelyard/{NAME}"
    assert image == f"{pushed.registry}/{repository}@{digest}"
    assert f"containerize: {image}" in pushed.stdout and "recorded on digits-classifier v1" in (
        pushed.stdout
    )
    # The registry holds it under the Bento's version, and that tag's manifest is the digest.
    catalog = json.loads(http(f"http://{pushed.registry}/v2/_catalog")[1])
    assert catalog["repositories"] == [repository]
    tag = pushed.outputs["bento_tag"].split(":")[1]
    status, body, served = manifest(pushed.registry, repository, tag)
    assert status == 200 and served == digest
    assert body["mediaType"] == OCI_MANIFEST
    by_digest = manifest(pushed.registry, repository, digest)
    assert by_digest[0] == 200 and by_digest[2] == digest
    size = sum(layer["size"] for layer in body["layers"])
    sys.stderr.write(f"\n[image] {len(body['layers'])} layers, {size / 1e6:.0f} MB compressed\n")
    # ... and the registry version says which image is its own.
    tags = pushed.project.registry().version(NAME, "1").tags
    assert tags["deployed.image_digest"] == digest
    assert tags["deployed.image"] == image


@pytest.fixture(scope="module")
def container(pushed: Pushed) -> Iterator[str]:
    """A working container of the image pulled back from the registry by its digest."""
    done = subprocess.run(
        ["buildah", "from", "--tls-verify=false", f"docker://{pushed.outputs['image']}"],
        env=pushed.env,
        capture_output=True,
        text=True,
        check=True,
    )
    name = done.stdout.strip().splitlines()[-1]
    yield name
    subprocess.run(["buildah", "rm", name], env=pushed.env, capture_output=True)


def expected_labels(project: Project, rows: np.ndarray) -> list[Any]:
    """What the registered model itself predicts for ``rows`` (ONNX Runtime, here)."""
    import onnxruntime as ort

    folder = project.registry().download(NAME, "1")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {session.get_inputs()[0].name: rows})[0]
    classes = json.loads((project.root / "data/prepared/schema.json").read_text())["classes"]
    return [classes[i] for i in probs.argmax(axis=1)]


@pytest.mark.slow
def test_the_image_serves_a_real_prediction(pushed: Pushed, container: str) -> None:
    import pandas as pd

    port = free_port()
    proc = subprocess.Popen(
        [
            "buildah",
            "run",
            "--env",
            f"MODELYARD_API_KEYS={KEY}",
            container,
            "--",
            ENTRYPOINT,
            "bentoml",
            "serve",
            "--port",
            str(port),
        ],
        env=pushed.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/readyz", proc, "the service in the image", 120)
        test = pd.read_parquet(pushed.project.root / "data/prepared/test.parquet")
        rows = test.drop(columns=["label"]).to_numpy(dtype=np.float32)[:5]
        auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        status, body, _ = http(
            f"{url}/v1/predict", method="POST", body={"inputs": rows.tolist()}, headers=auth
        )
        assert status == 200, body
        predictions = json.loads(body)["predictions"]
        assert [p["label"] for p in predictions] == expected_labels(pushed.project, rows)
        assert all(abs(sum(p["probabilities"]) - 1) < 1e-4 for p in predictions)
        status, body, _ = http(f"{url}/v1/metadata", headers=auth)
        assert status == 200 and json.loads(body)["version"] == "1"
        assert http(f"{url}/v1/predict", method="POST", body={"inputs": rows.tolist()})[0] == 401
    finally:
        kill_tree(proc.pid)


@pytest.mark.slow
def test_the_image_runs_as_the_bento_user_without_build_tools(
    pushed: Pushed, container: str
) -> None:
    probe = (
        "id -u; for t in gcc cc make git uv pip pip3; do command -v $t || true; done; "
        "/app/.venv/bin/python -c 'import services.service'"
    )
    done = subprocess.run(
        ["buildah", "run", container, "--", "sh", "-c", f"cd /home/bentoml/bento/src && {probe}"],
        env=pushed.env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr  # the service imports with what the image has
    uid, *found = done.stdout.split()
    assert uid == "1034"  # BentoML's user, not root: the k8s securityContext relies on it
    assert found == [], f"build-only tools shipped in the image: {found}"


def run_as_deployed(
    pushed: Pushed, container: str, volume: Path, argv: list[str], *, background: bool = False
) -> Any:
    """Run ``argv`` from the image the way the rendered staging Deployment runs it: its
    user and groups, a read-only root filesystem, an empty writable /tmp, the log volume
    at its mount path, and its env as Kubernetes expands it (pod name, secret key).
    unshare + chroot: a mount namespace of its own, the host's network; /etc/hosts and
    resolv.conf are bind-mounted as the kubelet does."""
    done = modelyard(
        REPO,
        "deploy",
        "render",
        f"{NAME}/1",
        "--env",
        "staging",
        "--image",
        pushed.outputs["image"],
        env={"MODELYARD_API_KEYS": KEY},
    )
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    (api,) = [d for d in docs if d["kind"] == "Deployment"]
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    secret_data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    pod = api["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    user = pod["securityContext"]
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    log_mount = next(p for p, n in mounts.items() if "persistentVolumeClaim" in volumes[n])
    assert "emptyDir" in volumes[mounts["/tmp"]]
    config = json.loads(
        subprocess.run(
            ["buildah", "inspect", "--type", "container", container],
            env=pushed.env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["OCIv1"]["config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    for item in spec["env"]:
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], item["value"])
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = "modelyard-api-5d8c7-x2x9q"  # metadata.name of this "pod"
        else:  # the generated Secret, as render made it; an optional key it lacks: unset
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            if ref["key"] in secret_data:
                env[item["name"]] = secret_data[ref["key"]]
            else:
                assert ref.get("optional"), ref
    assert env["MODELYARD_API_KEYS"] == KEY and "MODELYARD_ID_KEY" not in env
    # fsGroup: the volume belongs to that group, group-writable, setgid.
    os.chown(volume, 0, user["fsGroup"])
    volume.chmod(0o2775)
    root = subprocess.run(
        ["buildah", "mount", container], env=pushed.env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    command = " ".join(shlex.quote(a) for a in argv)
    script = f"""set -e
mount --bind {root} {root}
mkdir -p {root}{log_mount}
mount -t proc proc {root}/proc
mount --rbind /dev {root}/dev
mount -t tmpfs -o mode=1777 tmpfs {root}/tmp
mount --bind {volume} {root}{log_mount}
touch {root}/etc/hosts {root}/etc/resolv.conf
mount --bind /etc/hosts {root}/etc/hosts
mount --bind /etc/resolv.conf {root}/etc/resolv.conf
mount -o remount,bind,ro {root}
exec chroot --userspec={user["runAsUser"]}:{user["runAsGroup"]} --groups={user["fsGroup"]} \
  {root} /usr/bin/env -i {assignments} sh -c 'cd {config["WorkingDir"]} && exec "$@"' - {command}
"""
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    if background:
        with open(volume.parent / "serve.log", "wb") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.slow
def test_the_image_serves_as_the_deployment_runs_it(
    pushed: Pushed, container: str, tmp_path: Path
) -> None:
    """The manifests' promises hold for this image: it serves with a read-only root
    filesystem as uid 1034, writes only to /tmp and to its own folder of the log volume."""
    volume = tmp_path / "volume"
    volume.mkdir()
    probe = run_as_deployed(
        pushed, container, volume, ["sh", "-c", "id -u; touch /home/bentoml/probe"]
    )
    assert probe.stdout.split() == ["1034"] and "Read-only file system" in probe.stderr
    port = free_port()
    proc = run_as_deployed(
        pushed, container, volume, [ENTRYPOINT, "--port", str(port)], background=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/readyz", proc, "the service, run as deployed", 120, tmp_path / "serve.log")
        auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        row = [[0.0] * 64]
        status, body, _ = http(
            f"{url}/v1/predict", method="POST", body={"inputs": row}, headers=auth
        )
        assert status == 200, body
    finally:
        kill_tree(proc.pid)
    (folder,) = volume.iterdir()  # the pod's own folder, private to the service's user
    assert folder.name == "modelyard-api-5d8c7-x2x9q"
    assert folder.stat().st_uid == 1034 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    records = list(inference_log.read(volume))  # what the drift CronJob reads
    assert [r["type"] for r in records] == ["prediction"]


@pytest.mark.slow
def test_containerize_refuses_a_bad_backend_or_registry(pushed: Pushed) -> None:
    args = ["deploy", "containerize", f"{NAME}/1", "--params", str(pushed.project.params_path)]
    bad = modelyard(pushed.project.root, *args, "--backend", "podman", env=pushed.env, check=False)
    assert bad.returncode == 2 and "expected one of docker, buildah" in bad.stderr
    upper = modelyard(
        pushed.project.root,
        *args,
        "--backend",
        "buildah",
        "--push",
        "not a registry",
        env=pushed.env,
        check=False,
    )
    assert upper.returncode == 2 and "expected a registry path" in " ".join(upper.stderr.split())
    missing = modelyard(
        pushed.project.root,
        "deploy",
        "containerize",
        f"{NAME}/7",
        "--params",
        str(pushed.project.params_path),
        env=pushed.env,
        check=False,
    )
    assert missing.returncode == 1 and "no version 7" in missing.stderr


# -- the Bento's requirements, without building anything -----------------------------------


def imported_distributions(files: list[Path]) -> dict[str, str]:
    """Third-party distribution -> the module a service file imports from it."""
    provided = importlib.metadata.packages_distributions()
    found: dict[str, str] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in {"services", "__future__"}:
                    continue
                assert top in provided, f"{path.name} imports {top}, which nothing installs here"
                for dist in provided[top]:
                    found[canonical(dist)] = top
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    return pins


def test_the_bento_requirements_cover_every_import_of_the_service() -> None:
    """The image installs services/requirements.txt (plus BentoML itself): every package
    the Bento's code imports must be named there, pinned as in requirements.lock. (orjson
    was missing once: the image built, then could not import the service.)"""
    spec = yaml.safe_load((REPO / build.BENTOFILE).read_text())
    code = [REPO / rel for rel in build.service_files(REPO) if rel.endswith(".py")]
    assert {p.name for p in code} >= {"service.py", "schema.py", "inference_log.py"}
    pins = requirement_pins(REPO / spec["python"]["requirements_txt"])
    imported = imported_distributions(code)
    unlisted = {
        dist: module for dist, module in imported.items() if dist not in pins and dist != "bentoml"
    }
    assert not unlisted, f"imported by the service, not in its requirements: {unlisted}"
    lock = requirement_pins(REPO / "requirements.lock")
    for dist, version in pins.items():
        assert lock.get(dist) == version, f"{dist}=={version}, requirements.lock: {lock.get(dist)}"


def project_imports(files: list[Path]) -> set[str]:
    """The project files (``services/x.py``) that ``files`` import: ``from services import
    x``, ``from services.x import ...``, ``import services.x``."""
    found: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "services":
                    found |= {f"services/{alias.name}.py" for alias in node.names}
                elif node.module.startswith("services."):
                    found.add(node.module.replace(".", "/") + ".py")
            elif isinstance(node, ast.Import):
                found |= {
                    a.name.replace(".", "/") + ".py"
                    for a in node.names
                    if a.name.startswith("services.")
                }
    return found


def test_the_bento_includes_every_project_module_its_code_imports() -> None:
    """services/ids.py was imported by the service and missing from the bentofile's
    include: every test against a local `bentoml serve` passed, the image refused to
    start ("cannot import name 'ids' from 'services'")."""
    included = set(build.service_files(REPO))
    code = [REPO / rel for rel in included if rel.endswith(".py")]
    missing = {rel for rel in project_imports(code) if (REPO / rel).is_file()} - included
    assert not missing, f"imported by the Bento's code, not in {build.BENTOFILE}: {missing}"


def test_the_include_check_catches_a_missing_module(tmp_path: Path) -> None:
    code = tmp_path / "service.py"
    code.write_text("from services import edge, ids\nimport services.schema\n")
    assert project_imports([code]) == {
        "services/edge.py",
        "services/ids.py",
        "services/schema.py",
    }


def test_the_requirements_check_catches_an_unlisted_import(tmp_path: Path) -> None:
    service = tmp_path / "service.py"
    service.write_text("import json\nimport orjson\nfrom pydantic import BaseModel\n")
    assert imported_distributions([service]) == {"orjson": "orjson", "pydantic": "pydantic"}
