"""Real servers for the client and web app tests: a registered model served by
`modelyard serve` (a real `bentoml serve`), and `modelyard webapp` in front of it, each a
process tree on a free port, stopped as a tree."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import (
    BIN,
    PIPELINE,
    REPO,
    Project,
    copy_of,
    free_port,
    kill_tree,
    new_project,
)

API_KEY = "test-key-7d1f"
STAGES = PIPELINE


def registered(root: Path, kind: str, *, template: Path | None = None) -> Project:
    """A project whose model went through the whole pipeline and is registered:
    ``digits`` (the CNN, fast settings) is a copy of ``template`` (the session's
    tests.conftest.trained_template); ``wine`` (logistic regression) runs here."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if kind == "digits":
        assert template is not None, "digits is copied from the session's trained template"
        return copy_of(template, root)
    project = new_project(root, REPO / "pipelines/examples/wine.params.yaml")
    project.stages(*STAGES)
    return project


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(extra)
    return env


@dataclass
class Proc:
    """A server process tree: started with ``start``, ready when ``probe`` answers 200."""

    cmd: list[str]
    env: dict[str, str]
    out_path: Path
    probe: str = "/readyz"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        # A file, not a pipe: an unread pipe fills with access logs and stalls the server.
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [*self.cmd, "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.cmd[:2]} exited:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.probe, timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise AssertionError(f"{self.cmd[:2]} not ready in {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill_tree(self.proc.pid)
            self.proc.wait(timeout=20)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")


def api_server(project: Project, base: Path) -> Proc:
    """`modelyard serve` of the project's registered model, keys on, log in base/log."""
    base.mkdir(parents=True, exist_ok=True)
    env = _env(
        BENTOML_HOME=str(base / "bentoml"),
        MODELYARD_API_KEYS=API_KEY,
        MODELYARD_LOG_DIR=str(base / "log"),
    )
    cmd = [str(BIN / "modelyard"), "serve", "--params", str(project.params_path)]
    return Proc(cmd, env, base / "api.out", port=free_port())


def webapp_server(api_url: str, base: Path, **settings: str) -> Proc:
    """`modelyard webapp --api URL` with this suite's key and a generous rate limit."""
    base.mkdir(parents=True, exist_ok=True)
    env = _env(
        MODELYARD_API_KEY=API_KEY,
        MODELYARD_WEBAPP_SECRET="test-secret",
        MODELYARD_WEBAPP_RATE="6000",
        MODELYARD_WEBAPP_BURST="1000",
        **settings,
    )
    cmd = [str(BIN / "modelyard"), "webapp", "--api", api_url]
    return Proc(cmd, env, base / "webapp.out", port=free_port())


def chromium() -> str | None:
    """Debian's chromium (or $MODELYARD_CHROMIUM), if installed; else Google Chrome, which
    GitHub's Ubuntu runners carry (Ubuntu's own chromium is a snap)."""
    configured = os.environ.get("MODELYARD_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    for name in ("/usr/bin/chromium", "chromium", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class LiveApi:
    """A registered model served for real: the project it came from, the server, its log."""

    project: Project
    server: Proc
    log_dir: Path

    @property
    def url(self) -> str:
        return self.server.url


def serve_model(project: Project, base: Path) -> LiveApi:
    server = api_server(project, base)
    server.start()
    return LiveApi(project, server, base / "log")


# -- a gateway in front of the real API (as an Ingress is): errors first, then it forwards ----


class Gateway:
    """Answers ``status`` with ``body`` to the first ``fail`` requests, then forwards to
    the real API (its ``X-API-Key`` and ``Authorization`` headers too)."""

    def __init__(
        self,
        upstream: str,
        fail: int,
        status: int = 503,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.seen = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                outer.seen += 1
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                if outer.seen <= fail:
                    code, reply, ctype = status, body, "text/html"
                else:
                    r = httpx.request(
                        self.command,
                        upstream + self.path,
                        content=data,
                        headers={
                            "X-API-Key": self.headers.get("X-API-Key", ""),
                            "Authorization": self.headers.get("Authorization", ""),
                            "Content-Type": "application/json",
                        },
                    )
                    code, reply, ctype = r.status_code, r.content, "application/json"
                self.send_response(code)
                for name, value in (headers or {}).items() if outer.seen <= fail else ():
                    self.send_header(name, value)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = _handle

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
