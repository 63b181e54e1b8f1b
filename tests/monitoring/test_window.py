"""`monitor run --align`: scheduled runs read windows that touch, never overlap and leave no
gap, however late each starts (a GitHub cron runs minutes late, a CronJob may be skipped),
and a missed run's hours are read by the next one (the job remembers, in MLflow, where the
last judged window ended)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.errors import MonitoringError
from modelyard.app import app
from monitoring.driftrun import last_checked_until
from monitoring.window import aligned, contiguous
from tests.conftest import REPO, record_exit


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_an_aligned_window_is_the_last_whole_period() -> None:
    assert aligned("1h", at("2026-12-08T10:17:00")) == (
        "2026-12-08T09:00:00+00:00",
        "2026-12-08T10:00:00+00:00",
    )
    # A late start within the period reads the same window; the next period's run starts
    # where this one ended.
    assert aligned("1h", at("2026-12-08T10:59:59")) == aligned("1h", at("2026-12-08T10:00:00"))
    assert (
        aligned("1h", at("2026-12-08T11:05:00"))[0] == aligned("1h", at("2026-12-08T10:17:00"))[1]
    )
    assert aligned("1d", at("2026-12-08T00:30:00")) == (
        "2026-12-07T00:00:00+00:00",
        "2026-12-08T00:00:00+00:00",
    )
    assert aligned("30m", at("2026-12-08T10:45:00")) == (
        "2026-12-08T10:00:00+00:00",
        "2026-12-08T10:30:00+00:00",
    )


@pytest.mark.parametrize("since", ["2026-12-08T09:00", "0h", "soon"])
def test_only_a_duration_aligns(since: str) -> None:
    with pytest.raises(MonitoringError, match="--align"):
        aligned(since, at("2026-12-08T10:17:00"))


def test_align_with_until_is_a_2_that_says_why() -> None:
    args = ["monitor", "run", "--align", "--until", "1h", "--params", str(REPO / "params.yaml")]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    record_exit(args[:2], result.exit_code)
    assert result.exit_code == 2, result.output
    assert "--align sets the window's end itself" in " ".join(result.output.split())


def test_a_missed_run_is_read_by_the_next_one_within_the_cap() -> None:
    hour, start = 3600.0, at("2026-12-08T09:00:00")
    assert contiguous(start, None, 24 * hour) == start  # the first run
    assert contiguous(start, start, 24 * hour) == start  # the last run ended here
    assert contiguous(start, start - 2 * hour, 24 * hour) == start - 2 * hour  # two missed
    assert contiguous(start, start - 48 * hour, 24 * hour) == start - 24 * hour  # capped
    assert contiguous(start, start + hour, 24 * hour) == start  # never forward


def test_the_last_judged_window_is_read_from_the_drift_runs(
    e2e_tier: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real MLflow store (the project's embedded one): the latest window end among the
    finished drift runs, whatever order they ran in; none before the first."""
    import mlflow

    from pipelines import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment = "modelyard-monitoring"
    assert last_checked_until(experiment, tmp_path) is None
    tracking.configure(tmp_path)
    windows = [
        ("2026-12-08T08:00:00+00:00", "2026-12-08T09:00:00+00:00", "FINISHED"),
        ("2026-12-08T06:00:00+00:00", "2026-12-08T07:00:00+00:00", "FINISHED"),  # a manual run
        ("2026-12-08T09:00:00+00:00", "2026-12-08T10:00:00+00:00", "FAILED"),  # not judged
    ]
    for since, until, status in windows:
        with tracking.new_run(experiment, tmp_path, run_name="ok"):
            tracking.set_tags({"status": "ok", "window": f"{since} .. {until}"})
            if status == "FAILED":
                mlflow.end_run(status="FAILED")
    assert last_checked_until(experiment, tmp_path) == at("2026-12-08T09:00:00")
