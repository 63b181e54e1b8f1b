"""A quick restart of `registry server`: a PostgreSQL still stopping in the data folder
(its shutdown checkpoint can take seconds on a busy machine) is waited for, not taken for a
running server that is not ready (pgserver's refusal failed a restart in a full suite run)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from registry.server import _wait_while_in_transition


def pid_file(folder: Path, status: str) -> None:
    lines = ["4242", str(folder), "1765000000", "5432", "/tmp", "", "  5432001  0", status]
    (folder / "postmaster.pid").write_text("\n".join(lines) + "\n")


def test_a_stopping_server_is_waited_for_until_it_is_gone(tmp_path: Path) -> None:
    pid_file(tmp_path, "stopping")
    threading.Timer(0.6, (tmp_path / "postmaster.pid").unlink).start()
    started = time.monotonic()
    _wait_while_in_transition(tmp_path, timeout=10)
    assert time.monotonic() - started >= 0.5
    assert not (tmp_path / "postmaster.pid").exists()


def test_a_ready_server_or_none_is_not_waited_for(tmp_path: Path) -> None:
    started = time.monotonic()
    _wait_while_in_transition(tmp_path, timeout=10)  # no server
    pid_file(tmp_path, "ready")
    _wait_while_in_transition(tmp_path, timeout=10)
    assert time.monotonic() - started < 0.5


def test_the_wait_is_bounded(tmp_path: Path) -> None:
    pid_file(tmp_path, "starting")
    started = time.monotonic()
    _wait_while_in_transition(tmp_path, timeout=0.6)
    assert 0.5 <= time.monotonic() - started < 5
