"""The model card register writes as the version's description: made from the reports of
a real pipeline run (data/reports, as the repository holds them), with a champion beside."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

from pipelines.stages.register import Reports, model_card
from registry import card
from registry.comparison import Comparison, compare_split
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


def shown(text: str) -> str:
    """The card as the MLflow UI shows it: without the section markers (comments)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("<!-- "))


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
    text = model_card(
        reports=reports(accuracy=0.9722, champion=compared),
        tags=TAGS,
        champion=champion,
        run_link="#/experiments/1/runs/r1",
    )
    first = shown(text).splitlines()[0]
    assert "Against champion v2 on the same 360 test rows: accuracy 0.9722 vs 0.9778" in first
    assert "2 rows only this version gets right, 4 only the champion; McNemar p = 0.69" in first
    assert "| accuracy | 0.9722 | 0.9778 | **-0.0056 (-0.6%) worse** |" in text
    assert "| macro-F1 | 0.9720 | 0.9720 | same |" in text
    assert "params changed (`git diff 1111111aaaaa 4ac9549e0f1a -- params.yaml`)" in text
    assert "[the training run](#/experiments/1/runs/r1)" in text


def test_a_failed_gate_and_no_champion() -> None:
    r = reports()
    r.gates["passed"] = False
    r.gates["gates"]["max_p99_ms"].update(value=9.0, passed=False)
    r.evaluation.pop("champion", None)
    text = model_card(reports=r, tags=TAGS, champion=None, run_link=None)
    assert shown(text).startswith(
        "**Gates FAILED: max_p99_ms. No champion yet: nothing to compare with.**"
    )
    assert "| max_p99_ms | 9 | <= 5 | **FAIL** |" in text
    assert "champion v" not in text and "Evidence:" not in text
    # per-class recall and the data validation summary, from the real reports
    assert "| recall | 0.972 |" in text
    evaluated = json.loads((REPO / "data/reports/validate.json").read_text())["evaluated"]
    assert f"**Data validation** passed: {evaluated} expectations, 0 failed" in text


def test_the_gate_rewrites_only_the_champion_section() -> None:
    """When champion moves, the gate replaces the registered comparison with one
    recomputed against the new champion; the gates, validation and evidence stay."""
    r = reports()
    r.evaluation.pop("champion", None)
    registered = model_card(reports=r, tags=TAGS, champion=None, run_link="#/runs/r1")
    assert "No champion yet" in registered
    y = np.array([0, 1, 2] * 20)
    champion = y.copy()
    challenger = np.where(np.arange(60) < 20, (y + 1) % 3, y)  # 20 rows wrong
    versus = Comparison(
        "digits-classifier-production v4",
        0.05,
        [compare_split("test", y, challenger, champion, ["0", "1", "2"], alpha=0.05)],
    )
    theirs = {**TAGS, "git.commit": "2222222bbbbbbb", "optimize.size_bytes": "40000"}
    body = card.comparison_markdown(
        versus,
        mine=TAGS,
        theirs=theirs,
        at="2026-11-26T07:00",
        heading="Against the current champion,",
    )
    refreshed = card.replace_section(registered, card.SECTION, body)
    first = shown(refreshed).splitlines()[0]
    assert "Against the current champion, digits-classifier-production v4" in first
    assert "**WORSE than the champion**" in first
    assert "accuracy 0.6667 vs 1.0000; 0 rows only this version gets right, 20 only" in refreshed
    assert "| recall 0 | 0.6500 | 1.0000 | **-0.35 (-35.0%) worse** |" in refreshed
    assert "| size, bytes | 42,405 | 40,000 | **+2405 (+6.0%) worse** |" in refreshed
    assert "The champion came from `2222222bbbbb`" in refreshed
    assert "No champion yet" not in refreshed
    # everything outside the section is the registered card's
    assert (
        refreshed.split("<!-- /modelyard:vs-champion -->")[1]
        == registered.split("<!-- /modelyard:vs-champion -->")[1]
    )
    # and a second refresh replaces, not stacks
    again = card.replace_section(refreshed, card.SECTION, "**Against the current champion, v5**")
    assert (
        again.count("<!-- modelyard:vs-champion -->") == 1
        and "v4" not in shown(again).split("\n")[0]
    )


def test_the_gate_audit_summary_says_who_what_when_and_the_deploy() -> None:
    from datetime import UTC, datetime

    from registry.store import Deploy, Entry

    at = datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
    approved = {
        "candidate": "digits-classifier v7",
        "run_id": "r1",
        "author": "dana-gh",
        "onnx_sha256": "ab" * 32,
        "gates": {"min_accuracy": 0.9861, "max_p99_ms": None},
        "comparison": {"summary": "vs champion p v2 on the same 360 test rows: accuracy"},
        "comment": "beats v2 on 8s",
    }
    entries = [
        Entry(1, at, "approved", "p", "3", "rui", approved),
        Entry(2, at, "promote", "p", "3", "rui", {"previous": "2"}),
        Entry(3, at, "deploy-failed", "p", "3", "gate", {"attempts": 1, "error": "HTTP 500"}),
    ]
    failed = Deploy("p", "3", "failed", 1, "HTTP 500", at, at)
    text = card.audit_markdown(entries, deploy=failed, where="the gate_audit table")
    assert "full append-only log: the gate_audit table" in text
    assert "**approved by rui**: digits-classifier v7 (run `r1`, author dana-gh" in text
    assert 'comment: "beats v2 on 8s"' in text
    assert "gates recomputed from the run: min_accuracy 0.9861; not logged: ['max_p99_ms']" in text
    assert "comparison recomputed at approval: vs champion p v2" in text
    assert "promote by rui (previous 2)" in text
    assert "**deploy: failed** (attempts 1, since 2026-11-26T07:00:00+00:00, next attempt" in text
    assert "deploy: never requested" in card.audit_markdown([], deploy=None, where="x")
