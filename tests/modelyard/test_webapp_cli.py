"""`modelyard webapp`: the usage errors it answers with exit 2 before starting anything,
and stopping it (SIGTERM, Ctrl-C) stops the server it started.
(Serving is driven for real by tests/services/webapp/test_browser.py, and `webapp build`
by tests/services/webapp/test_package.py.)"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from modelyard.app import app
from tests.conftest import free_port, interruptible, kill_tree, listening, record_exit
from tests.services.live import webapp_server


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {"MODELYARD_API_URL": ""}, "--api must be the model API's base URL"),
        (["--api", "localhost:3000"], {}, "got 'localhost:3000'"),
        ([], {"MODELYARD_API_URL": "ftp://models"}, "got 'ftp://models'"),
    ],
)
def test_a_missing_or_malformed_api_url_is_a_usage_error(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = CliRunner().invoke(app, ["webapp", *args], env=env)
    assert result.exit_code == 2
    assert expected in " ".join(result.output.split())


def test_help_names_the_exit_codes() -> None:
    result = CliRunner().invoke(app, ["webapp", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Exit codes: 0 done" in result.output
    assert "webapp build" in result.output


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stopping_the_webapp_stops_its_server(
    server_tier: None, tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    """SIGTERM (or Ctrl-C) to `modelyard webapp` stops `bentoml serve` and its workers: the
    port is free again, and the wrapper exits 128 + the signal (issue 22: it left the
    server running and listening)."""
    server = webapp_server(f"http://127.0.0.1:{free_port()}", tmp_path)  # no API: pages say so
    with open(server.out_path, "wb") as out:
        proc = subprocess.Popen(
            [*server.cmd, "--port", str(server.port)],
            env=server.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=interruptible,
        )
    try:
        deadline = time.monotonic() + 120
        while not listening(server.port):
            assert proc.poll() is None, server.output()
            assert time.monotonic() < deadline, f"not listening in 120 s:\n{server.output()}"
            time.sleep(0.3)
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert tree, "the wrapper started no server"
        proc.send_signal(sig)  # the wrapper only, as Kubernetes or a shell does
        exit_code = proc.wait(timeout=60)
        record_exit(["webapp"], exit_code)
        assert exit_code == code, server.output()
        deadline = time.monotonic() + 10
        while listening(server.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not listening(server.port), "the web app still listens after its wrapper stopped"
        assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        kill_tree(proc.pid)
