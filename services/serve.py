"""Run a built Bento with `bentoml serve`, and give up at once if it will not start.

`bentoml serve` restarts a worker that dies during startup, every few seconds, forever:
a service that refuses to start (a tampered model, ``MODELYARD_API_KEYS`` set but empty)
would leave `modelyard serve` running and serving nothing. ``run`` watches the workers
until the service is ready; if one exits before that, it stops the whole process tree
and raises ``DeployError`` with the service's own reason. Once ready, it waits for
`bentoml serve` to end and returns its exit code.

This module runs where the CLI runs; the service never imports it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO

import httpx
import psutil

from core import tools
from core.errors import DeployError

log = logging.getLogger(__name__)

WORKER = "_bentoml_impl.worker.service"  # BentoML's worker module, in each worker's argv
REFUSAL = "refusing to start:"  # how services.service.StartupRefused begins


def run(
    bento_tag: str,
    *,
    host: str,
    port: int,
    env: Mapping[str, str],
    out: IO[str] | None = None,
    poll_seconds: float = 0.25,
) -> int:
    """Serve ``bento_tag`` on ``host:port`` until `bentoml serve` exits; its exit code.

    Raises DeployError, after stopping every process it started, if a worker exits
    before ``/readyz`` answers 200. `bentoml serve`'s output goes to ``out`` (stdout).
    SIGINT and SIGTERM are passed on to `bentoml serve`, which stops its workers.
    """
    out = out or sys.stdout
    cmd = [tools.binary("bentoml"), "serve", bento_tag, "--host", host, "--port", str(port)]
    # Its own session: a Ctrl+C reaches it once, forwarded, not twice.
    proc = subprocess.Popen(
        cmd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=200)
    reader = threading.Thread(target=_copy, args=(proc.stdout, out, tail), daemon=True)
    reader.start()
    with _forward_signals(proc):
        started = _wait_ready(proc, _probe_url(host, port), poll_seconds)
        if started == "refused":
            _stop_tree(proc)
        code = proc.wait()
    reader.join(timeout=5)
    if started == "refused":
        raise DeployError(_reason(list(tail)))
    return code


def _wait_ready(proc: subprocess.Popen[str], url: str, poll_seconds: float) -> str:
    """ "ready" once /readyz answers 200, "refused" if a worker exited before that,
    "exited" if `bentoml serve` itself did."""
    seen: set[int] = set()
    while proc.poll() is None:
        alive = _workers(proc.pid)
        if seen - alive:
            return "refused"
        seen |= alive
        if alive and _ready(url):
            log.info("the service is ready at %s", url.removesuffix("/readyz"))
            return "ready"
        time.sleep(poll_seconds)
    return "exited"


def _workers(pid: int) -> set[int]:
    """The pids of BentoML's live HTTP workers under ``pid``."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):  # gone: not alive
            if child.status() != psutil.STATUS_ZOMBIE and WORKER in child.cmdline():
                found.add(child.pid)
    return found


def _probe_url(host: str, port: int) -> str:
    local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host)
    if local is None:
        local = f"[{host}]" if ":" in host else host
    return f"http://{local}:{port}/readyz"


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:  # not listening yet, or busy starting
        return False


def _copy(src: IO[str] | None, dst: IO[str], tail: collections.deque[str]) -> None:
    if src is None:
        return
    for line in src:
        tail.append(line)
        dst.write(line)
        dst.flush()


def _reason(lines: list[str]) -> str:
    for line in reversed(lines):
        if REFUSAL in line:
            reason = line.split(REFUSAL, 1)[1].strip()
            return f"the service refused to start: {reason}"
    last = "".join(lines[-20:]).rstrip()
    return f"a worker exited before the service was ready; its last output:\n{last}"


def _stop_tree(proc: subprocess.Popen[str]) -> None:
    """Stop `bentoml serve` and every worker (they run in their own sessions, so the
    tree is collected before its root goes)."""
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait()


@contextlib.contextmanager
def _forward_signals(proc: subprocess.Popen[str]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
