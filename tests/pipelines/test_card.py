"""The model card register writes as the version's description: made from the reports of
a real pipeline run (data/reports, as the repository holds them), with a champion beside."""

from __future__ import annotations

import copy
import json
from typing import Any

from pipelines.stages.register import Reports, model_card
from tests.conftest import REPO

TAGS = {
    "metric.accuracy": "0.9722",
    "metric.macro_f1": "0.9720",
    "metric.min_class_recall": "0.9143",
    "metric.noise_invariance": "0.9972",
    "metric.p99_ms_batch_1": "0.0124",
    "metric.p99_ms_batch_256": "0.900",
    "optimize.size_bytes": "42405",
    "model.family": "cnn",
    "model.variant": "fp32",
    "git.commit": "4ac9549e0f1a2b3c",
    "git.author": "dana@example.com",
    "git.dirty": "False",
    "dvc.data_md5": "0123456789abcdef",
    "dvc.params_sha256": "aaaa1111bbbb2222",
}


def reports(**evaluation: Any) -> Reports:
    real = Reports.read(REPO / "data/reports")
    return Reports(
        copy.deepcopy(real.gates),
        {**real.evaluation, **evaluation},
        real.validation,
        real.optimization,
    )


def test_a_worse_challenger_says_so_on_the_first_lines() -> None:
    """Issue 11: a challenger 0.56 points worse showed only "All gates passed"."""
    compared = {
        "version": "2",
        "compared": True,
        "accuracy": 0.9778,
        "only_champion_right": 4,
        "only_challenger_right": 2,
        "p_value": 0.69,
    }
    theirs = {"metric.accuracy": "0.9778", "git.commit": "1111111aaaaaaa", "dvc.params_sha256": "c"}
    champion = ("2", {**TAGS, **theirs})
    card = model_card(
        reports=reports(accuracy=0.9722, champion=compared),
        tags=TAGS,
        champion=champion,
        run_link="#/experiments/1/runs/r1",
    )
    first = card.splitlines()[0]
    assert "Against champion v2 on the same 360 test rows: accuracy 0.9722 vs 0.9778" in first
    assert "2 rows only this version gets right, 4 only the champion; McNemar p = 0.69" in first
    assert "| accuracy | 0.9722 | 0.9778 | **-0.0056 (-0.6%) worse** |" in card
    assert "| macro-F1 | 0.9720 | 0.9720 | same |" in card
    assert "params changed (`git diff 1111111aaaaa 4ac9549e0f1a -- params.yaml`)" in card
    assert "[the training run](#/experiments/1/runs/r1)" in card


def test_a_failed_gate_and_no_champion() -> None:
    r = reports()
    r.gates["passed"] = False
    r.gates["gates"]["max_p99_ms"].update(value=9.0, passed=False)
    r.evaluation.pop("champion", None)
    card = model_card(reports=r, tags=TAGS, champion=None, run_link=None)
    assert card.startswith(
        "**Gates FAILED: max_p99_ms. No champion yet: nothing to compare with.**"
    )
    assert "| max_p99_ms | 9 | <= 5 | **FAIL** |" in card
    assert "champion v" not in card and "Evidence:" not in card
    # per-class recall and the data validation summary, from the real reports
    assert "| recall | 0.972 |" in card
    evaluated = json.loads((REPO / "data/reports/validate.json").read_text())["evaluated"]
    assert f"**Data validation** passed: {evaluated} expectations, 0 failed" in card
