"""The rows the gate scores on, identified by content: the test split the reviewed commit's
``dvc.lock`` records, fetched by its hash from the DVC remote.

A candidate's own ``reference/`` artifacts are rows its trainer chose (a random model
with its test split cut to the 35 rows it gets right "beats" any champion there). The
rows a commit's ``dvc.lock`` names are not: the commit is on the protected branch (merged
through review), ``dvc.lock`` records the prepared folder's hash, and every file fetched
from the remote is checked against it (the folder's listing, a ``.dir`` object, against
the folder hash; each file against its md5 in the listing). Anything that does not match,
or is not there, is a refusal that says which file and what to do; the gate never falls
back to the candidate's rows once a source is configured.

Adapter for git (the ``git`` command) and the DVC remote's content-addressed layout
(``files/md5/<2>/<30>``, DVC 3), read with fsspec (a path, ``file://``, or any URL an
installed fsspec filesystem serves, e.g. ``s3://`` with ``s3fs``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.errors import PromotionRefused

# The files of the prepared folder the gate scores on (registry.comparison's layout).
NEEDED = ("test.parquet", "schema.json")
OPTIONAL = ("test_production.parquet",)


@dataclass(frozen=True)
class Source:
    """Where the gate reads reviewed commits and their data (MODELYARD_GATE_REPO,
    MODELYARD_GATE_DVC_REMOTE, MODELYARD_GATE_BRANCH; ``prepared``: params' paths.prepared)."""

    repo: str  # a git URL or path the gate may fetch from
    remote: str  # the DVC remote's URL or path
    prepared: str = "data/prepared"
    branch: str = "main"


@dataclass(frozen=True)
class CommittedRows:
    folder: Path  # test.parquet, schema.json (and test_production.parquet) as committed
    commit: str
    prepared: str  # the folder's path in the repository
    folder_md5: str  # its hash in dvc.lock ("<md5>.dir")
    files: dict[str, str]  # name -> md5, each checked

    @property
    def label(self) -> str:
        return (
            f"the rows commit {self.commit[:12]}'s dvc.lock names ({self.prepared} "
            f"{self.folder_md5[:12]}, from the DVC remote)"
        )


def committed_rows(source: Source, commit: str, dest: Path) -> CommittedRows:
    """The test rows of ``commit``'s prepared folder, each file's bytes checked against
    ``dvc.lock``; PromotionRefused (what and why) otherwise."""
    if not commit or commit == "unknown" or not all(c in "0123456789abcdef" for c in commit):
        raise PromotionRefused(
            f"the candidate records no git commit ({commit or 'none'}): the gate scores it "
            "only on the test rows a reviewed commit's dvc.lock names"
        )
    repo = _mirror(source.repo)
    if _git(repo, "cat-file", "-t", f"{commit}^{{commit}}", check=False).strip() != "commit":
        raise PromotionRefused(f"commit {commit[:12]} is not in {source.repo}: push it first")
    branch = f"refs/heads/{source.branch}"
    if _git(repo, "merge-base", "--is-ancestor", commit, branch, check=False, code=True) != "0":
        raise PromotionRefused(
            f"commit {commit[:12]} is not on {source.branch} of {source.repo}: the gate "
            f"scores only reviewed commits (merge it to {source.branch}, then train it)"
        )
    lock = yaml.safe_load(_git(repo, "show", f"{commit}:dvc.lock", check=False) or "{}") or {}
    out = _out(lock, source.prepared)
    if out is None:
        raise PromotionRefused(
            f"commit {commit[:12]}'s dvc.lock records no {source.prepared}: train it with "
            "`dvc repro` and commit dvc.lock"
        )
    folder_md5 = str(out.get("md5", ""))
    if not folder_md5.endswith(".dir"):
        raise PromotionRefused(f"dvc.lock records {source.prepared} as a file, not a folder")
    listing_bytes = _fetch(source.remote, folder_md5, f"the listing of {source.prepared}")
    try:
        listing = {str(e["relpath"]): str(e["md5"]) for e in json.loads(listing_bytes)}
    except (ValueError, TypeError, KeyError) as exc:
        raise PromotionRefused(
            f"the listing of {source.prepared} in the DVC remote is not DVC's ({exc})"
        ) from None
    if "nfiles" in out and int(out["nfiles"]) != len(listing):
        raise PromotionRefused(
            f"the listing of {source.prepared} in the DVC remote has {len(listing)} files, "
            f"dvc.lock records {out['nfiles']}"
        )
    missing = [name for name in NEEDED if name not in listing]
    if missing:
        raise PromotionRefused(
            f"commit {commit[:12]}'s {source.prepared} holds no {', '.join(missing)}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    fetched: dict[str, str] = {}
    for name in (*NEEDED, *(n for n in OPTIONAL if n in listing)):
        data = _fetch(source.remote, listing[name], f"{source.prepared}/{name}")
        (dest / name).write_bytes(data)
        fetched[name] = listing[name]
    return CommittedRows(dest, commit, source.prepared, folder_md5, fetched)


def _out(lock: dict[str, Any], path: str) -> dict[str, Any] | None:
    for stage in (lock.get("stages") or {}).values():
        for item in stage.get("outs") or []:
            if Path(str(item.get("path", ""))) == Path(path):
                return dict(item)
    return None


def _fetch(remote: str, md5: str, what: str) -> bytes:
    """The object ``md5`` from the remote, its bytes checked against ``md5``."""
    import fsspec

    digest = md5.removesuffix(".dir")
    url = f"{remote.rstrip('/')}/files/md5/{digest[:2]}/{md5[2:]}"
    try:
        with fsspec.open(url, "rb") as fh:
            data: bytes = fh.read()
    except FileNotFoundError:
        raise PromotionRefused(
            f"{what} ({digest[:12]}) is not in the DVC remote {remote}: `dvc push` it"
        ) from None
    except OSError as exc:
        raise PromotionRefused(f"cannot read {what} from the DVC remote {remote}: {exc}") from exc
    actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if actual != digest:
        raise PromotionRefused(
            f"{what} in the DVC remote is not the file dvc.lock names (md5 {actual[:12]}, "
            f"recorded {digest[:12]}): someone rewrote it; investigate"
        )
    return data


def _mirror(repo: str) -> Path:
    """A bare copy of ``repo`` kept up to date (one per repo, in the gate's own cache:
    not a shared temp folder another account could plant a repository in)."""
    name = hashlib.sha256(repo.encode()).hexdigest()[:16]
    path = Path.home() / ".cache" / "modelyard" / "gate-repos" / f"{name}.git"
    if not (path / "HEAD").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["git", "clone", "--bare", "--quiet", repo, str(path)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise PromotionRefused(f"cannot read the repository {repo}: {done.stderr.strip()}")
    else:
        done = subprocess.run(
            ["git", "-C", str(path), "fetch", "--quiet", "--prune", "origin",
             "+refs/heads/*:refs/heads/*"],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise PromotionRefused(f"cannot fetch the repository {repo}: {done.stderr.strip()}")
    return path


def _git(repo: Path, *args: str, check: bool = True, code: bool = False) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if code:
        return str(done.returncode)
    if check and done.returncode != 0:
        raise PromotionRefused(f"git {args[0]} failed: {done.stderr.strip()}")
    return done.stdout if done.returncode == 0 else ""
