"""A server run in the foreground by a wrapper command (`modelyard webapp`, `modelyard
monitor ui`): Ctrl-C or SIGTERM to the wrapper stops the server and every process it
started, then the wrapper exits 130 (SIGINT) or 143 (SIGTERM), as a shell reports them.

The server runs in its own session, so a terminal's Ctrl-C reaches it once, through the
wrapper, and servers whose workers start sessions of their own (bentoml, evidently's
uvicorn) are collected as a process tree, not a process group.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_foreground(
    cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Run ``cmd`` until it exits (its exit code) or the wrapper is told to stop
    (128 + the signal, after the whole tree is gone)."""
    proc = subprocess.Popen(
        list(cmd), env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True
    )
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        if not received:
            received.append(signum)
            stop_tree(proc.pid)

    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS} if main else {}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + received[0] if received else code


def stop_tree(pid: int, *, timeout: float = 15) -> None:
    """SIGTERM ``pid`` and every descendant; SIGKILL what outlives ``timeout`` seconds."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # gone already: nothing to stop
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
