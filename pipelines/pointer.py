"""The champion pointer: who the registry's ``champion`` was when the pipeline last looked.

Written by the ``champion`` stage (``paths.reports/champion.json``), read by ``evaluate``,
which lists the file as a DVC dep: a promotion or a rollback changes the file, and so
re-runs ``evaluate`` and its gates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from core import files
from pipelines.config import Paths

FILE = "champion.json"


@dataclass(frozen=True)
class Pointer:
    model: str
    version: str | None  # None: no champion yet
    onnx_sha256: str | None


def write(pointer: Pointer, paths: Paths, root: Path) -> None:
    files.write_json(root / paths.report(FILE), asdict(pointer))


def read(paths: Paths, root: Path) -> Pointer:
    """The pointer the last ``champion`` stage wrote."""
    return Pointer(**files.read_json(root / paths.report(FILE)))
