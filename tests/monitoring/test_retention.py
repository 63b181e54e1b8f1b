"""Retention of the drift job's runs (``monitoring.retention``), on fake times and real
folders: which runs go, that the current run always stays, and that folders which are no
run's (an atomic write's temporary folder, an operator's notes) are left alone. The
workspace side runs end to end in tests/monitoring/test_monitor.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitoring import retention
from monitoring.retention import Entry

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def entry(days_ago: float, name: str | None = None) -> Entry:
    at = NOW - timedelta(days=days_ago)
    return Entry(name or retention.run_name(at), at.timestamp())


def names(entries: list[Entry]) -> list[str]:
    return [e.name for e in entries]


def test_run_names_are_run_times() -> None:
    at = datetime(2026, 11, 26, 3, 15, 0, 123456, tzinfo=UTC)
    assert retention.run_name(at) == "20261126T031500.123456"
    assert retention.run_time("20261126T031500.123456") == at.timestamp()
    for other in (".20261126T031500.123456.x1y2", "notes", "20261126", "2026-11-26"):
        assert retention.run_time(other) is None


@pytest.mark.parametrize(
    ("ages", "keep_days", "keep_runs", "dropped"),
    [
        ([0.1, 1, 2, 3], 30, 200, []),  # young and few: all stay
        ([0.1, 1, 29.9, 30.1, 45], 30, 200, [30.1, 45]),  # older than keep_days
        ([0.1, 1, 2, 3, 4], 30, 3, [3, 4]),  # beyond the newest keep_runs
        ([0.1, 1, 40, 2], 30, 2, [2, 40]),  # both limits; order of discovery irrelevant
    ],
)
def test_select_by_age_and_count(
    ages: list[float], keep_days: float, keep_runs: int, dropped: list[float]
) -> None:
    entries = [entry(a) for a in ages]
    drop = retention.select(entries, now=NOW.timestamp(), keep_days=keep_days, keep_runs=keep_runs)
    assert sorted(names(drop)) == sorted(names([entry(a) for a in dropped]))


def test_the_current_run_counts_and_always_stays() -> None:
    entries = [entry(1), entry(2), entry(3)]
    # the run being made has no folder yet (not enough data): it still takes a place
    current = retention.run_name(NOW)
    drop = retention.select(
        entries, now=NOW.timestamp(), keep_days=30, keep_runs=2, current=current
    )
    assert names(drop) == names([entry(2), entry(3)])
    # a current run dated oddly (a clock step back) is kept all the same
    odd = entry(100)
    drop = retention.select(
        [*entries, odd], now=NOW.timestamp(), keep_days=30, keep_runs=1, current=odd.name
    )
    assert odd not in drop and len(drop) == 3


def make_runs(runs: Path, ages: list[float]) -> list[str]:
    made = []
    for age in ages:
        name = entry(age).name
        (runs / name).mkdir(parents=True)
        (runs / name / "summary.json").write_text("{}")
        made.append(name)
    return made


def test_prune_deletes_old_run_folders_and_leaves_the_rest(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    young, old = make_runs(runs, [0.5, 1.5]), make_runs(runs, [31, 60])
    (runs / f".{young[0]}.tmp123").mkdir()  # an atomic write under way
    (runs / "notes").mkdir()  # not a run
    (runs / "README.txt").write_text("mine")
    pruned = retention.prune(
        tmp_path, project="p", keep_days=30, keep_runs=200, now=NOW.timestamp()
    )
    assert pruned.runs == tuple(sorted(old)) and pruned.snapshots == 0 and pruned.kept == 2
    assert pruned.freed_bytes == 4  # two summary.json files of 2 bytes
    left = sorted(p.name for p in runs.iterdir())
    assert left == sorted([*young, f".{young[0]}.tmp123", "notes", "README.txt"])
    assert not (tmp_path / "workspace").exists()  # no workspace made by looking


def test_prune_with_no_runs_yet(tmp_path: Path) -> None:
    pruned = retention.prune(
        tmp_path, project="p", keep_days=1, keep_runs=1, now=NOW.timestamp(), current="x"
    )
    assert pruned == retention.Pruned((), 0, 1, 0)
