"""A real team server for the registry tests: `modelyard registry server` (MLflow's
basic-auth app on a PostgreSQL started by pgserver in a temp dir), started once per
session (~10-20 s), and a team applied to it with `modelyard registry users apply`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.policy import Rules
from tests.conftest import BIN, free_port, kill_tree, record_exit

ADMIN = ("admin", "admin-password-for-tests")
CANDIDATES = "digits-classifier"
PRODUCTION = "digits-classifier-production"
EXPERIMENT = "modelyard-ci"
# name -> (role, github login); every password is "<name>-password-1"
USERS = {
    "dana": ("data_scientist", "dana-gh"),
    "ci": ("trainer", None),
    "rui": ("reviewer", "rui-gh"),
    "lee": ("reviewer", "lee-gh"),
    "gate": ("gate", None),
}


def password(user: str) -> str:
    return f"{user}-password-1"


def team_yaml(users: dict[str, tuple[str, str | None]] = USERS) -> dict[str, Any]:
    return {
        "experiment": EXPERIMENT,
        "models": {"candidates": CANDIDATES, "production": PRODUCTION},
        "users": {
            name: {
                "role": role,
                **({"github": gh} if gh else {}),
                **({"emails": [f"{name}@example.com"]} if role != "gate" else {}),
            }
            for name, (role, gh) in users.items()
        },
    }


@dataclass
class TeamServer:
    uri: str
    data_dir: Path
    gate_database_url: str
    process: subprocess.Popen[Any]
    log: Path

    def database_url(self, database: str, *, admin: bool = False) -> str:
        """A database of this server as the gate's role, or as PostgreSQL's superuser
        (``admin``: pgserver's ``postgres``, over its Unix socket)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.gate_database_url).set(database=database)
        if admin:
            url = url.set(username="postgres", password=None)
        return url.render_as_string(hide_password=False)

    def env(self, user: str | None = None, **extra: str) -> dict[str, str]:
        """The environment of a command run by ``user`` (the admin if None)."""
        name, pw = (user, password(user)) if user else ADMIN
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_PASSWORD_")}
        env.update(
            MLFLOW_TRACKING_URI=self.uri,
            MLFLOW_TRACKING_USERNAME=name,
            MLFLOW_TRACKING_PASSWORD=pw,
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        )
        env.update(extra)
        return env

    def apply(self, team_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
        passwords = {f"MODELYARD_PASSWORD_{u.upper()}": password(u) for u in USERS}
        args = ["registry", "users", "apply", str(team_file)]
        done = subprocess.run(
            [str(BIN / "modelyard"), *args],
            env=self.env(**passwords, **env, COLUMNS="200"),
            capture_output=True,
            text=True,
        )
        record_exit(args, done.returncode)
        return done


@contextlib.contextmanager
def as_user(server: TeamServer, user: str | None) -> Iterator[None]:
    """MLflow's client reads the credentials from the environment on each request."""
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI")
    saved = {k: os.environ.get(k) for k in keys}
    env = server.env(user)
    os.environ.update({k: env[k] for k in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_server(data_dir: Path, *, first_start: bool = True) -> TeamServer:
    """`modelyard registry server` on ``data_dir`` (the admin's password is needed on
    the first start only)."""
    port = free_port()
    log = data_dir.parent / f"server-{time.time_ns()}.out"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"MLFLOW_TRACKING_URI", "MLFLOW_AUTH_ADMIN_PASSWORD"}
    }
    if first_start:
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = ADMIN[1]
    cmd = [str(BIN / "modelyard"), "registry", "server", "--data-dir", str(data_dir)]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = log.read_text()
        if "MODELYARD_GATE_DATABASE_URL=" in text:
            url = text.split("MODELYARD_GATE_DATABASE_URL=")[1].split()[0]
            return TeamServer(f"http://127.0.0.1:{port}", data_dir, url, proc, log)
        if proc.poll() is not None:
            raise AssertionError(f"registry server exited ({proc.returncode}):\n{text}")
        time.sleep(0.3)
    kill_tree(proc.pid)
    raise AssertionError(f"registry server not ready in 180 s:\n{log.read_text()}")


def stop_server(server: TeamServer) -> int | None:
    """SIGTERM, as a service manager would: the command stops MLflow and PostgreSQL.
    Returns its exit code (None if it had to be killed)."""
    import psutil

    children = psutil.Process(server.process.pid).children(recursive=True)
    server.process.send_signal(signal.SIGTERM)
    try:
        code: int | None = server.process.wait(60)
    except subprocess.TimeoutExpired:
        kill_tree(server.process.pid)
        code = None
    for child in children:  # a command that died without stopping MLflow leaves nothing
        kill_tree(child.pid)
    return code


@pytest.fixture(scope="session")
def team_server(
    server_tier: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TeamServer]:
    base = tmp_path_factory.mktemp("team")
    server = start_server(base / "data")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def team_file(team_server: TeamServer) -> Path:
    """The team applied once (users, models, experiment, grants)."""
    path = team_server.data_dir.parent / "team.yaml"
    path.write_text(yaml.safe_dump(team_yaml()))
    result = team_server.apply(path)
    assert result.returncode == 0, result.stdout + result.stderr
    return path


# -- a candidate as CI trains it ----------------------------------------------------------------

# The thresholds of params.yaml: evaluate (what the gate process reads from its params).
RULES = Rules(
    min_accuracy=0.95,
    min_macro_f1=0.95,
    max_p99_ms=5.0,
    min_class_recall=0.85,
    min_noise_invariance=0.97,
)
GOOD_METRICS = {
    "test.accuracy": 0.97,
    "test.macro_f1": 0.97,
    "test.min_class_recall": 0.92,
    "test.noise_invariance": 0.99,
    "test.latency.batch_1.cpu_p99_ms": 0.4,
}


# The candidates' test rows: 60 rows labelled by the model of seed TRUTH (random weights
# N(seed)). A candidate as CI trains it (``log_candidate``'s default) is a decent model
# near the truth: TRUTH's weights + 0.6 N(DECENT) + 0.001 N(seed), right on 50 of those
# 60 rows, the same 50 for every seed (each seed is still another file). Tests that need
# a clearly better or worse candidate say so: ``model="truth"`` (right on every row: better
# than a decent champion, McNemar p = 0.002) or ``model="random"`` (weights N(seed):
# seed 2 is right on 18 rows: worse, p = 4e-9).
TRUTH, DECENT = 0, 7


def weights(seed: int, model: str = "random") -> Any:
    import numpy as np

    def normal(s: int) -> Any:
        return np.random.default_rng(s).normal(size=(4, 3))

    if model == "random":
        return normal(seed).astype(np.float32)
    if model == "truth":
        return normal(TRUTH).astype(np.float32)
    assert model == "decent", model
    return (normal(TRUTH) + 0.6 * normal(DECENT) + 0.001 * normal(seed)).astype(np.float32)


def tiny_onnx(path: Path, seed: int, model: str = "random") -> Path:
    """A real ONNX classifier (4 features, 3 classes: MatMul + Softmax) with the
    ``weights`` of ``seed`` and ``model``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = weights(seed, model)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def write_reference(
    folder: Path, tmp: Path, *, labelled_by: int, rows: int = 60, production_rows: int = 0
) -> Path:
    """What train logs as the run's ``reference/``: schema.json and the test split(s), here
    ``rows`` random rows labelled by the predictions of the tiny model of seed
    ``labelled_by`` (that model is right on every row)."""
    import numpy as np
    import pandas as pd

    from registry.comparison import predict

    folder.mkdir(parents=True, exist_ok=True)
    labeller = tiny_onnx(tmp / f"labeller-{labelled_by}.onnx", labelled_by)
    features = [f"f{i}" for i in range(4)]
    schema = {
        "target": "label",
        "classes": ["0", "1", "2"],
        "features": [{"name": f} for f in features],
    }
    (folder / "schema.json").write_text(json.dumps(schema))
    rng = np.random.default_rng(1000 + labelled_by)
    for split, n in (("test", rows), ("test_production", production_rows)):
        if n:
            x = rng.normal(size=(n, 4)).astype(np.float32)
            frame = pd.DataFrame(x, columns=features)
            frame["label"] = [str(c) for c in predict(labeller, x)]
            frame.to_parquet(folder / f"{split}.parquet")
    return folder


def log_candidate(
    server: TeamServer,
    tmp: Path,
    *,
    user: str = "ci",
    experiment: str = EXPERIMENT,
    seed: int,
    model: str = "decent",
    metrics: dict[str, float] | None = None,
    author: str | None = "dana-gh",
    run_sha: str | None = None,
    labelled_by: int | None = None,
    commit_author: str = "dana@example.com",
) -> tuple[str, str, str]:
    """What CI's train..register do, on the team server as ``user``: a run in
    ``experiment`` with the evaluate metrics, the author and validation tags, its test
    split (``reference/``: the rows labelled by the model of seed ``labelled_by``, by
    default TRUTH's), the ONNX model (``model`` of ``seed``: see TRUTH) logged to it and
    the file's sha256 recorded. Returns (run id, model uri, sha256)."""
    import mlflow
    import numpy as np

    from core import files
    from pipelines import tracking

    onnx_file = tiny_onnx(tmp / f"model-{model}-{seed}.onnx", seed, model)
    reference = write_reference(
        tmp / f"reference-{seed}" / "reference",
        tmp,
        labelled_by=TRUTH if labelled_by is None else labelled_by,
    )
    sha = files.sha256(onnx_file)
    with as_user(server, user):
        mlflow.set_tracking_uri(server.uri)
        experiment_id = tracking.ensure_experiment(experiment, tmp)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{seed}") as run:
            mlflow.log_metrics(metrics if metrics is not None else GOOD_METRICS)
            tags = {
                "validation.success": "True",
                "registered.onnx_sha256": run_sha or sha,
                "git.author": commit_author,  # what register logs (the commit's email)
            }
            if author is not None:
                tags["modelyard.author"] = author
            mlflow.set_tags(tags)
            mlflow.log_artifacts(str(reference), "reference")
            example = np.zeros((2, 4), dtype=np.float32)
            model_uri, _ = tracking.log_onnx_model(onnx_file, example, {"schema": {}})
    return run.info.run_id, model_uri, sha


def register_candidate(
    server: TeamServer, run_id: str, model_uri: str, sha: str, *, user: str = "ci", **tags: str
) -> str:
    """Version N of the candidates model with the lineage tags register writes."""
    from registry.client import Registry

    lineage = {
        "onnx.sha256": sha,
        "gates.passed": "True",
        "validation.success": "True",
        "git.author": "dana@example.com",
        **tags,
    }
    with as_user(server, user):
        return Registry(server.uri).register(CANDIDATES, model_uri, run_id, lineage).version


def train_candidate(server: TeamServer, tmp: Path, *, seed: int, **kw: Any) -> str:
    """log_candidate + register_candidate as the CI trainer; returns the version."""
    run_id, uri, sha = log_candidate(server, tmp, seed=seed, **kw)
    return register_candidate(server, run_id, uri, sha)


def apply_own_team(
    server: TeamServer, folder: Path, *, experiment: str, candidates: str, production: str
) -> Path:
    """A team file of the test's own: the usual team with its own experiment and models
    (so no other test's champion is in its way), applied to ``server``."""
    path = folder / "team.yaml"
    team = team_yaml()
    team["experiment"] = experiment
    team["models"] = {"candidates": candidates, "production": production}
    path.write_text(yaml.safe_dump(team))
    applied = server.apply(path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    return path
