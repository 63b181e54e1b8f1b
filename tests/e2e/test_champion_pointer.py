"""The champion pointer in a real `dvc repro`: a promotion re-runs evaluate, nothing else
does, a stale pointer stops evaluate, and an unreachable registry is an error.

One pipeline run in a temporary git repository (a copy of the session's ran_repo), reused
by the steps of one test: promote -> repro re-runs evaluate against the champion -> repro again
runs nothing -> the champion is removed behind the pointer's back -> evaluate refuses ->
`modelyard champion` -> repro re-runs evaluate without a champion.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines import tracking
from registry.client import Registry
from tests.conftest import copy_repo, dvc, free_port, modelyard

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("e2e_tier")]

NAME = "digits-classifier"
POINTER = "data/reports/champion.json"
# A registry nobody answers for; MLflow would otherwise retry for minutes.
DOWN = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def ran_stages(output: str) -> set[str]:
    return {
        line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")
    }


def report(root: Path, name: str) -> Any:
    return json.loads((root / "data/reports" / name).read_text())


@pytest.fixture
def repo(ran_repo: Path, tmp_path: Path) -> Path:
    """A clone after one pipeline run (tests.conftest.ran_repo), this test's own copy:
    v1 is @challenger and no champion yet."""
    root = copy_repo(ran_repo, tmp_path / "repo")
    assert json.loads((root / POINTER).read_text())["version"] is None
    assert Registry(tracking.tracking_uri(root)).by_alias(NAME, "challenger") is not None
    return root


def test_a_promotion_reruns_evaluate_and_nothing_else_does(repo: Path) -> None:
    registry = Registry(tracking.tracking_uri(repo))
    (v1,) = [v.version for v in registry.versions(NAME)]

    # No promotion: nothing re-runs.
    assert ran_stages(dvc(repo, "repro").stdout) == set()

    promoted = modelyard(repo, "promote", NAME, v1, "--reviewer", "rui@example.com")
    assert f"{POINTER} now names v{v1}" in promoted.stdout
    assert json.loads((repo / POINTER).read_text())["version"] == v1

    # The pointer changed: evaluate (and register, which reads its report) re-run,
    # and the gate report now compares with the champion.
    after = dvc(repo, "repro").stdout
    assert "evaluate" in ran_stages(after)
    assert not {"ingest", "prepare", "validate", "train", "export", "optimize"} & ran_stages(after)
    champion = report(repo, "evaluate.details.json")["champion"]
    assert champion["version"] == v1 and champion["compared"] is True
    gate = report(repo, "gates.json")["gates"]["not_worse_than_champion"]
    assert gate["passed"] is True and f"champion v{v1}" in gate["detail"]

    # Nothing changed since: nothing re-runs.
    assert ran_stages(dvc(repo, "repro").stdout) == set()

    # Someone removes @champion without modelyard: the pointer is stale, and evaluate
    # refuses to compare with a champion that is no longer one.
    registry.clear_champion(NAME)
    stale = dvc(repo, "repro", "--force", "--single-item", "evaluate", check=False)
    assert stale.returncode != 0
    out = " ".join((stale.stdout + stale.stderr).split())
    assert f"the champion of {NAME} changed since {POINTER} was written" in out
    assert f"it names {NAME} v{v1} (sha256 " in out
    assert f"the registry now no champion of {NAME}" in out

    # `modelyard champion` brings the pointer up to date; evaluate re-runs without one.
    refreshed = modelyard(repo, "champion")
    assert "none yet (pointer updated)" in refreshed.stdout
    again = dvc(repo, "repro").stdout
    assert "evaluate" in ran_stages(again)
    assert "champion" not in report(repo, "evaluate.details.json")
    assert "not_worse_than_champion" not in report(repo, "gates.json")["gates"]


def test_an_unreachable_registry_stops_champion_and_evaluate(repo: Path) -> None:
    env = {**DOWN, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    before = (repo / POINTER).read_text()

    champion = modelyard(repo, "champion", env=env, check=False)

    assert champion.returncode == 1
    err = " ".join(champion.stderr.split())
    assert "champion failed: cannot read the registered model 'digits-classifier'" in err
    assert "Connection refused" in err
    assert (repo / POINTER).read_text() == before  # not rewritten to "no champion"

    metrics = (repo / "data/reports/evaluate.json").read_text()
    evaluate = modelyard(repo, "evaluate", env=env, check=False)
    assert evaluate.returncode == 1
    err = " ".join(evaluate.stderr.split())
    assert "evaluate failed: cannot read the registered model 'digits-classifier'" in err
    assert (repo / "data/reports/evaluate.json").read_text() == metrics  # nothing written
