"""Where a model came from: the git commit, and the hashes DVC recorded in dvc.lock."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

UNKNOWN = "unknown"


def git_commit(root: Path, outputs: tuple[Path, ...] = ()) -> tuple[str, bool]:
    """(commit sha, dirty?) of the project. dvc.lock and the pipeline's own ``outputs``
    (metrics DVC keeps in git) are ignored: ``dvc repro`` rewrites them as it runs."""
    try:
        sha = _git(root, "rev-parse", "HEAD").strip()
        status = _git(root, "status", "--porcelain", "--untracked-files=no")  # "XY path" lines
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN, True
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    ignored = [Path("dvc.lock"), *outputs]
    dirty = any(not any(Path(p) == i or i in Path(p).parents for i in ignored) for p in changed)
    return sha, dirty


def git_author(root: Path, *, name: bool = False) -> str:
    """The email (``name``: the name) of the commit's author: the four-eyes rule compares
    reviewers with both."""
    try:
        return _git(root, "log", "-1", f"--format={'%an' if name else '%ae'}").strip() or UNKNOWN
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN


def dvc_hashes(root: Path, raw: Path, prepared: Path) -> dict[str, str]:
    """Data and params hashes as dvc.lock has them (``unknown`` outside ``dvc repro``)."""
    lock_path = root / "dvc.lock"
    out = {"data_md5": UNKNOWN, "prepared_md5": UNKNOWN, "params_sha256": UNKNOWN}
    if not lock_path.exists():
        return out
    lock: dict[str, Any] = yaml.safe_load(lock_path.read_text()) or {}
    stages: dict[str, Any] = lock.get("stages", {})
    for stage in stages.values():
        for item in stage.get("outs", []):
            if Path(item["path"]) == raw:
                out["data_md5"] = item.get("md5", UNKNOWN)
            elif Path(item["path"]) == prepared:
                out["prepared_md5"] = item.get("md5", UNKNOWN)
    params = {name: stage.get("params", {}) for name, stage in sorted(stages.items())}
    if any(params.values()):
        blob = json.dumps(params, sort_keys=True, default=str).encode()
        out["params_sha256"] = hashlib.sha256(blob).hexdigest()
    return out


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True
    ).stdout
