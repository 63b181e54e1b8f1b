"""Retention of the drift job's runs: ``monitor.output/runs/`` and the workspace's snapshots.

Every ``monitor run`` leaves a folder under ``runs/`` (report.html, its classification
page, drift_scores.png, snapshots.json, summary.json; a not-enough-data run leaves
summary.json only) and adds its snapshots to the Evidently workspace. ``prune``, called
at the end of each run, keeps the runs of the last ``monitor.keep_days`` days, at most the
newest ``monitor.keep_runs`` of them, and deletes the rest: a run's folder and its
snapshots together (the folder's ``snapshots.json`` names them; they are deleted through
Evidently's workspace API, ``Workspace.delete_run``).

A run is dated by its folder's name (the UTC time it started: ``20261126T031500.123456``).
Snapshots no folder names (left by runs before snapshots.json existed, or by a run that
failed between adding them and writing its folder) are dated by their ``run`` metadata,
else by their own timestamp, and take part in the same selection (``sweep=True``).
Folders whose name is no run time (hidden temporary folders of an atomic write, anything
an operator put there) are left alone.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from core import files
from monitoring import drift

log = logging.getLogger(__name__)

RUN_NAME = "%Y%m%dT%H%M%S.%f"  # a run folder's name: when it started, UTC
SNAPSHOTS_FILE = "snapshots.json"  # in a run folder: {"project": id, "snapshots": [ids]}
DAY_S = 86400


@dataclass(frozen=True)
class Entry:
    """One run to keep or delete: a run folder (``folder``) and the snapshots it names,
    or snapshots no folder names (``folder`` None)."""

    name: str  # the folder's name, or the run/snapshot the orphans belong to
    at: float  # epoch seconds
    folder: Path | None = None
    snapshots: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pruned:
    """What ``prune`` deleted and kept."""

    runs: tuple[str, ...]  # run folders deleted (names)
    snapshots: int  # workspace snapshots deleted
    kept: int  # runs kept (the current one included)
    freed_bytes: int  # the deleted folders' size on disk (snapshots not counted)


def run_name(at: datetime) -> str:
    """The folder name of a run started at ``at`` (UTC)."""
    return at.astimezone(UTC).strftime(RUN_NAME)


def run_time(name: str) -> float | None:
    """When the run named ``name`` started (epoch seconds), None if it is no run's name."""
    try:
        return datetime.strptime(name, RUN_NAME).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def select(
    entries: Sequence[Entry],
    *,
    now: float,
    keep_days: float,
    keep_runs: int,
    current: str | None = None,
) -> list[Entry]:
    """The entries to delete: older than ``keep_days``, or beyond the newest
    ``keep_runs``. ``current`` (the run being made) is always kept and counts as one."""
    newest = sorted(entries, key=lambda e: (e.at, e.name), reverse=True)
    cutoff = now - keep_days * DAY_S
    drop = []
    kept = 1 if current is not None else 0
    for entry in newest:
        if entry.name == current:
            continue
        if entry.at >= cutoff and kept < keep_runs:
            kept += 1
        else:
            drop.append(entry)
    return drop


def _folder_entries(runs: Path) -> list[Entry]:
    out: list[Entry] = []
    if not runs.is_dir():
        return out
    for folder in runs.iterdir():
        at = run_time(folder.name)
        if at is None or not folder.is_dir():
            continue
        named = folder / SNAPSHOTS_FILE
        snapshots = tuple(files.read_json(named)["snapshots"]) if named.exists() else ()
        out.append(Entry(folder.name, at, folder, snapshots))
    return out


def _orphan_entries(workspace: Path, project: str, claimed: set[str]) -> list[Entry]:
    orphans = [i for i in drift.snapshot_ids(workspace, project) if i not in claimed]
    groups: dict[str, list[drift.SnapshotRun]] = {}
    for snap in drift.snapshot_runs(workspace, project, orphans):
        groups.setdefault(snap.run or snap.id, []).append(snap)
    out = []
    for name, snaps in groups.items():
        at = run_time(name)
        if at is None:
            at = min(
                s.timestamp.replace(tzinfo=s.timestamp.tzinfo or UTC) for s in snaps
            ).timestamp()
        out.append(Entry(name, at, None, tuple(s.id for s in snaps)))
    return out


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def prune(
    output: Path,
    *,
    project: str,
    keep_days: float,
    keep_runs: int,
    now: float,
    current: str | None = None,
    sweep: bool = True,
) -> Pruned:
    """Delete the runs ``select`` drops under ``output`` (``monitor.output``): their
    snapshots first (so a failure leaves the folder, and the next run retries), then the
    folders. ``sweep``: also date and select snapshots no folder names (reads each one
    and imports Evidently: the not-enough-data path passes False and touches the
    workspace only when a deleted folder names snapshots)."""
    workspace = output / "workspace"
    entries = _folder_entries(output / "runs")
    if sweep and workspace.is_dir():
        claimed = {s for e in entries for s in e.snapshots}
        entries += _orphan_entries(workspace, project, claimed)
    drop = select(entries, now=now, keep_days=keep_days, keep_runs=keep_runs, current=current)
    ids = [s for e in drop for s in e.snapshots]
    deleted = drift.delete_snapshots(workspace, project, ids) if ids else 0
    freed = 0
    for entry in drop:
        if entry.folder is not None:
            freed += _size(entry.folder)
            shutil.rmtree(entry.folder)
    runs = tuple(sorted(e.name for e in drop if e.folder is not None))
    pending = current is not None and all(e.name != current for e in entries)
    pruned = Pruned(runs, deleted, len(entries) - len(drop) + pending, freed)
    if drop:
        log.info(
            "retention (monitor.keep_days %g, keep_runs %d): deleted %d run folders (%.1f MB) "
            "and %d workspace snapshots",
            keep_days,
            keep_runs,
            len(runs),
            freed / 1e6,
            deleted,
        )
    return pruned
