"""The web app's and the drift job's images, built, pushed and run for real.

The same real tools as tests/services/test_image.py (the session's buildah storage and
Debian's docker-registry on a free loopback port, tests/services/conftest.py; the
mmdebstrap base image):

- `modelyard webapp containerize` builds the web app's Bento image from the working tree
  and pushes it; the image pulled back by digest serves the Try-it page in front of a real
  running model API (``digits_api``) and answers a drawing with the API's own prediction.
- `modelyard deploy monitor-image` builds the drift job's image (monitoring/Containerfile)
  from a snapshot of its inputs, twice (the second time it is not rebuilt), pushes it; the
  image pulled back by digest runs `modelyard monitor run` over a copy of the served
  model's real inference log, against an MLflow server on loopback, and writes its verdict:
  the job's requirements are complete.

The fast tests check, without building, that the job's requirements file provides every
module `modelyard monitor run` can import and pins the locked versions, and the exit codes
of the two commands' usage errors. Without root, buildah, docker-registry or mmdebstrap the
image tests report skipped with the reason (``missing_tools``).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from packaging.requirements import Requirement

from services import image
from services.webapp import inputs
from tests import layout
from tests.conftest import BIN, REPO, free_port, kill_tree, modelyard
from tests.services.live import API_KEY, LiveApi
from tests.services.oci import wait_for
from tests.services.test_image import BASE, ENTRYPOINT, canonical, manifest, requirement_pins

JOB_REQUIREMENTS = REPO / image.MONITOR_REQUIREMENTS
# The job reaches these only through pipelines.models.module(), the trainer factory: a
# retrain runs on GitHub (the `retrain` dispatch), never in the drift job's pod, so the
# image has no torch or scikit-learn exporters.
TRAINING_ONLY = {
    REPO / "pipelines/models/torch_nets.py",
    REPO / "pipelines/models/sklearn_models.py",
}
# Imported by no module, loaded by one: pandas reads the training split's Parquet with it.
RUNTIME_ONLY = {"pyarrow"}


# -- what the job imports, without building anything --------------------------------------


def startup_files() -> set[Path]:
    """The project files `modelyard` imports before any command runs: module-level imports
    of modelyard/app.py, transitively (a command's lazy imports run only when it does)."""
    seen: set[Path] = set()
    todo = [REPO / "modelyard/app.py"]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in module_level_imports(ast.parse(path.read_text())):
            for name in imported_names(node):
                todo += layout._with_parents(name)
    return seen


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return found


def imported_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level or not node.module:
        return []
    return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]


def job_files() -> set[Path]:
    """What `modelyard monitor run` can import: the CLI's startup (module level only: the
    other commands' lazy imports never run), then modelyard/monitor.py and everything it
    imports, lazy imports included (AST), except TRAINING_ONLY."""
    seen: set[Path] = set()
    todo = [REPO / "modelyard/monitor.py"]
    while todo:
        path = todo.pop()
        if path in seen or path in TRAINING_ONLY:
            continue
        seen.add(path)
        todo.extend(layout.imports(path) - seen)
    return seen | startup_files()


def third_party(files: set[Path]) -> dict[str, str]:
    """Top-level third-party module -> one project file that imports it."""
    found: dict[str, str] = {}
    for path in sorted(files):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for name in imported_names(node):
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in layout.ORDER:
                        continue
                    if top != "__future__":
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def unprovided(requirements: Path) -> dict[str, str]:
    """Modules the job imports (or loads, RUNTIME_ONLY) that no distribution in
    ``requirements`` provides: module -> the file that imports it."""
    provided = importlib.metadata.packages_distributions()
    pins = requirement_pins(requirements)
    needed = {**third_party(job_files()), **{m: "(loaded by pandas)" for m in RUNTIME_ONLY}}
    return {
        module: where
        for module, where in needed.items()
        if not any(canonical(d) in pins for d in provided.get(module, []))
    }


def unlisted_dependencies(requirements: Path) -> dict[str, str]:
    """Dependencies of listed distributions (as installed here, markers for this
    interpreter) that the file does not list: it is installed with --no-deps."""
    pins = requirement_pins(requirements)
    missing: dict[str, str] = {}
    for name in pins:
        for text in importlib.metadata.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if canonical(req.name) not in pins:
                missing[canonical(req.name)] = name
    return missing


def test_the_job_imports_no_training_code_but_through_the_trainer_factory() -> None:
    """TRAINING_ONLY is left out of the closure; only pipelines/models/__init__.py (the
    lazy trainer factory) may lead there, so a new path to torch from the job fails here."""
    everything = job_files() | TRAINING_ONLY
    importers = {
        str(path.relative_to(REPO))
        for path in everything
        if layout.imports(path) & TRAINING_ONLY and path not in TRAINING_ONLY
    }
    assert importers == {"pipelines/models/__init__.py"}
    modules = third_party(job_files())
    assert {"evidently", "mlflow", "great_expectations", "onnxruntime", "typer"} <= set(modules)
    assert "torch" not in modules and "bentoml" not in modules


def test_the_job_requirements_provide_every_import_and_pin_the_lock() -> None:
    assert unprovided(JOB_REQUIREMENTS) == {}, "imported by the job, not in its requirements"
    assert unlisted_dependencies(JOB_REQUIREMENTS) == {}, "installed with --no-deps"
    pins = requirement_pins(JOB_REQUIREMENTS)
    lock = requirement_pins(REPO / "requirements.lock")
    assert {d: v for d, v in pins.items() if lock.get(d) != v} == {}, "pins differ from the lock"
    assert not {"torch", "dvc", "bentoml", "mlflow"} & set(pins)  # the slim part


def test_a_missing_requirement_is_named(tmp_path: Path) -> None:
    short = tmp_path / "requirements.txt"
    lines = JOB_REQUIREMENTS.read_text().splitlines()
    short.write_text("\n".join(ln for ln in lines if not ln.startswith("evidently==")))
    assert unprovided(short) == {"evidently": "monitoring/drift.py"}
    assert unlisted_dependencies(short) == {}  # nothing listed needs evidently
    (tmp_path / "r2.txt").write_text("\n".join(ln for ln in lines if not ln.startswith("scipy")))
    assert unlisted_dependencies(tmp_path / "r2.txt")["scipy"]  # evidently, sklearn need it


def test_the_image_inputs_are_what_the_containerfile_copies() -> None:
    """The content tag hashes exactly the build context, and the context holds what the
    Containerfile's COPY lines name (a COPY of a file left out would fail the build)."""
    files = image.monitor_inputs(REPO)
    text = (REPO / image.MONITOR_CONTAINERFILE).read_text()
    copied = re.findall(r"^COPY (\S+) ", text, flags=re.M)
    for source in copied:
        assert any(f == Path(source) or Path(source) in f.parents for f in files), source
    assert {f.parts[0] for f in files} == {*image.MONITOR_PACKAGES, "params.yaml", "data"}
    other = {f for f in files if f.suffix != ".py" and f.parts[0] in image.MONITOR_PACKAGES}
    assert other == {Path(image.MONITOR_CONTAINERFILE), Path(image.MONITOR_REQUIREMENTS)}
    tag = image.content_tag(REPO, files)
    assert re.fullmatch(r"modelyard-monitor:[0-9a-f]{12}", tag)
    assert image.content_tag(REPO, files, salt="another base") != tag


def test_the_commands_refuse_a_bad_backend_or_a_missing_builder(
    e2e_tier: None, tmp_path: Path
) -> None:
    """Exit 2 for an unknown backend, 1 when the builder is not installed (PATH holds only
    this venv): both before anything is built."""
    env = {"PATH": str(BIN), "BENTOML_HOME": str(tmp_path / "bentoml")}
    for command in (["deploy", "monitor-image"], ["webapp", "containerize"]):
        bad = modelyard(REPO, *command, "--backend", "podman", env=env, check=False)
        assert bad.returncode == 2 and "expected one of docker, buildah" in bad.stderr
        missing = modelyard(REPO, *command, "--backend", "buildah", env=env, check=False)
        assert missing.returncode == 1, missing.stderr
        assert "`buildah` is not on PATH" in " ".join(missing.stderr.split())
    assert not (tmp_path / "bentoml").exists()  # no Bento was built


# -- the images, built and run ---------------------------------------------------------------


@pytest.fixture(scope="module")
def base_image(buildah_env: dict[str, str]) -> str:
    made = modelyard(REPO, "deploy", "base-image", env=buildah_env)  # ~/.cache/modelyard
    assert f"base-image: {BASE}" in made.stdout
    return BASE


def outputs(path: Path) -> dict[str, str]:
    found = dict(line.split("=", 1) for line in path.read_text().split())
    path.unlink()
    return found


def image_sizes(env: dict[str, str], registry: str, ref: str, digest: str) -> tuple[int, int]:
    """(compressed bytes in the registry, unpacked bytes in buildah's storage)."""
    repository, _, tag = ref.partition("/")[2].rpartition(":")
    status, body, served = manifest(registry, repository, tag)
    assert status == 200 and served == digest  # the registry serves the digest we recorded
    compressed = sum(layer["size"] for layer in body["layers"])
    unpacked = subprocess.run(
        ["buildah", "images", "--format", "{{.Size}}", ref],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    sys.stderr.write(f"\n[image] {ref}: {compressed / 1e6:.0f} MB compressed, {unpacked}\n")
    return compressed, len(body["layers"])


def pulled(env: dict[str, str], by_digest: str) -> str:
    """A working container of the image pulled back from the registry by digest."""
    done = subprocess.run(
        ["buildah", "from", "--tls-verify=false", f"docker://{by_digest}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def config_of(env: dict[str, str], container: str) -> dict[str, Any]:
    done = subprocess.run(
        ["buildah", "inspect", "--type", "container", container],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout)["OCIv1"]["config"])


def rendered(webapp: str = "", monitor: str = "") -> dict[str, dict[str, Any]]:
    """The staging overlay with both optional components, by kind/name."""
    options = [*(["--webapp-image", webapp] if webapp else [])]
    options += ["--monitor-image", monitor] if monitor else []
    done = modelyard(
        REPO,
        "deploy",
        "render",
        "digits-classifier/1",
        "--image",
        "127.0.0.1:5000/m/digits-classifier@sha256:" + "0" * 64,
        *options,
        env={"MODELYARD_API_KEYS": API_KEY, "MODELYARD_WEBAPP_SECRET": "s"},
    )
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


@pytest.mark.slow
def test_the_web_app_image_serves_the_try_it_page_over_a_real_api(
    buildah_env: dict[str, str],
    oci_registry: str,
    base_image: str,
    digits_api: LiveApi,
    tmp_path: Path,
) -> None:
    out = tmp_path / "github_output"
    env = {**buildah_env, "BENTOML_HOME": str(tmp_path / "bentoml"), "GITHUB_OUTPUT": str(out)}
    push = [
        "--backend",
        "buildah",
        "--base-image",
        base_image,
        "--push",
        f"{oci_registry}/modelyard",
        "--no-tls-verify",
    ]
    started = time.perf_counter()
    done = modelyard(REPO, "webapp", "containerize", *push, env=env)
    sys.stderr.write(
        f"\n[image] webapp containerize + push: {time.perf_counter() - started:.0f} s\n"
    )
    made = outputs(out)
    assert made["image"] == f"{oci_registry}/modelyard/modelyard-webapp@{made['digest']}"
    assert f"webapp containerize: {made['image']}" in " ".join(done.stdout.split())
    ref = f"{oci_registry}/modelyard/{made['tag']}"
    image_sizes(buildah_env, oci_registry, ref, made["digest"])

    # The Deployment runs the image's own entrypoint (no command/args) on port 3000, as
    # the Bento's user; the image agrees.
    docs = rendered(webapp=made["image"])
    pod = docs["Deployment/modelyard-webapp"]["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    assert spec["image"] == made["image"]
    assert "command" not in spec and "args" not in spec
    container = pulled(buildah_env, made["image"])
    try:
        config = config_of(buildah_env, container)
        assert config["Entrypoint"] == [ENTRYPOINT]
        assert f"{spec['ports'][0]['containerPort']}/tcp" in config["ExposedPorts"]
        uid = subprocess.run(
            ["buildah", "run", container, "--", "id", "-u"],
            env=buildah_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert uid == str(pod["securityContext"]["runAsUser"])
        env_of = {e["name"]: e.get("value") for e in spec["env"]}
        port = free_port()
        settings = {
            **{k: v for k, v in env_of.items() if v is not None},
            "MODELYARD_API_URL": digits_api.url,  # the cluster's Service, here the live API
            "MODELYARD_API_KEY": API_KEY,
            "MODELYARD_WEBAPP_SECRET": "image-test-secret",
            "MODELYARD_WEBAPP_PROXY_HOPS": "0",  # no Ingress in front here
        }
        flags = [f"--env={k}={v}" for k, v in settings.items()]
        serve = [ENTRYPOINT, "bentoml", "serve", "--port", str(port)]
        proc = subprocess.Popen(
            ["buildah", "run", *flags, container, "--", *serve],
            env=buildah_env,
            stdout=open(tmp_path / "webapp.log", "wb"),  # noqa: SIM115  # the server's log
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(
                f"{url}/readyz", proc, "the web app in the image", 120, tmp_path / "webapp.log"
            )
            with httpx.Client(base_url=url, timeout=30) as web:
                page = web.get("/")
                assert page.status_code == 200, page.text[-2000:]
                assert 'id="pad"' in page.text  # the digits model: the drawing canvas
                token = re.search(r'name="csrf" value="([^"]+)"', page.text)
                assert token is not None
                seven = [[[10, 10], [90, 10], [40, 95]]]
                answer = web.post("/predict", data={"csrf": token[1], "strokes": json.dumps(seven)})
            assert answer.status_code == 200, answer.text[-2000:]
            shown = re.search(r'<strong id="predicted">([^<]+)</strong>', answer.text)
            assert shown is not None
            # ... the API's own answer for the row the web app made of that drawing.
            row = inputs.rasterize(inputs.parse_strokes(json.dumps(seven)), inputs.Image(8, 16.0))
            direct = httpx.post(
                f"{digits_api.url}/v1/predict",
                json={"inputs": [row]},
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=30,
            )
            assert direct.status_code == 200, direct.text
            assert shown[1] == str(direct.json()["predictions"][0]["label"])
        finally:
            kill_tree(proc.pid)
    finally:
        subprocess.run(["buildah", "rm", container], env=buildah_env, capture_output=True)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def mlflow_server(store: Path, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`mlflow server` over the project's own store, on a free loopback port."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(folder / "mlflow.log", "wb") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{store / 'mlflow.db'}",
                "--artifacts-destination",
                str(folder / "mlartifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/health", proc, "mlflow server", 90, folder / "mlflow.log")
    return proc, url


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    """The job's inputs as they are now: other work in the tree cannot change the tag
    between the two builds."""
    root = tmp_path / "src"
    for rel in image.monitor_inputs(REPO):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, root / rel)
    return root


@pytest.mark.slow
def test_the_monitor_image_runs_the_drift_job_over_a_real_log(
    buildah_env: dict[str, str],
    oci_registry: str,
    base_image: str,
    digits_api: LiveApi,
    snapshot: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "github_output"
    env = {**buildah_env, "GITHUB_OUTPUT": str(out)}
    args = ["deploy", "monitor-image", "--params", str(snapshot / "params.yaml")]
    args += ["--backend", "buildah", "--base-image", base_image]
    args += ["--push", f"{oci_registry}/modelyard", "--no-tls-verify"]
    started = time.perf_counter()
    first = modelyard(REPO, *args, env=env)
    cold = time.perf_counter() - started
    made = outputs(out)
    started = time.perf_counter()
    again = modelyard(REPO, *args, env=env)
    warm = time.perf_counter() - started
    sys.stderr.write(f"\n[image] monitor-image cold {cold:.0f} s, unchanged {warm:.0f} s\n")
    assert "built in" in first.stdout and "unchanged, not rebuilt" in again.stdout
    assert outputs(out) == made  # same tag, same digest
    assert re.fullmatch(r"modelyard-monitor:[0-9a-f]{12}", made["tag"])
    assert made["image"] == f"{oci_registry}/modelyard/modelyard-monitor@{made['digest']}"
    image_sizes(
        buildah_env, oci_registry, f"{oci_registry}/modelyard/{made['tag']}", made["digest"]
    )

    # The CronJob's container and the image agree: entrypoint + args, user, paths, HOME.
    docs = rendered(monitor=made["image"])
    job = docs["CronJob/modelyard-drift"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (spec,) = job["containers"]
    assert spec["image"] == made["image"] and "command" not in spec
    assert spec["args"][:2] == ["monitor", "run"]
    container = pulled(buildah_env, made["image"])
    try:
        config = config_of(buildah_env, container)
        assert config["Entrypoint"] == ["modelyard"] and config["WorkingDir"] == "/app"
        assert config["User"] == f"{job['securityContext']['runAsUser']}:1034"
        env_of = {e["name"]: e["value"] for e in spec["env"]}
        mounts = {m["mountPath"]: m.get("readOnly", False) for m in spec["volumeMounts"]}
        assert mounts == {
            "/tmp": False,
            "/app/.modelyard": False,
            env_of["MODELYARD_LOG_DIR"]: True,
        }
        assert env_of["HOME"] in mounts  # HOME is writable

        # Real traffic to the served model, its log copied as the API's user (1034) owns it
        # in the cluster; the job reads it read-only.
        start = time.time()
        modelyard(
            REPO,
            "simulate-traffic",
            "--url",
            digits_api.url,
            "--rows",
            "300",
            "--params",
            str(digits_api.project.params_path),
            env={"MODELYARD_API_KEYS": API_KEY},
        )
        window = (iso(start), iso(time.time() + 0.001))
        time.sleep(0.05)
        log = tmp_path / "log"
        shutil.copytree(digits_api.log_dir, log)
        # The training run's artifacts (file:// URIs in the store), as the job's user can
        # read them: in the cluster the MLflow server serves them; here, a copy mounted at
        # their path (the pipeline wrote some 0600, as root).
        store = digits_api.project.root / ".modelyard"  # sqlite + the training split
        artifacts = shutil.copytree(store / "artifacts", tmp_path / "artifacts")
        work = tmp_path / "work"
        work.mkdir()
        for path in [log, work, artifacts, *log.rglob("*"), *artifacts.rglob("*")]:
            os.chown(path, 1034, 1034)
        server, tracking = mlflow_server(store, tmp_path)
        try:
            volumes = [
                f"--volume={log}:{env_of['MODELYARD_LOG_DIR']}:ro",
                f"--volume={work}:/app/.modelyard",
                f"--volume={artifacts}:{store / 'artifacts'}:ro",
            ]
            flags = [
                f"--env={k}={v}" for k, v in {**env_of, "MLFLOW_TRACKING_URI": tracking}.items()
            ]
            # The CronJob's own arguments, with this test's window for its "--since 1h
            # --align" (the last whole hour: this test's rows are the last few seconds).
            since = spec["args"].index("--since")
            assert spec["args"][since + 2] == "--align"
            job_args = [*spec["args"][:since], "--since", window[0], "--until", window[1]]
            job_args += spec["args"][since + 3 :]
            ran = subprocess.run(
                ["buildah", "run", *volumes, *flags, container, "--", "modelyard", *job_args],
                env=buildah_env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
            summary = json.loads((work / "monitoring/summary.json").read_text())
            assert summary["status"] == "ok" and summary["rows"] == 300
            assert summary["model"] == "digits-classifier/1"
            assert summary["drift_run"]["status"] == "logged"
            assert (work / "monitoring/summary.json").stat().st_uid == 1034
            import mlflow

            client = mlflow.MlflowClient(tracking)
            experiment = client.get_experiment_by_name("modelyard-monitoring")
            assert experiment is not None
            (run,) = client.search_runs([experiment.experiment_id])
            assert run.data.tags["status"] == "ok"
        finally:
            kill_tree(server.pid)
    finally:
        subprocess.run(["buildah", "rm", container], env=buildah_env, capture_output=True)
