"""`modelyard tune` in team mode: the study in the team server's PostgreSQL (the real server
the team tests start), a second worker process joining it (`--join`): together they run
exactly the budget, every trial a different point, both doing some."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, FAST_TRAIN, Project, copy_of, record_exit
from tests.pipelines.test_tune import set_tune
from tests.registry.conftest import TeamServer

pytestmark = pytest.mark.slow


@pytest.fixture
def prepared(evaluated_template: Path, tmp_path: Path) -> Project:
    return copy_of(evaluated_template, tmp_path / "project")


def test_two_workers_share_one_study_in_postgresql(
    prepared: Project, team_server: TeamServer, tmp_path: Path
) -> None:
    """The team server's PostgreSQL holds the study; a second process joins it: together
    they run exactly the budget, every trial a different point, both doing some."""
    import optuna
    import sqlalchemy as sa

    admin = sa.create_engine(team_server.database_url("postgres", admin=True))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("CREATE DATABASE modelyard_tune"))
    admin.dispose()
    storage = team_server.database_url("modelyard_tune", admin=True)
    set_tune(
        prepared,
        {"model": "cnn", **FAST_TRAIN},
        {
            "space": {
                "train.lr": {"low": 0.001, "high": 0.03, "log": True},
                "train.cnn.dropout": {"low": 0.0, "high": 0.4},
            },
            "trials": 6,
            "pruner": "none",
            "storage": storage,
            "study": "shared",
        },
    )

    def worker(*args: str) -> subprocess.Popen[str]:
        cmd = ["tune", "--no-write", *args, "--params", str(prepared.params_path)]
        return subprocess.Popen(
            [str(BIN / "modelyard"), *cmd],
            cwd=prepared.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    # This process reads the study without keeping connections open: the team server's
    # PostgreSQL must stop cleanly when another test restarts it (pooled connections held
    # its shutdown, and the restart found it not ready).
    rdb = optuna.storages.RDBStorage(storage, engine_kwargs={"poolclass": sa.pool.NullPool})
    first = worker()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the first worker has created the study and begun
        created = "shared" in optuna.get_all_study_names(storage=rdb)
        if created and optuna.load_study(study_name="shared", storage=rdb).trials:
            break
        assert first.poll() is None, f"the first worker ended early:\n{first.communicate()[0]}"
        time.sleep(0.5)
    else:
        raise AssertionError("the first worker did not start a trial within 120 s")
    second = worker("--join", "shared")
    outs = [p.communicate(timeout=600)[0] for p in (first, second)]
    for args, proc, out in ((["tune"], first, outs[0]), (["tune", "--join"], second, outs[1])):
        record_exit(args, proc.returncode)
        assert proc.returncode == 0, out
    study = optuna.load_study(study_name="shared", storage=rdb)
    rdb.engine.dispose()
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 6, [(t.number, t.state.name, t.user_attrs) for t in study.trials]
    points = {tuple(sorted(t.params.items())) for t in done}
    assert len(points) == 6  # no trial repeated another
    ran = [int(" ".join(o.split()).split("this worker ran ")[1].split(";")[0]) for o in outs]
    assert all(n >= 1 for n in ran) and sum(ran) == 6, ran
