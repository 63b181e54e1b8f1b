"""champion: who the registry's ``champion`` is now, as a small pointer file.

DVC cannot see the registry, yet ``evaluate`` compares the challenger with the current
champion. This stage runs on every ``dvc repro`` (``always_changed`` in dvc.yaml) and
writes ``paths.reports/champion.json`` (``pipelines.pointer``): the model name, the
champion's version and its ONNX sha256 (nulls while there is none). ``evaluate`` lists that
file as a dep and reads the champion from it, so a promotion or a rollback re-runs
``evaluate`` (and the gates), and an unchanged champion re-runs nothing. A registry that
cannot be read stops the pipeline: an outage is not "no champion".
"""

from __future__ import annotations

from pathlib import Path

from pipelines import pointer, tracking
from pipelines.config import Paths, Register


def run(cfg: Register, paths: Paths, root: Path) -> pointer.Pointer:
    from registry.client import CHAMPION, Registry

    registry = Registry(tracking.tracking_uri(root))
    champ = registry.by_alias(cfg.model_name, CHAMPION)
    found = pointer.Pointer(
        model=cfg.model_name,
        version=champ.version if champ else None,
        onnx_sha256=champ.tags.get("onnx.sha256") if champ else None,
    )
    pointer.write(found, paths, root)
    return found
