"""The drift job's promises, through `modelyard monitor run` (in process, Typer's
CliRunner) on windows written with the service's own log writer, against the trained
project's real MLflow store and real Evidently:

- a crash is never a verdict: records that do not fit the model, an Evidently error or
  any unexpected exception exit 2 with a message, and write no summary; Ctrl-C exits 130;
- only drift exits 1; an unreachable alert webhook leaves it drift, is recorded as
  failed with its reason, and retraining still runs;
- summary.json (the run's and the latest) is written after the alert and the retrain and
  records both; the alert carries the retrain decision (no labels: nothing retrained); a
  failed retrain (here its harvest) exits 2 and is recorded too;
- `--help` shows the exit-code table.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import BIN, FakeGitHub, Project, free_port, interruptible, kill_tree
from tests.monitoring.conftest import MODEL, Recorder, split_rows, write_log

pytestmark = pytest.mark.slow


class Job:
    """`modelyard monitor run` on one log folder of the trained project."""

    def __init__(self, project: Project, log_dir: Path) -> None:
        self.project, self.log_dir = project, log_dir
        self.output = project.root / ".modelyard/monitoring"
        self.model = f"{MODEL}/{project.registry().versions(MODEL)[-1].version}"

    def write(self, features: list[list[Any]], predictions: list[Any]) -> None:
        write_log(self.log_dir, features, predictions, self.model)

    def run(self, *args: str, params: Path | None = None) -> tuple[int, str]:
        from modelyard.app import app

        result = CliRunner().invoke(
            app,
            [
                "monitor",
                "run",
                "--log-dir",
                str(self.log_dir),
                "--since",
                "1h",
                *args,
                "--params",
                str(params or self.project.params_path),
            ],
        )
        return result.exit_code, " ".join(result.output.split())

    def runs(self) -> set[str]:
        return {p.name for p in (self.output / "runs").glob("*")}

    def latest(self) -> dict[str, Any]:
        return dict(json.loads((self.output / "summary.json").read_text()))


@pytest.fixture
def job(trained: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Job]:
    for name in ("MODELYARD_ALERT_WEBHOOK_URL", "GITHUB_REPOSITORY", "GITHUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield Job(trained, tmp_path / "log")


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGitHub]:
    fake = FakeGitHub()
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    monkeypatch.setenv("GITHUB_TOKEN", "t0k")
    monkeypatch.setenv("GITHUB_API_URL", fake.url)
    yield fake
    fake.close()


def dead_url(path: str = "") -> str:
    return f"http://127.0.0.1:{free_port()}{path}"


# -- a crash is not a verdict ---------------------------------------------------------------------


def test_records_of_the_wrong_width_exit_2_and_write_no_verdict(job: Job) -> None:
    job.write([[1.0] * 10] * 300, [0] * 300)
    before = job.runs()

    code, out = job.run()

    assert code == 2, out
    assert "monitor failed: only 0 of 300 sampled predictions can be compared" in out
    assert "300 have 10 features (the reference has 64)" in out
    assert job.runs() == before  # no report, no summary: there is no verdict


def test_null_features_exit_2(job: Job) -> None:
    features, labels = split_rows(job.project, 300)
    for row in features:
        row[5] = None  # the log holds what was written; the service would never
    job.write(features, labels)

    code, out = job.run()

    assert code == 2, out
    assert "300 have null or non-numeric features" in out


def test_a_few_unusable_records_are_left_out_and_counted(job: Job) -> None:
    features, labels = split_rows(job.project, 300)
    features[:20] = [[1.0] * 10] * 20
    features[20:30] = [[*row[:-1], "7"] for row in features[20:30]]
    job.write(features, labels)

    code, out = job.run()

    assert code == 0, out
    summary = job.latest()
    assert summary["status"] == "ok" and summary["rows"] == 300
    assert summary["unusable"] == {"wrong_width": 20, "not_numeric": 10}


def test_an_evidently_error_exits_2(job: Job) -> None:
    features, labels = split_rows(job.project, 300)
    job.write(features, labels)
    params = job.project.params()
    params["monitor"]["method"] = "no-such-test"  # Evidently knows no such stattest
    bad = job.project.root / "params-bad-method.yaml"
    bad.write_text(yaml.safe_dump(params))
    before = job.runs()

    code, out = job.run(params=bad)

    assert code == 2, out
    assert "monitor failed: Evidently could not compute the drift report" in out
    assert "StatTestNotFoundError: No stattest found of name no-such-test" in out
    assert job.runs() == before


def test_an_unexpected_crash_exits_2_not_1(job: Job) -> None:
    features, labels = split_rows(job.project, 300)
    job.write(features, labels)
    assert job.run()[0] == 0  # builds the reference cache
    cache = job.output / "reference" / f"{job.model.replace('/', '-v')}.parquet"
    saved = cache.read_bytes()
    cache.write_bytes(b"not parquet")
    try:
        code, out = job.run()
    finally:
        cache.write_bytes(saved)

    assert code == 2, out
    assert "monitor failed: unexpected ArrowInvalid" in out and "-v monitor run" in out


def test_an_interrupted_job_exits_130_not_1(job: Job) -> None:
    """Ctrl-C is the shell's 130 (Typer's), never 1: that would read as drift."""
    job.log_dir.mkdir(parents=True)
    fifo = job.log_dir / "inference-20990101T000000-1-0001.jsonl"
    os.mkfifo(fifo)  # reading it blocks until a writer writes: the job stays mid-read
    before = job.runs()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [str(BIN / "modelyard"), "monitor", "run", "--log-dir", str(job.log_dir)]
    proc = subprocess.Popen(
        [*cmd, "--since", "1h", "--params", str(job.project.params_path)],
        cwd=job.project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    writer = None
    try:
        deadline = time.monotonic() + 120
        while writer is None:  # until the job has the log open for reading
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        # The kernel may hand the signal to one of the job's native threads (ONNX Runtime,
        # OpenMP): then the main thread's read() is not interrupted, and Python acts on the
        # signal only when that read returns. A real log file always returns; the FIFO
        # returns when written to, so write a space (no line) until the job has stopped.
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(BrokenPipeError):  # the job closed the log: it is done
                os.write(writer, b" ")
            time.sleep(0.2)
        out, err = proc.communicate(timeout=10)
    finally:
        if writer is not None:
            os.close(writer)
        kill_tree(proc.pid)
    assert proc.returncode == 130, out + err
    assert job.runs() == before  # no verdict, no report


# -- drift, the alert, the retrain, and the summary written after them ----------------------------


def test_an_unreachable_alert_webhook_keeps_the_verdict_and_the_retrain(
    job: Job, github: FakeGitHub
) -> None:
    features, labels = split_rows(job.project, 400, drift="occlude")
    job.write(features, labels)
    webhook = dead_url("/hooks/T000/s3cr3t-token")

    code, out = job.run("--alert-url", webhook)

    assert code == 1, out  # still drift, not an error
    summary = job.latest()
    assert summary["status"] == "drift"
    assert summary["alert"]["status"] == "failed"
    assert "cannot reach the alert webhook" in summary["alert"]["detail"]
    assert "alert failed (the verdict stands): cannot reach the alert webhook" in out
    assert "s3cr3t" not in json.dumps(summary) and "s3cr3t" not in out  # the URL's secret
    # The retrain step still ran: it harvested, found no label, and dispatched nothing.
    assert summary["retrain"]["status"] == "no-new-labels"
    assert summary["labels"]["count"] == 0
    assert github.dispatches("retrain") == []
    # The run's own summary.json is the latest, both written after the two steps.
    assert json.loads((Path(summary["folder"]) / "summary.json").read_text()) == summary
    assert {"alert", "retrain"} <= set(summary["seconds"])


def test_the_alert_carries_the_verdict_and_the_summary_the_outcomes(
    job: Job, github: FakeGitHub
) -> None:
    features, labels = split_rows(job.project, 400, drift="occlude")
    job.write(features, labels)
    alerts = Recorder()
    try:
        code, out = job.run("--alert-url", alerts.url)
    finally:
        alerts.close()

    assert code == 1, out
    (payload,) = alerts.payloads
    summary = job.latest()
    assert payload["status"] == "drift" and payload["drifted_columns"] == summary["drifted_columns"]
    assert "alert" not in payload  # not known when it was sent
    # What the job does about the drift, decided (harvest, new labels) before the alert.
    assert payload["retrain"] == {"status": "no-new-labels", "detail": summary["retrain"]["detail"]}
    assert "0 new labels since v1: collect feedback" in payload["retrain"]["detail"]
    assert summary["alert"] == {"status": "sent", "detail": "HTTP 200", "version": None}
    assert github.dispatches("retrain") == []


def test_a_failed_retrain_exits_2_and_is_recorded(job: Job) -> None:
    # The harvest before the retrain cannot read the training contract (validate.suite).
    project = job.project
    (project.root / "data/expectations/broken.json").write_text("{not json")
    params = yaml.safe_load(project.params_path.read_text())
    params["validate"]["suite"] = "data/expectations/broken.json"
    broken = project.root / "params-broken-suite.yaml"
    broken.write_text(yaml.safe_dump(params))
    features, labels = split_rows(job.project, 400, drift="occlude")
    job.write(features, labels)

    code, out = job.run(params=broken)

    assert code == 2, out
    summary = job.latest()
    assert summary["status"] == "drift"  # the verdict is kept ...
    assert summary["retrain"]["status"] == "failed"  # ... and so is why the job failed
    assert "harvesting the feedback labels failed" in summary["retrain"]["detail"]
    assert "retrain FAILED: harvesting the feedback labels failed" in out
    assert summary["alert"]["status"] == "skipped"  # no webhook configured


def test_no_retrain_is_recorded_as_skipped(job: Job) -> None:
    features, labels = split_rows(job.project, 400, drift="occlude")
    job.write(features, labels)

    code, out = job.run("--no-retrain")

    assert code == 1, out
    assert job.latest()["retrain"] == {
        "status": "skipped",
        "detail": "--no-retrain",
        "version": None,
    }


def test_an_aligned_run_starts_where_the_last_judged_window_ended(
    job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--align`: the last whole hour, moved back to the end of the last window a drift run
    judged (recorded in MLflow) when runs were missed, so those hours are read too."""
    from datetime import UTC, datetime

    from pipelines import tracking

    hour = 3600
    end = time.time() // hour * hour
    last = end - 3 * hour  # three hourly runs missed
    iso = [datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") for t in (last, end)]
    # Its own drift-run experiment: the project is shared with the module's other tests,
    # whose runs judged windows up to their "now".
    params = job.project.root / "aligned.params.yaml"
    params.write_text(job.project.params_path.read_text())
    job.project.set_params(tracking={"experiment": "aligned"})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure(job.project.root)
    with tracking.new_run("aligned-monitoring", job.project.root, run_name="ok"):
        tracking.set_tags({"status": "ok", "window": f"{iso[0]} .. 2000-01-01T00:00:00+00:00"})
    with tracking.new_run("aligned-monitoring", job.project.root, run_name="ok"):
        tracking.set_tags({"status": "ok", "window": f"2000-01-01T00:00:00+00:00 .. {iso[0]}"})
    job.write(*split_rows(job.project, 50))

    try:
        code, out = job.run("--align", "--no-retrain")
    finally:
        job.project.params_path.write_text(params.read_text())

    assert code == 0, out
    assert f"the window starts at {iso[0]}, where the last judged window ended" in out
    window = job.latest()["window"]
    # The end is the last whole hour when the job ran (this one, or the next one when the
    # test crossed an hour boundary); the start is where the last judged window ended.
    assert window["since"] == iso[0] and window["until"] >= iso[1], window


def test_help_shows_the_exit_code_table() -> None:
    from modelyard.app import app
    from modelyard.monitor import MONITOR_EXIT_CODES

    result = CliRunner().invoke(app, ["monitor", "run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    shown = " ".join(result.output.split())
    for entry in MONITOR_EXIT_CODES.split("\n\n"):
        assert " ".join(entry.split()) in shown
    assert "0 no drift" in shown and "1 drift: the only verdict" in shown
    assert "2 the job failed" in shown and "retraining failed" in shown
    assert "130 interrupted" in shown
