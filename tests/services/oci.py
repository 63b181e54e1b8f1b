"""The real tools the image tests use (buildah, Debian's docker-registry, mmdebstrap):
what is missing, buildah's own storage, and plain HTTP to a registry."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TOOLS = ("buildah", "docker-registry", "mmdebstrap")


def missing_tools() -> str | None:
    """Why the image tests cannot run here, or None."""
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return (
            f"{', '.join(absent)} not installed: `make system-tools` installs them "
            "(apt-get, as root, on Debian/Ubuntu)"
        )
    if os.geteuid() != 0:
        return "buildah (chroot isolation, vfs storage) and mmdebstrap run as root here"
    return None


def http(
    url: str, *, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def wait_for(
    url: str, proc: subprocess.Popen[bytes] | None, what: str, seconds: int, log: Path | None = None
) -> None:
    for _ in range(seconds * 4):
        if proc is not None and proc.poll() is not None:
            said = log.read_text()[-3000:] if log else ""
            raise AssertionError(
                f"{what} exited with {proc.returncode} before it was ready\n{said}"
            )
        with contextlib.suppress(OSError):
            if http(url)[0] == 200:
                return
        time.sleep(0.25)
    raise AssertionError(f"{what} not ready at {url} after {seconds} s")


def storage_env(root: Path, driver: str) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "{driver}"\ngraphroot = "{root / "storage"}"\n'
        f'runroot = "{root / "run"}"\n'
    )
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "BUILDAH_ISOLATION": "chroot"}
