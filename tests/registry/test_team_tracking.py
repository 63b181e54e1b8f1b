"""The real pipeline on the real team server (PostgreSQL + `mlflow server --app-name
basic-auth`), as CI's trainer runs it: `modelyard run` with the trainer's login.

One flow, in a git repository with fast training settings:
1. a data scientist ran the pipeline on their own machine (the embedded store): DVC's
   cache and dvc.lock hold a model whose training run the server never saw;
2. CI's `modelyard run` on the team server trains again, so the version it registers has
   its training run, with the metrics, on the server (no ``training.run_missing``) and the
   gate's evidence holds: run in the trainer's experiment, artifact logged by that run;
3. the gate puts `champion` on the production model; with ``register.champion_model``
   naming it, `modelyard champion` writes that champion and evaluate compares with it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.stages import register
from registry.client import Registry
from tests.conftest import BIN, FAST_OPTIMIZE, FAST_TRAIN, dvc, git, git_copy, modelyard
from tests.registry.conftest import (
    EXPERIMENT,
    RULES,
    TeamServer,
    apply_own_team,
    as_user,
)

pytestmark = pytest.mark.slow

# This test's own models and experiment (other tests register 4-feature models).
CANDIDATES = "digits-team-candidates"
PRODUCTION = "digits-team-production"
TRAINER_EXPERIMENT = f"{EXPERIMENT}-pipeline"


def ran_stages(output: str) -> set[str]:
    return {
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    }


def report(root: Path, name: str) -> dict[str, object]:
    return dict(json.loads((root / "data/reports" / name).read_text()))


@pytest.fixture(scope="module")
def own_team(team_server: TeamServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return apply_own_team(
        team_server,
        tmp_path_factory.mktemp("pipeline-team"),
        experiment=TRAINER_EXPERIMENT,
        candidates=CANDIDATES,
        production=PRODUCTION,
    )


def test_ci_trains_on_the_team_server_and_evaluate_compares_with_the_production_champion(
    team_server: TeamServer, own_team: Path, tmp_path: Path
) -> None:
    from registry import keys, team
    from registry.gate import Gate
    from registry.store import GateStore

    root = git_copy(tmp_path / "repo")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(FAST_TRAIN)
    params["optimize"].update(FAST_OPTIMIZE)
    params["register"].update(model_name=CANDIDATES, champion_model=PRODUCTION)
    params["tracking"]["experiment"] = TRAINER_EXPERIMENT
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # 1. Someone's own machine: the embedded store (no production model there).
    modelyard(root, "champion")
    dvc(root, "repro")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "trained here")
    local_run = json.loads((root / "data/models/native/meta.json").read_text())["run_id"]

    # 2. CI, as the trainer, on the team server.
    ci = team_server.env("ci")
    ran = modelyard(root, "run", env=ci)
    assert "train" in ran_stages(ran.stdout), ran.stdout[-3000:]
    registry = Registry(team_server.uri)
    with as_user(team_server, "ci"):
        (version,) = registry.versions(CANDIDATES)
        assert "training.run_missing" not in version.tags, version.tags
        assert version.run_id and version.run_id != local_run
        run = registry.run(version.run_id)
        assert run is not None and run.tags.get("modelyard.stage") == "train"
        assert run.metrics["test.accuracy"] >= RULES.min_accuracy
        assert version.tags["data.test_uri"] == f"runs:/{version.run_id}/reference/test.parquet"
    with as_user(team_server, "gate"):
        store = GateStore(team_server.gate_database_url)
        gate = Gate(
            registry=registry,
            team=team.load(own_team),
            store=store,
            key=keys.Signer.of_hex("6b" * 32),
            rules=RULES,
            dispatcher=NoDeploys(),
        )
        evidence = gate.gather(version)
        store.close()
        assert evidence.run_exists and evidence.run_in_trainer_experiment
        assert evidence.artifact_logged_by_run
        assert evidence.metrics["test.accuracy"] == run.metrics["test.accuracy"]

        # 3. The gate's champion lives on the production model.
        copied = registry.copy_version(
            CANDIDATES,
            version.version,
            PRODUCTION,
            tags={  # what the gate writes on its copy
                "source.model": CANDIDATES,
                "source.version": version.version,
                "onnx.sha256": version.tags["onnx.sha256"],
            },
        )
        registry.set_champion(PRODUCTION, copied.version)

    said = modelyard(root, "champion", env=ci).stdout
    assert f"champion of {PRODUCTION}: v{copied.version} (pointer updated)" in said, said
    assert report(root, "champion.json")["model"] == PRODUCTION
    again = dvc_as(root, ci)
    assert "evaluate" in ran_stages(again)
    champion = report(root, "evaluate.details.json")["champion"]
    assert isinstance(champion, dict)
    assert (champion["model"], champion["version"], champion["compared"]) == (
        PRODUCTION,
        copied.version,
        True,
    )
    gates = report(root, "gates.json")["gates"]
    assert isinstance(gates, dict)
    detail = gates["not_worse_than_champion"]["detail"]
    assert f"champion v{copied.version} of {PRODUCTION}" in detail, detail

    # The next version's card shows that champion with its candidate's lineage and metrics.
    with as_user(team_server, "ci"):
        shown = register._champion_tags(registry, PRODUCTION, root / "data/reports")
    assert shown is not None
    number, tags = shown
    assert number == copied.version and tags["source.version"] == version.version
    assert tags["metric.accuracy"] == version.tags["metric.accuracy"]


class NoDeploys:
    def deploy(self, name: str, version: str) -> str:
        raise AssertionError("gathering evidence deploys nothing")


def dvc_as(root: Path, env: dict[str, str]) -> str:
    """`dvc repro` with ``env`` (the trainer's login on the team server)."""
    done = subprocess.run(
        [str(BIN / "dvc"), "repro"],
        cwd=root,
        env={**env, "PATH": f"{BIN}:{env['PATH']}"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout
