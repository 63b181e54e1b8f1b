"""Expensive things the suite pays for once: trained projects that tests copy.

A template is built once per test session, even under pytest-xdist: the first worker that
needs it builds it under a file lock in the session's shared temp folder, the others wait
and reuse it. Tests never touch a template; each takes its own copy (``copy_project``),
which is a project of its own: the copy's MLflow store names the copy's own folder as its
artifact root, so runs, versions and artifacts made in the copy stay in the copy.

Templates (each the same pipeline a test used to run itself, with the same settings):

- ``digits``: tests.conftest.new_project + FAST_TRAIN, every stage of PIPELINE in-process
  (digits-classifier v1 registered, @challenger).
- ``digits-evaluated``: the same training up to evaluate, before register (a snapshot
  taken on the way to ``digits``), for tests that register themselves or change optimize.
- ``repo``: a git clone of this repository (tests.conftest.git_copy) with FAST_OPTIMIZE
  and the loop's monitor/evaluate settings committed, after `modelyard run` (`dvc repro`
  in a subprocess, the shipped 60-epoch training) with no venv on PATH.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

STORE_DB = Path(".modelyard/mlflow.db")


def shared(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``name``, built by ``build(folder)`` once per session (across xdist
    workers); a failed build leaves nothing behind, so the next asker sees the error too."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' basetemps share this parent
    root = base / "shared"
    root.mkdir(exist_ok=True)
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            try:
                build(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            done.touch()
    return folder


def copy_project(src: Path, dest: Path) -> Path:
    """A copy of the project (or git clone) ``src`` at ``dest`` that is a project of its own.

    Files are copied as they are (git, DVC cache, MLflow store, reports); in the MLflow
    store every path naming ``src`` is rewritten to name ``dest``, so the copy reads and
    writes its own artifacts."""
    shutil.copytree(src, dest, symlinks=True)
    db = dest / STORE_DB
    if db.exists():
        rewrite_paths(db, str(src.resolve()), str(dest.resolve()))
    return dest


def rewrite_paths(db: Path, old: str, new: str) -> int:
    """Replace ``old`` with ``new`` in every text column of the SQLite database ``db``;
    the number of cells changed."""
    changed = 0
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
                name, kind = column[1], (column[2] or "").upper()
                if not any(t in kind for t in ("CHAR", "TEXT", "CLOB")):
                    continue
                cursor = conn.execute(
                    f'UPDATE "{table}" SET "{name}" = replace("{name}", ?, ?) '
                    f'WHERE instr("{name}", ?) > 0',
                    (old, new, old),
                )
                changed += cursor.rowcount
    conn.close()
    return changed
