"""`monitor run --align`: scheduled runs read windows that touch, never overlap and leave no
gap, however late each starts (a GitHub cron runs minutes late, a CronJob may be skipped)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from core.errors import MonitoringError
from modelyard.app import app
from monitoring.window import aligned
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
