"""`modelyard tune` as a data scientist runs it, on the prepared digits project: a study
with parent and child runs in MLflow and the best values written to params.yaml, the test
split absent the whole time (so provably unread); a trial pruned on its validation curve;
every bad input a 2 that writes nothing. Two workers on one study in the team server's
PostgreSQL: tests/registry/test_team_tune.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import FAST_TRAIN, Project, copy_of

pytestmark = pytest.mark.slow


@pytest.fixture
def prepared(evaluated_template: Path, tmp_path: Path) -> Project:
    """This test's copy of the digits project after prepare (and the rest): the splits."""
    return copy_of(evaluated_template, tmp_path / "project")


def study_of(project: Project, name: str, storage: str | None = None) -> Any:
    import optuna

    url = storage or f"sqlite:///{project.root / '.modelyard/tune.db'}"
    return optuna.load_study(study_name=name, storage=url)


def set_tune(project: Project, train: dict[str, Any], tune: dict[str, Any]) -> None:
    """params.yaml's train merged with ``train``; its tune section's keys replaced by
    ``tune``'s (a space replaces the whole default space)."""
    project.set_params(train=train)
    params = project.params()
    params["tune"] = {**params["tune"], **tune}
    project.params_path.write_text(yaml.safe_dump(params))


def hide_test_splits(project: Project, away: Path) -> None:
    """The test splits out of the project for the whole search: a read would fail."""
    away.mkdir()
    for name in ("test.parquet", "test_production.parquet"):
        shutil.move(project.root / "data/prepared" / name, away / name)


def test_a_study_logs_parent_and_child_runs_and_writes_the_best_values(
    prepared: Project, tmp_path: Path
) -> None:
    import mlflow

    set_tune(
        prepared,
        {"model": "logreg"},
        {
            "space": {"train.logreg.C": {"low": 0.001, "high": 10.0, "log": True}},
            "trials": 4,
            "objective": "val_macro_f1",
        },
    )
    hide_test_splits(prepared, tmp_path / "away")
    before = prepared.params()["train"]["logreg"]["C"]

    result = prepared.cli("tune")

    out = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    study = study_of(prepared, "modelyard-logreg")
    best = study.best_trial
    assert len(study.trials) == 4 and "4 complete, 0 pruned, 0 failed of 4" in out
    written = prepared.params()["train"]["logreg"]["C"]
    assert written == pytest.approx(best.params["train.logreg.C"], rel=1e-5)
    assert written != before and f"+ C: {written}" in out.replace("+   ", "+ ")
    assert f"best val_macro_f1 {best.value:.4f}" in out
    # One parent run for the study, one child run per trial, each with its value.
    from pipelines import tracking

    tracking.configure(prepared.root)  # the project's own store
    parent_id = study.user_attrs["modelyard"]["parent_run_id"]
    parent = mlflow.get_run(parent_id)
    assert parent.data.tags["tune.study"] == "modelyard-logreg"
    assert parent.data.metrics["best_val_macro_f1"] == pytest.approx(best.value)
    children = mlflow.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        output_format="list",
    )
    assert len(children) == 4
    assert sorted(c.data.metrics["val_macro_f1"] for c in children) == sorted(
        t.value for t in study.trials
    )
    pictures = {p.name for p in (prepared.root / ".modelyard/tune/modelyard-logreg").iterdir()}
    assert pictures == {"history.png", "importances.png", "parallel.png"}
    assert not (prepared.root / "data/prepared/test.parquet").exists()  # never needed


def test_a_trial_far_below_the_median_is_pruned(prepared: Project, tmp_path: Path) -> None:
    """lr 1e-6 barely moves the MLP off its start: below the median of the trials before
    it after the warm-up epochs, so the pruner stops it; epochs saved are reported."""
    set_tune(
        prepared,
        {"model": "mlp", **FAST_TRAIN},
        {
            "space": {"train.lr": {"choices": [0.01, 0.000001]}},
            "trials": 8,
            "sampler": "random",
        },
    )
    result = prepared.cli("tune", "--no-write")
    assert result.exit_code == 0, result.output
    study = study_of(prepared, "modelyard-mlp")
    states = [(t.params["train.lr"], t.state.name) for t in study.trials]
    pruned = [lr for lr, state in states if state == "PRUNED"]
    assert pruned and set(pruned) == {0.000001}, states
    assert all(state == "COMPLETE" for lr, state in states if lr == 0.01), states
    out = " ".join(result.output.split())
    saved = int(out.split("saved by pruning (estimate): ")[1].split()[0])
    assert saved > 0, out


@pytest.mark.parametrize(
    ("tune", "train", "says"),
    [
        ({"space": {"train.nope": {"low": 0, "high": 1}}}, {}, "tune.space.train.nope: no such parameter"),
        ({"space": {"train.lr": {"low": 0.1, "high": 0.1}}}, {}, "empty range 0.1..0.1"),
        ({"space": {"train.lr": {"choices": []}}}, {}, "choices is empty"),
        ({"space": {"train.logreg.C": {"low": 0.1, "high": 1}}, "objective": "val_loss"},
         {"model": "logreg"}, "the logreg family reports no validation loss"),
        ({"space": {"train.mlp.dropout": {"low": 0, "high": 0.5}}}, {}, "train.model is cnn"),
        ({"trials": 0, "minutes": None}, {}, "a budget of zero"),
        ({"space": {"train.cnn.dropout": {"choices": [0.1, 1.5]}}}, {}, "1.5 is not a valid value"),
        ({"storage": "postgresql+psycopg2://u:secret@127.0.0.1:9/none"}, {},
         "cannot open the study storage postgresql+psycopg2://u:***@127.0.0.1:9/none"),
    ],
    ids=[
        "unknown", "empty-range", "no-choices", "objective", "other-family", "zero", "invalid",
        "storage",
    ],
)  # fmt: skip
def test_bad_input_is_a_2_that_writes_nothing(
    project: Project, tune: dict[str, Any], train: dict[str, Any], says: str
) -> None:
    set_tune(project, train, tune)
    before = project.params_path.read_bytes()
    result = project.cli("tune")
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert says in said and "secret" not in said
    assert project.params_path.read_bytes() == before
    assert not (project.root / ".modelyard/tune.db").exists() or "storage" not in tune


def test_when_no_trial_completes_it_is_1_with_the_first_error(
    prepared: Project, tmp_path: Path
) -> None:
    """A combination the family cannot train (a CNN with no channels): each trial fails,
    recorded; the command exits 1 with the error and writes nothing."""
    set_tune(
        prepared,
        {"model": "cnn", **FAST_TRAIN},
        {"space": {"train.cnn.channels": {"choices": [[0, 0]]}}, "trials": 2},
    )
    before = prepared.params_path.read_bytes()
    result = prepared.cli("tune")
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "no trial of study 'modelyard-cnn' completed" in said, said
    assert prepared.params_path.read_bytes() == before
    states = {t.state.name for t in study_of(prepared, "modelyard-cnn").trials}
    assert states == {"FAIL"}


def test_join_of_a_study_that_does_not_exist_is_2(project: Project) -> None:
    result = project.cli("tune", "--join", "nobody-started-this")
    assert result.exit_code == 2, result.output
    assert "no study 'nobody-started-this'" in " ".join(result.output.split())


def test_a_worker_joining_at_once_waits_for_the_studys_record() -> None:
    """The first worker records the space and its MLflow run just after creating the
    study: a worker joining in between waits for it (found by benchmarks/tune.py), and a
    study that never gets one (not started by modelyard) is refused, not guessed."""
    import threading

    import optuna

    from core.errors import ConfigError
    from pipelines.tune import ATTRS, _record_of

    study = optuna.create_study(study_name="joined")
    threading.Timer(0.3, lambda: study.set_user_attr(ATTRS, {"trials": 3})).start()
    assert _record_of(study, wait_s=10) == {"trials": 3}
    with pytest.raises(ConfigError, match="not started by `modelyard tune`"):
        _record_of(optuna.create_study(study_name="foreign"), wait_s=0.5)
