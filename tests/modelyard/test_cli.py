"""The CLI as users meet it: help that explains, and the MLflow UI on the local store."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from modelyard.app import app
from tests.conftest import BIN, Project, free_port


def test_help_lists_every_stage(project: Project) -> None:
    result = project.runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("ingest", "prepare", "validate", "train", "export", "optimize", "evaluate", "register",
                    "run", "summary", "ui"):  # fmt: skip
        assert command in result.output


def test_summary_before_any_run_says_what_to_do(project: Project) -> None:
    result = project.cli("summary")
    assert result.exit_code == 1
    assert "modelyard run" in result.output


def test_ui_serves_the_local_store(project: Project, tmp_path: Path) -> None:
    project.stages("ingest")  # any command; the store appears on first use
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [str(BIN / "modelyard"), "ui", "--port", str(port), "--params", str(project.params_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "MLflow UI did not start in 60 s"
                time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert b"MLflow" in r.read()
        assert (project.root / ".modelyard/mlflow.db").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
