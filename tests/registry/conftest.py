"""A real team server for the registry tests: `modelyard registry server` (MLflow's
basic-auth app on a PostgreSQL started by pgserver in a temp dir), started once per
session (~10-20 s), and a team applied to it with `modelyard registry users apply`."""

from __future__ import annotations

import contextlib
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

from tests.conftest import BIN, free_port, kill_tree

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
            name: {"role": role, **({"github": gh} if gh else {})}
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
        return subprocess.run(
            [str(BIN / "modelyard"), "registry", "users", "apply", str(team_file)],
            env=self.env(**passwords, **env, COLUMNS="200"),
            capture_output=True,
            text=True,
        )


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


def start_server(data_dir: Path) -> TeamServer:
    port = free_port()
    log = data_dir.parent / f"server-{time.time_ns()}.out"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
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


def stop_server(server: TeamServer) -> None:
    """SIGTERM, as a service manager would: the command stops MLflow and PostgreSQL."""
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(60)
    except subprocess.TimeoutExpired:
        kill_tree(server.process.pid)


@pytest.fixture(scope="session")
def team_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
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
