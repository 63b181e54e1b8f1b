"""Build the web app's Bento: ``modelyard webapp build``.

The Bento is ``modelyard-webapp:<hash of its files>``, so it is rebuilt only when the web
app's code, templates, static files or requirements change. It holds no model: one web app
image serves whichever model version the API runs. Build environment only: the web app
itself never imports this module.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core import tools
from core.errors import DeployError

log = logging.getLogger(__name__)

NAME = "modelyard-webapp"
BENTOFILE = "services/webapp/bentofile.yaml"


@dataclass(frozen=True)
class Built:
    bento_tag: str
    created: bool


def code_root() -> Path:
    """The folder holding the ``services`` package: the build context."""
    return Path(__file__).resolve().parents[2]


def files(root: Path) -> list[Path]:
    """Every file the Bento carries, in a stable order (what its version hashes)."""
    webapp = root / "services" / "webapp"
    found = [
        root / "services/__init__.py",
        root / "services/client.py",
        root / "services/image-slim.sh",  # the image's docker.setup_script
    ]
    for pattern in ("*.py", "templates/*.html", "static/*", "bentofile.yaml", "requirements.txt"):
        found += sorted(p for p in webapp.glob(pattern) if p.is_file())
    return found


def build() -> Built:

    root = code_root()
    digest = hashlib.sha256()
    for path in files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    tag = f"{NAME}:{digest.hexdigest()[:12]}"
    if _exists(tag):
        log.info("Bento %s exists; nothing to build", tag)
        return Built(tag, False)
    cmd = [
        tools.binary("bentoml"),
        "build",
        "-f",
        BENTOFILE,
        "--name",
        NAME,
        "--version",
        tag.split(":")[1],
        ".",
    ]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=tools.env())
    if proc.returncode != 0:
        raise DeployError(f"bentoml build of the web app failed:\n{proc.stdout}\n{proc.stderr}")
    return Built(tag, True)


def _exists(tag: str) -> bool:
    """Whether the BentoML store holds ``tag`` (only NotFound means it does not)."""
    import bentoml

    try:
        bentoml.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True
