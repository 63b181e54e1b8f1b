"""`modelyard monitor run` against a real running service: traffic from
`modelyard simulate-traffic` -> the inference log -> Evidently -> verdict, report,
workspace, alert webhook and retrain dispatch."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, FakeGitHub, Project, free_port, kill_tree, modelyard
from tests.monitoring.conftest import Recorder
from tests.services.test_http import KEYS, Server, call

pytestmark = pytest.mark.slow

LEFT_HALF = {f"pixel_{r * 8 + c}" for r in range(8) for c in range(4)}


class Monitoring:
    def __init__(self, server: Server, base: Path) -> None:
        self.server, self.base = server, base
        self.alerts, self.github = Recorder(), FakeGitHub()
        self.env = {
            **server.env,
            "MODELYARD_ALERT_WEBHOOK_URL": self.alerts.url,
            "GITHUB_REPOSITORY": "acme/models",
            "GITHUB_TOKEN": "t0k",
            "GITHUB_API_URL": self.github.url,
        }
        self.params = ["--params", str(server.project.params_path)]

    def traffic(self, *args: str) -> tuple[str, str]:
        """Send traffic; the (since, until) ISO window that holds exactly it."""
        start = time.time()
        url = f"http://127.0.0.1:{self.server.port}"
        modelyard(
            self.server.project.root,
            "simulate-traffic",
            "--url",
            url,
            *args,
            *self.params,
            env=self.env,
        )
        end = time.time() + 0.001
        time.sleep(0.05)
        return iso(start), iso(end)

    def monitor(self, window: tuple[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
        proc = modelyard(
            self.server.project.root,
            "monitor",
            "run",
            "--since",
            window[0],
            "--until",
            window[1],
            *args,
            *self.params,
            env=self.env,
            check=False,
        )
        summary_file = self.server.project.root / ".modelyard/monitoring/summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        return proc.returncode, summary, proc.stdout + proc.stderr


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@pytest.fixture(scope="module")
def mon(trained: Project) -> Iterator[Monitoring]:
    base = trained.root.parent
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(
        BENTOML_HOME=str(base / "bentoml"),
        MODELYARD_API_KEYS=",".join(KEYS),
        MODELYARD_LOG_DIR=str(base / "log"),
    )
    server = Server(trained, env, base / "log")
    try:
        server.start()  # a server that never gets ready is stopped too
        yield Monitoring(server, base)
    finally:
        server.stop()


def test_clean_traffic_is_no_alarm(mon: Monitoring) -> None:
    window = mon.traffic("--rows", "400", "--feedback", "0.3")
    code, summary, out = mon.monitor(window)
    assert code == 0, out
    assert summary["status"] == "ok" and summary["rows"] == 400
    assert summary["drift_share"] < summary["drift_share_threshold"]
    assert not summary["prediction_drift"]["drifted"]
    assert summary["data_quality"]["failed"] == 0 and summary["data_quality"]["evaluated"] > 64
    assert summary["classification"]["rows"] >= 50
    assert summary["classification"]["accuracy"] > 0.8  # feedback labels joined by id
    assert summary["reference"]["uri"].startswith("runs:/")  # found through the registry
    assert Path(summary["report"]).stat().st_size > 100_000  # Evidently's HTML
    assert summary["unusable"] == {"wrong_width": 0, "not_numeric": 0}
    assert (
        summary["alert"]
        == summary["retrain"]
        == {
            "status": "skipped",
            "detail": "no drift",
            "version": None,
        }
    )
    assert mon.alerts.payloads == [] and mon.github.dispatches("retrain") == []


def test_drifted_traffic_alerts_on_the_right_features(mon: Monitoring) -> None:
    window = mon.traffic("--rows", "600", "--drift", "occlude")
    code, summary, out = mon.monitor(window)
    assert code == 1, out
    assert summary["status"] == "drift" and "DRIFT" in out
    drifted = set(summary["drifted_columns"])
    # The left half of the images went dark: that is where drift is found ...
    assert len(drifted & LEFT_HALF) >= 15
    # ... and the right half is left alone (a column or two by chance at most).
    assert len(drifted - LEFT_HALF) <= 3, drifted - LEFT_HALF
    assert summary["prediction_drift"]["drifted"]
    (alert,) = mon.alerts.payloads
    assert alert["status"] == "drift" and set(alert["drifted_columns"]) == drifted
    assert summary["alert"]["status"] == "sent"
    (retrain,) = mon.github.dispatches("retrain")
    assert retrain["model"] == summary["model"]
    # A dispatch is a retrain requested, not a retrain done.
    assert summary["retrain"]["status"] == "requested"
    flat = " ".join(out.split())
    assert "retrain: retrain requested on GitHub (acme/models" in flat
    assert "retrained" not in flat


def test_a_window_too_small_says_so(mon: Monitoring) -> None:
    window = mon.traffic("--rows", "50")
    code, summary, out = mon.monitor(window)
    assert code == 0
    assert summary["status"] == "not-enough-data" and summary["rows"] == 50
    assert "not enough data" in out and summary["report"] is None
    assert summary["drifted_columns"] == []
    assert summary["retrain"]["status"] == "skipped"


def test_malformed_lines_are_skipped_and_counted(mon: Monitoring) -> None:
    start = time.time()
    bad = mon.server.log_dir / "inference-99990101T000000-1-0001.jsonl"
    bad.write_text(
        '{"type": "prediction", "ts": 1\n[1, 2, 3]\n{"type": "prediction", "ts": '
        f'{time.time()}, "features": "not a list"}}\n{{"torn": '
    )
    window = mon.traffic("--rows", "300")
    code, summary, out = mon.monitor((iso(start), window[1]))
    assert code == 0, out
    assert summary["status"] == "ok" and summary["rows"] == 300
    assert summary["malformed_lines"] == 4  # bad JSON, not an object, no features, torn tail


def test_errors_exit_2_and_say_what_to_do(mon: Monitoring) -> None:
    code, _, out = mon.monitor(("yesterday-ish", "now"))
    assert code == 2 and "not a time" in out
    proc = modelyard(
        mon.server.project.root,
        "monitor",
        "run",
        "--log-dir",
        "/nonexistent",
        *mon.params,
        env=mon.env,
        check=False,
    )
    assert proc.returncode == 2 and "no inference log at /nonexistent" in proc.stderr


def test_monitor_ui_shows_the_runs(mon: Monitoring) -> None:
    # Two runs with a verdict of its own, whichever tests ran before (or none did).
    for _ in range(2):
        code, summary, said = mon.monitor(mon.traffic("--rows", "250"))
        assert code == 0 and summary["status"] == "ok", said
    port = free_port()
    with open(mon.base / "ui.out", "w") as out:
        proc = subprocess.Popen(
            [str(BIN / "modelyard"), "monitor", "ui", "--port", str(port), *mon.params],
            cwd=mon.server.project.root,
            env=mon.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        projects: Any = None
        while time.monotonic() < deadline and projects is None:
            try:
                status, projects = call(port, "GET", "/api/projects", key=None)
                projects = projects if status == 200 else None
            except OSError:
                time.sleep(0.5)
        assert projects, (mon.base / "ui.out").read_text()
        (project,) = [p for p in projects if p["name"] == "modelyard"]
        status, snapshots = call(port, "GET", f"/api/projects/{project['id']}/snapshots", key=None)
        assert status == 200 and len(snapshots) >= 2  # one per monitor run with a verdict
    finally:
        kill_tree(proc.pid)


def test_unreachable_service_is_a_clear_error(mon: Monitoring) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc = modelyard(
        mon.server.project.root,
        "simulate-traffic",
        "--url",
        dead,
        "--rows",
        "5",
        *mon.params,
        env=mon.env,
        check=False,
    )
    assert proc.returncode == 1 and "cannot reach the service" in proc.stderr
