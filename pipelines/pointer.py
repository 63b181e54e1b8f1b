"""The champion pointer: who the registry's ``champion`` is, as a small git-tracked file.

DVC cannot see the registry, yet ``evaluate`` compares the challenger with the current
champion: ``champion`` of ``register.champion_model`` (``register.model_name`` unless set;
in team mode the production model, where only the gate moves it).
``paths.reports/champion.json`` names the champion (model, version, ONNX
sha256; nulls while there is none) and ``evaluate`` lists it as a DVC dep. ``refresh``
rewrites it only when the champion changed: ``modelyard run`` calls it before
``dvc repro``, and ``promote`` / ``rollback`` call it after moving the alias, so a
promotion re-runs ``evaluate`` and its gates, and an unchanged champion re-runs nothing.
``evaluate`` checks the pointer against the registry and stops when they disagree (a
plain ``dvc repro`` after someone else's promotion), never comparing with a stale champion.
A registry that cannot be read is an error, not "no champion".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core import files
from core.errors import ConfigError
from core.tagkeys import LineageTag
from pipelines.config import Paths

if TYPE_CHECKING:
    from registry.client import Registry

FILE = "champion.json"


@dataclass(frozen=True)
class Pointer:
    model: str
    version: str | None  # None: no champion yet
    onnx_sha256: str | None


def current(registry: Registry, model: str) -> Pointer:
    """The registry's champion of ``model`` now."""
    from registry.client import CHAMPION

    champ = registry.by_alias(model, CHAMPION)
    return Pointer(
        model=model,
        version=champ.version if champ else None,
        onnx_sha256=champ.tags.get(LineageTag.ONNX_SHA256) if champ else None,
    )


def read(paths: Paths, root: Path) -> Pointer:
    """The pointer file as written last (no champion if there is none yet)."""
    path = root / paths.report(FILE)
    if not path.exists():
        raise ConfigError(
            f"{path} is missing: run `modelyard champion` (or `modelyard run`) to write it"
        )
    return Pointer(**files.read_json(path))


def refresh(registry: Registry, model: str, paths: Paths, root: Path) -> tuple[Pointer, bool]:
    """Write the registry's current champion to the pointer file if it changed.

    Returns the pointer and whether the file changed (then `dvc repro` re-runs evaluate).
    """
    now = current(registry, model)
    path = root / paths.report(FILE)
    if path.exists() and Pointer(**files.read_json(path)) == now:
        return now, False
    files.write_json(path, asdict(now))
    return now, True
