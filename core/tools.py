"""The command-line tools installed beside this interpreter (dvc, bentoml, mlflow, ...).

A venv's tools live next to its python. Running ``.venv/bin/modelyard`` without an
activated venv must still find them, and so must the commands DVC runs for each stage
(``modelyard train`` in dvc.yaml): ``env()`` puts this interpreter's folder first on PATH.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from core.errors import ConfigError, PortInUse


def bin_dir() -> Path:
    return Path(sys.executable).parent


def binary(name: str) -> str:
    """The path of tool ``name``: the one beside this interpreter, else the one on PATH."""
    here = bin_dir() / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(
            f"{name} not found beside {sys.executable} nor on PATH: run `make setup` "
            f"(or install {name})"
        )
    return found


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with this interpreter's folder first on PATH."""
    out = {**os.environ, **(extra or {})}
    path = out.get("PATH", "")
    first = str(bin_dir())
    if path.split(os.pathsep)[0] != first:
        out["PATH"] = os.pathsep.join([first, path]) if path else first
    return out


def check_port(host: str, port: int) -> None:
    """Raise PortInUse unless ``host:port`` can be bound now (port 0 always can)."""
    if port == 0:
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortInUse(
                f"cannot listen on {host}:{port} ({exc.strerror}): another process uses it. "
                "Stop it, or pick another port with --port."
            ) from exc
