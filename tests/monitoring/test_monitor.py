"""`modelyard monitor run` against a real running service: traffic from
`modelyard simulate-traffic` -> the inference log -> Evidently -> verdict, report (its
header: model, window, time, verdict), workspace (snapshots tagged with the verdict and
the model; thresholds on the dashboard), alert webhook, retrain dispatch and retention."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import (
    BIN,
    FakeGitHub,
    Project,
    dvc,
    free_port,
    interruptible,
    kill_tree,
    listening,
    modelyard,
    record_exit,
)
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


def header(page: Path) -> str:
    """The header block modelyard puts right after Evidently's <body>."""
    text = page.read_text()
    body = text.index("<body")
    start = text.index(">", body) + 1
    assert text[start:].startswith('<div id="modelyard-header"'), text[start : start + 200]
    return text[start : text.index("</table></div>", start)]


def snapshots(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's snapshots, as the workspace stores them (snapshots.json names them)."""
    named = json.loads((Path(summary["folder"]) / "snapshots.json").read_text())
    where = Path(summary["workspace"]) / named["project"] / "snapshots"
    return [json.loads((where / f"{i}.json").read_text()) for i in named["snapshots"]]


def du(path: Path) -> int:
    """Bytes on disk under ``path`` (a file's own size)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


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
    # An operator reads which model, which window, when and the verdict at the top ...
    model, window = summary["model"], summary["window"]
    top = header(Path(summary["report"]))
    assert f"OK: digits-classifier v{model.split('/')[1]}, {window['since']} .. " in top
    assert window["until"] in top and "Run at (UTC)" in top and "no drift:" in top
    run_at = top.split("Run at (UTC)</th><td>")[1][:25]
    assert Path(summary["folder"]).name.startswith(run_at[:19].replace("-", "").replace(":", ""))
    # ... and quality is measured against the held-out test split, not the training one.
    test = pd.read_parquet(mon.server.project.root / "data/prepared/test.parquet")
    ref = summary["reference"]
    assert ref["quality_split"] == "test" and ref["quality_note"] is None
    assert ref["quality_uri"].endswith("/reference/test.parquet")
    assert ref["quality_rows"] == len(test) != ref["rows"]
    cached = pd.read_parquet(
        mon.server.project.root
        / f".modelyard/monitoring/reference/{model.replace('/', '-v')}-test.parquet"
    )
    features = [c for c in test.columns if c.startswith("pixel_")]
    assert (cached[features].to_numpy() == test[features].to_numpy()).all()
    quality = header(Path(summary["report"]).with_name("report-classification.html"))
    assert f"the held-out test split, {len(test):,} rows" in quality
    assert "Labelled predictions" in quality
    # The snapshots carry the verdict and the model; the drift one carries the thresholds.
    drift_snap, cls_snap = snapshots(summary)
    for snap in (drift_snap, cls_snap):
        assert {"ok", model} <= set(snap["tags"]) and "drift" not in snap["tags"]
        assert snap["metadata"]["run"] == Path(summary["folder"]).name
        assert snap["metadata"]["quality_reference"] == "test"
    # what Evidently compared with: drift, the training split; quality, the test split
    assert int(drift_snap["metadata"]["reference_rows"]) == ref["rows"]
    assert int(cls_snap["metadata"]["reference_rows"]) == len(test)
    thresholds = {
        r["metric_value_location"]["metric"]["params"]["name"]: r["value"]
        for r in drift_snap["metric_results"].values()
        if r["metric_value_location"]["metric"]["params"]["type"].endswith(":ModelyardThreshold")
    }
    assert thresholds == {
        "drift_share": summary["drift_share_threshold"],
        "prediction_drift": summary["prediction_drift"]["threshold"],
    }
    assert (Path(summary["folder"]) / "drift_scores.png").stat().st_size > 10_000
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


@pytest.fixture
def dvc_remote(mon: Monitoring) -> Iterator[Path]:
    """The project as a DVC project with a remote, for this test only: a GitHub retrain
    needs the harvested labels to reach CI through it (monitor.publish_labels)."""
    root, remote = mon.server.project.root, mon.base / "dvc-remote"
    dvc(root, "init", "--no-scm", "-q")
    mon.env["DVC_REMOTE_URL"] = str(remote)
    try:
        yield remote
    finally:
        mon.env.pop("DVC_REMOTE_URL")
        shutil.rmtree(root / ".dvc")
        for made in [root / ".dvcignore", *(root / "data/production").glob("*.dvc")]:
            made.unlink(missing_ok=True)


def test_drifted_traffic_alerts_on_the_right_features(mon: Monitoring, dvc_remote: Path) -> None:
    # feedback labels too: a retrain is asked for only when new labels exist
    window = mon.traffic("--rows", "600", "--drift", "occlude", "--feedback", "0.3")
    code, summary, out = mon.monitor(window)
    assert code == 1, out
    assert summary["status"] == "drift" and "DRIFT" in out
    assert {"drift", summary["model"]} <= set(snapshots(summary)[0]["tags"])
    assert "<h1" in header(Path(summary["report"])) and ">DRIFT: digits-classifier v" in header(
        Path(summary["report"])
    )
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
    assert "new labels since v1: retrain requested on GitHub (acme/models" in flat
    assert "retrained" not in flat


def test_a_window_too_small_says_so(mon: Monitoring) -> None:
    window = mon.traffic("--rows", "50")
    code, summary, out = mon.monitor(window)
    assert code == 0
    assert summary["status"] == "not-enough-data" and summary["rows"] == 50
    assert "not enough data" in out and summary["report"] is None
    assert summary["drifted_columns"] == []
    assert summary["retrain"]["status"] == "skipped"
    # no verdict: the run leaves its summary only (no report, no snapshot)
    assert [p.name for p in Path(summary["folder"]).iterdir()] == ["summary.json"]


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


def ok_runs(mon: Monitoring) -> int:
    runs = mon.server.project.root / ".modelyard/monitoring/runs"
    return sum(json.loads(f.read_text())["status"] == "ok" for f in runs.glob("*/summary.json"))


def test_monitor_ui_shows_the_runs(mon: Monitoring) -> None:
    # At least two runs with the verdict "ok": the module's earlier tests made some (each
    # ~20 s), this test makes the rest (all of them when it runs alone).
    for _ in range(max(0, 2 - ok_runs(mon))):
        code, summary, said = mon.monitor(mon.traffic("--rows", "250"))
        assert code == 0 and summary["status"] == "ok", said
    assert ok_runs(mon) >= 2
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
        assert all("ok" in s["tags"] or "drift" in s["tags"] for s in snapshots)
        # The dashboard draws the thresholds beside what they bound.
        status, board = call(port, "GET", f"/api/v2/dashboards/{project['id']}", key=None)
        assert status == 200
        series = {
            v["metric_labels"].get("name"): v["metric"]
            for p in board["panels"]
            for v in p["values"]
            if v["metric"].endswith("ModelyardThreshold")
        }
        assert set(series) == {"drift_share", "prediction_drift"}
        status, data = call(
            port,
            "POST",
            f"/api/v2/snapshots/{project['id']}/data_series_batch",
            {
                "series_filter": [
                    {
                        "tags": ["ok"],
                        "metadata": {},
                        "metric": "evidently:metric_v2:ModelyardThreshold",
                        "metric_labels": {"name": "drift_share"},
                    }
                ]
            },
            key=None,
        )
        assert status == 201, data  # Litestar answers a POST with 201
        (line,) = data["series"]
        assert len(line["values"]) >= 2 and set(line["values"]) == {0.3}  # monitor.drift_share
    finally:
        kill_tree(proc.pid)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stopping_monitor_ui_stops_the_ui_server(
    mon: Monitoring, sig: signal.Signals, code: int
) -> None:
    """SIGTERM (or Ctrl-C) to `modelyard monitor ui` stops `evidently ui` too: the port is
    free again and the wrapper exits 128 + the signal (issue 22: it kept listening)."""
    if not (mon.server.project.root / ".modelyard/monitoring/workspace").exists():
        code0, summary, said = mon.monitor(mon.traffic("--rows", "250"))
        assert code0 == 0 and summary["status"] == "ok", said
    port = free_port()
    with open(mon.base / f"ui-{code}.out", "w") as out:
        proc = subprocess.Popen(
            [str(BIN / "modelyard"), "monitor", "ui", "--port", str(port), *mon.params],
            cwd=mon.server.project.root,
            env=mon.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=interruptible,
        )
    try:
        deadline = time.monotonic() + 90
        while not listening(port):
            assert proc.poll() is None, (mon.base / f"ui-{code}.out").read_text()
            assert time.monotonic() < deadline, "the UI did not listen in 90 s"
            time.sleep(0.3)
        proc.send_signal(sig)  # the wrapper only
        exit_code = proc.wait(timeout=60)
        record_exit(["monitor", "ui"], exit_code)
        assert exit_code == code
        deadline = time.monotonic() + 10
        while listening(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not listening(port), "evidently ui still listens after its wrapper stopped"
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


def test_retention_keeps_the_newest_runs_and_their_snapshots(mon: Monitoring) -> None:
    """keep_runs=N, N+1 runs: the N newest run folders and their snapshots stay, the
    older ones (this test's first and earlier tests') go, folders and snapshots together."""
    project = mon.server.project
    keep = 1  # N+1 = 2 job runs (each ~20 s): the older goes, the newest stays
    out = project.root / ".modelyard/monitoring"
    window = mon.traffic("--rows", "220")
    project.set_params(monitor={"keep_runs": keep})
    try:
        made, growth = [], []
        for _ in range(keep + 1):
            before = du(out / "runs") + du(out / "workspace")
            code, summary, said = mon.monitor(window)
            assert code == 0 and summary["status"] == "ok", said
            made.append(summary)
            growth.append(du(out / "runs") + du(out / "workspace") - before)
    finally:
        project.set_params(monitor={"keep_runs": 200})
    runs = sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith("."))
    assert runs == [Path(s["folder"]).name for s in made[-keep:]]
    kept = {
        i
        for s in made[-keep:]
        for i in json.loads((Path(s["folder"]) / "snapshots.json").read_text())["snapshots"]
    }
    (stored,) = [p for p in (out / "workspace").iterdir() if (p / "snapshots").is_dir()]
    assert {p.stem for p in (stored / "snapshots").iterdir()} == kept
    one = du(Path(made[-1]["folder"]))
    snaps = sum(du(stored / "snapshots" / f"{i}.json") for i in kept) // keep
    print(
        f"\nper run: folder {one / 1e6:.1f} MB + snapshots {snaps / 1e6:.1f} MB; growth of "
        f"runs/ + workspace per run with keep_runs={keep}: "
        + ", ".join(f"{g / 1e6:+.1f} MB" for g in growth)
    )
