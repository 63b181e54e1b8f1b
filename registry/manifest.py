"""What the reviewer approved, byte for byte: every file of a model folder.

A manifest lists each file of the approved model folder (``MLmodel``, ``model.onnx``,
the contract and schema, whatever the flavour wrote) with its size and sha256. The gate
puts it in the approval it signs, so whoever checks the signature also checks every
file: a class list rotated in ``MLmodel`` after approval is as refused as a swapped
``model.onnx``. ``differences`` names each file that is missing, extra or changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import files

# Written by MLflow's own download of a ``models:/`` URI (the name and version it was
# fetched as), not a file of the model: left out of every manifest and every copy.
DOWNLOAD_META = "registered_model_meta"


@dataclass(frozen=True, order=True)
class Entry:
    path: str  # relative to the model folder, "/"-separated
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...]

    @classmethod
    def of_folder(cls, folder: Path) -> Manifest:
        """Every regular file under ``folder`` (symlinks refused: they point elsewhere)."""
        found: list[Entry] = []
        for path in sorted(folder.rglob("*")):
            if path.relative_to(folder).as_posix() == DOWNLOAD_META:
                continue
            if path.is_symlink():
                raise ValueError(f"{path.relative_to(folder)} is a symlink: not a model file")
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                found.append(Entry(rel, path.stat().st_size, files.sha256(path)))
        return cls(tuple(sorted(found)))

    @classmethod
    def from_record(cls, record: list[dict[str, Any]]) -> Manifest:
        entries = (Entry(str(e["path"]), int(e["size"]), str(e["sha256"])) for e in record)
        return cls(tuple(sorted(entries)))

    def record(self) -> list[dict[str, Any]]:
        return [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in self.entries]

    def digest(self) -> str:
        """sha256 of the canonical JSON of the entries: one value for the whole folder."""
        text = json.dumps(self.record(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def sha256_of(self, path: str) -> str | None:
        return next((e.sha256 for e in self.entries if e.path == path), None)


def differences(approved: Manifest, actual: Manifest) -> list[str]:
    """Each file that is not what was approved, one phrase per file (empty: identical)."""
    want = {e.path: e for e in approved.entries}
    have = {e.path: e for e in actual.entries}
    found: list[str] = []
    for path in sorted(want.keys() | have.keys()):
        a, b = want.get(path), have.get(path)
        if b is None:
            found.append(f"{path} is missing")
        elif a is None:
            found.append(f"{path} was added (sha256 {b.sha256[:12]})")
        elif a != b:
            found.append(
                f"{path} changed (sha256 {b.sha256[:12]}, {b.size} bytes; "
                f"approved {a.sha256[:12]}, {a.size} bytes)"
            )
    return found
