"""Evidence the trainer cannot choose (issue 21 item 2): the gate scores a candidate on the
test rows its reviewed commit's dvc.lock names, fetched by hash from the DVC remote.

A real git repository with a real DVC pipeline (`dvc repro`, `dvc push` to a local
remote): the fetch checked file by file, and each way to give the gate other rows
refused (a rewritten or missing object in the remote, a commit that is not on main, no
commit). Then the attack on the real team server, with the gate in-process: a random
model that logged only rows it gets right, its run's metrics copied from a good one, is
refused on the committed rows (no champion to compare with: the gate's own floor); a
good one is approved, and the rows it kept are the committed ones."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from core import files
from core.errors import PromotionRefused
from registry import evidence, keys
from tests.conftest import dvc, git
from tests.registry.conftest import (
    EXPERIMENT,
    RULES,
    TRUTH,
    TeamServer,
    apply_own_team,
    as_user,
    log_candidate,
    password,
    write_reference,
)

PREPARED = "data/prepared"


@dataclass(frozen=True)
class Project:
    root: Path  # the repository (main: reviewed), with dvc.lock committed
    remote: Path  # the DVC remote the pipeline pushed to
    commit: str  # main's commit
    side: str  # a commit on another branch, never merged
    source: evidence.Source


def objects(remote: Path) -> dict[str, Path]:
    """The remote's objects by md5 (``files/md5/ab/cdef...``)."""
    return {p.parent.name + p.name: p for p in (remote / "files/md5").glob("*/*")}


@pytest.fixture(scope="module")
def project(e2e_tier: None, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A pipeline whose prepare stage writes the test split (60 rows the TRUTH model
    labels) and its schema (copies of src/, tracked in git): run with `dvc repro`,
    pushed, committed on main; then a change on a side branch, never merged."""
    base = tmp_path_factory.mktemp("evidence")
    root, remote = base / "repo", base / "remote"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    dvc(root, "init", "-q")
    write_reference(root / "src", base, labelled_by=TRUTH, rows=60)
    (root / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"prepare": {"cmd": f"cp -r src {PREPARED}", "deps": ["src"],
                                    "outs": [PREPARED]}}}
        )
    )  # fmt: skip
    (root / "data").mkdir()
    dvc(root, "repro", "-q")
    dvc(root, "remote", "add", "-d", "store", str(remote))
    dvc(root, "push", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "the reviewed split")
    commit = git(root, "rev-parse", "HEAD").strip()
    git(root, "checkout", "-qb", "side")
    (root / "src/schema.json").write_text((root / "src/schema.json").read_text() + "\n")
    dvc(root, "repro", "-q")
    git(root, "commit", "-qam", "not reviewed")
    side = git(root, "rev-parse", "HEAD").strip()
    git(root, "checkout", "-q", "main")
    return Project(root, remote, commit, side, evidence.Source(str(root), str(remote)))


def test_the_committed_rows_are_fetched_by_hash_and_checked(
    project: Project, tmp_path: Path
) -> None:
    rows = evidence.committed_rows(project.source, project.commit, tmp_path / "rows")
    assert sorted(p.name for p in rows.folder.iterdir()) == ["schema.json", "test.parquet"]
    for name in ("test.parquet", "schema.json"):
        assert (rows.folder / name).read_bytes() == (project.root / "src" / name).read_bytes()
        assert rows.files[name] == hashlib.md5((rows.folder / name).read_bytes()).hexdigest()
    lock = yaml.safe_load((project.root / "dvc.lock").read_text())
    assert rows.folder_md5 == lock["stages"]["prepare"]["outs"][0]["md5"]
    assert f"commit {project.commit[:12]}'s dvc.lock" in rows.label
    assert rows.folder_md5[:12] in rows.label


def test_other_rows_are_refused_naming_what_and_why(project: Project, tmp_path: Path) -> None:
    def refused(commit: str) -> str:
        with pytest.raises(PromotionRefused) as caught:
            evidence.committed_rows(project.source, commit, tmp_path / commit[:6])
        return " ".join(str(caught.value).split())

    assert "not on main" in refused(project.side)
    assert "is not in" in refused("0123456789abcdef0123456789abcdef01234567")
    assert "records no git commit" in refused("unknown")

    # The remote's test split cut to 35 rows (what a trainer would keep): its bytes are
    # not what dvc.lock names, so it is refused, not scored.
    md5 = hashlib.md5((project.root / "src/test.parquet").read_bytes()).hexdigest()
    stored = objects(project.remote)[md5]
    original = stored.read_bytes()
    import pandas as pd

    pd.read_parquet(project.root / "src/test.parquet").head(35).to_parquet(tmp_path / "cut.parquet")
    try:
        stored.chmod(0o644)
        stored.write_bytes((tmp_path / "cut.parquet").read_bytes())
        said = refused(project.commit)
        assert f"{PREPARED}/test.parquet in the DVC remote is not the file dvc.lock" in said
        stored.unlink()
        said = refused(project.commit)
        assert f"{PREPARED}/test.parquet ({md5[:12]}) is not in the DVC remote" in said
        assert "`dvc push` it" in said
    finally:
        stored.write_bytes(original)
    assert evidence.committed_rows(project.source, project.commit, tmp_path / "again").files


# -- the attack on the real team server -----------------------------------------------------

CANDIDATES = "evidence-candidates"
PRODUCTION = "evidence-production"


@pytest.fixture(scope="module")
def own_team(team_server: TeamServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return apply_own_team(
        team_server,
        tmp_path_factory.mktemp("evidence-team"),
        experiment=f"{EXPERIMENT}-evidence",
        candidates=CANDIDATES,
        production=PRODUCTION,
    )


@pytest.mark.slow
def test_rows_the_trainer_cut_do_not_pass_the_gate_the_committed_rows_decide(
    team_server: TeamServer, own_team: Path, project: Project, tmp_path: Path
) -> None:
    from registry import team
    from registry.client import Registry
    from registry.gate import Gate
    from registry.store import GateStore

    class Recorder:
        def deploy(self, name: str, version: str) -> str:
            return "recorded"

    store = GateStore(team_server.gate_database_url)
    registry = Registry(team_server.uri)
    gate = Gate(
        registry=registry,
        team=team.load(own_team),
        store=store,
        key=keys.Signer.of_hex("e1" * 32),
        rules=RULES,
        dispatcher=Recorder(),
        committed=project.source,
    )

    def candidate(seed: int, commit: str, dirty: bool = False, **kw: object) -> str:
        """Trained and registered as CI does, its version claiming ``commit``."""
        run_id, uri, sha = log_candidate(
            team_server, tmp_path, seed=seed, experiment=f"{EXPERIMENT}-evidence", **kw
        )
        lineage = {
            "onnx.sha256": sha,
            "gates.passed": "True",
            "validation.success": "True",
            "git.author": "dana@example.com",
            "git.commit": commit,
            "git.dirty": str(dirty),
        }
        with as_user(team_server, "ci"):
            return registry.register(CANDIDATES, uri, run_id, lineage).version

    reviewer = ("rui", password("rui"))
    # A random model whose logged test split is the 60 rows it labelled itself (it is
    # right on every one) and whose run carries a good model's metrics.
    chosen = candidate(3, project.commit, model="random", labelled_by=3)
    with as_user(team_server, "gate"), pytest.raises(PromotionRefused) as refused:
        gate.approve(reviewer, CANDIDATES, chosen, "ok")
    said = " ".join(str(refused.value).split())
    assert f"accuracy recomputed by the gate on the rows commit {project.commit[:12]}'s" in said
    assert "on 60 rows; its run says 0.9700, below the gate's minimum 0.95" in said
    with as_user(team_server, "gate"):
        assert registry.by_alias(PRODUCTION, "champion") is None

    # Rows from a commit nobody reviewed, or a dirty tree: refused before any scoring.
    side = candidate(4, project.side, model="truth")
    with as_user(team_server, "gate"), pytest.raises(PromotionRefused, match="not on main"):
        gate.approve(reviewer, CANDIDATES, side, "ok")
    dirty = candidate(6, project.commit, dirty=True, model="truth")
    with as_user(team_server, "gate"), pytest.raises(PromotionRefused, match="uncommitted"):
        gate.approve(reviewer, CANDIDATES, dirty, "ok")

    # A good model is approved on the committed rows, and those are the rows it keeps.
    good = candidate(5, project.commit, model="truth")
    with as_user(team_server, "gate"):
        done = gate.approve(reviewer, CANDIDATES, good, "ok")
    summary = done.approval.comparison["summary"]
    assert f"on the rows commit {project.commit[:12]}'s dvc.lock names" in summary
    assert "1.0000 on 60 rows" in summary
    kept = {e["path"]: e["sha256"] for e in done.approval.reference}
    assert kept["test.parquet"] == files.sha256(project.root / "src/test.parquet")
    store.close()
