"""`modelyard run`: the whole pipeline through `dvc repro`, then the idempotent register.

DVC cannot see the MLflow registry: on a fresh clone (or a fresh store) it may find
every stage up to date and skip ``register``. So ``run`` ends with the register step,
which adds the version only if this store lacks it. With ``push``, the stage outputs go
to the DVC remote first, and a failed push registers nothing.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core import tools
from core.errors import ConfigError, PipelineFailed
from pipelines import pointer, sources, tracking
from pipelines.config import Params

log = logging.getLogger(__name__)

PUSH_REMOTE = "modelyard-push"


@dataclass(frozen=True)
class Outcome:
    name: str
    version: str
    created: bool  # a new version in this store (False: it was already registered)
    alias: str
    alias_version: str | None  # where the alias points now


def check_inputs(params: Params, root: Path) -> None:
    """The files params name, before DVC runs anything: DVC's own error for a missing
    dependency is a bare ``[Errno 2]`` naming neither the key nor the fix."""
    missing = []
    suite = params.validate_.suite
    if not (root / suite).is_file():
        missing.append(
            f"validate.suite: {suite} does not exist. `modelyard init --source "
            f"{params.paths.sources}/FILE --target COLUMN` writes one from your data; or write "
            "your own (GX's JSON: data/expectations/wine.json is an example; "
            '{"expectations": []} checks nothing beyond params), or point validate.suite at '
            "an existing file"
        )
    source = params.ingest.source
    if not sources.is_bundled(source) and not (root / source).is_file():
        missing.append(
            f"ingest.source: {source} does not exist. Put your CSV or Parquet file under "
            f"{params.paths.sources}/ (and `dvc add` it), or use sklearn:<name>"
        )
    if missing:
        raise ConfigError("nothing was run:\n  - " + "\n  - ".join(missing))


def repro(root: Path, *, force: bool = False) -> None:
    """`dvc repro` in ``root``; the stages' commands find this venv's tools."""
    cmd = [tools.binary("dvc"), "repro", *(["--force"] if force else [])]
    code = subprocess.call(cmd, cwd=root, env=tools.env())
    if code != 0:
        raise PipelineFailed(
            f"dvc repro failed (exit {code}). The failing stage printed why above; fix it and "
            "run `modelyard run` again (DVC re-runs only what changed)."
        )


def push(root: Path, *, url: str | None) -> None:
    """`dvc push` the outputs, to ``url`` if given, else the repo's default remote."""
    dvc = tools.binary("dvc")
    remote: list[str] = []
    if url:
        subprocess.run(
            [dvc, "remote", "add", "--local", "--force", PUSH_REMOTE, url],
            cwd=root,
            check=True,
            capture_output=True,
            env=tools.env(),
        )
        remote = ["--remote", PUSH_REMOTE]
    if subprocess.call([dvc, "push", *remote], cwd=root, env=tools.env()) != 0:
        raise PipelineFailed(
            "dvc push failed; nothing was registered. Set --remote-url or DVC_REMOTE_URL "
            "(or `dvc remote add -d ...`), check its credentials, and run again."
        )


def run(
    params: Params,
    root: Path,
    *,
    force: bool = False,
    push_to: str | None = None,
    push_outputs: bool = False,
) -> Outcome:
    """repro, optionally push, then register (idempotent)."""
    from pipelines.stages import register
    from registry.client import Registry

    check_inputs(params, root)
    tracking.configure(root)
    registry = Registry(tracking.tracking_uri(root))
    name = params.register_.model_name
    before = {v.version for v in registry.versions(name)}
    pointer.refresh(registry, name, params.paths, root)  # a new champion re-runs evaluate
    repro(root, force=force)
    if push_outputs:
        push(root, url=push_to)
    logging.getLogger("pipelines.stages.register").setLevel(logging.WARNING)
    reg = register.run(params, root)
    now = registry.by_alias(name, params.register_.alias)
    return Outcome(
        name=reg.name,
        version=reg.version,
        created=reg.version not in before,
        alias=params.register_.alias,
        alias_version=now.version if now else None,
    )
