"""Training that learns from production labels (issue 13, item 2): ingest takes the
harvested rows, prepare splits them without moving the base split, validate checks them,
training weighs them, evaluate scores the production test set against the champion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Data, Evaluate, FeaturePattern, Prepare, ProductionSource, Train
from pipelines.models import family
from pipelines.stages import ingest, prepare
from pipelines.stages.evaluate import decide, headline
from pipelines.stages.register import Reports, model_card
from tests.conftest import REPO, Project
from tests.pipelines import production_data

DIGITS = Data(features=FeaturePattern(prefix="pixel_", count=64), labels=list(range(10)))
DAY = 86_400.0


# -- ingest ----------------------------------------------------------------------------------


def test_last_days_counts_from_the_newest_label_not_from_today(tmp_path: Path) -> None:
    frame = production_data.labelled(10, every_s=DAY)  # one label a day
    production_data.write(tmp_path, frame)
    cfg = ProductionSource(last_days=3.5)

    rows, skipped = ingest.production_rows(cfg, DIGITS, tmp_path)

    # The newest 4 (days 9, 8, 7, 6): however long ago they were labelled.
    assert list(rows["prediction_id"]) == [f"p{i:06d}" for i in (6, 7, 8, 9)]
    assert skipped == 6
    assert list(rows.columns) == list(frame.columns)
    again, _ = ingest.production_rows(cfg, DIGITS, tmp_path)
    pd.testing.assert_frame_equal(rows, again)  # a re-run takes the same rows


@pytest.mark.parametrize("state", ["missing", "disabled"])
def test_no_production_file_gives_an_empty_table_with_the_columns(
    tmp_path: Path, state: str
) -> None:
    if state == "disabled":
        production_data.write(tmp_path, production_data.labelled(5))
    rows, skipped = ingest.production_rows(
        ProductionSource(enabled=state != "disabled"), DIGITS, tmp_path
    )
    assert rows.empty and skipped == 0
    assert list(rows.columns) == [*production_data.FEATURES, "label", *production_data.PROVENANCE]
    assert rows["labelled_at"].dtype == np.float64 and rows["label"].dtype == np.int64


# -- prepare: pure parts --------------------------------------------------------------------


def test_a_production_row_keeps_its_split_when_more_labels_arrive() -> None:
    cfg = Prepare(production_test_size=0.3, production_val_size=0.1)
    first = production_data.labelled(400)
    more = pd.concat([first, production_data.labelled(600, start=400, seed=1)])

    def where(frame: pd.DataFrame) -> dict[str, str]:
        parts = prepare.split_production(frame, cfg)
        return {pid: name for name, part in parts.items() for pid in part["prediction_id"]}

    before, after = where(first), where(more.sample(frac=1, random_state=3))  # any order
    assert {pid: after[pid] for pid in before} == before
    shares = pd.Series(after).value_counts(normalize=True)
    assert shares["test_production"] == pytest.approx(0.3, abs=0.05)
    assert shares["val"] == pytest.approx(0.1, abs=0.03)


def test_the_hash_share_of_an_id_is_pinned() -> None:
    """sha256's first 8 bytes over 2**64: the same number on every machine and release (a
    change would move rows between the production splits)."""
    assert prepare.hash_share("p000001") == 0.6557955859592524
    assert prepare.hash_share("p000002") == 0.4039318902627973


def test_repeats_of_base_rows_and_of_earlier_labels_are_dropped() -> None:
    base = production_data.digits().astype("int64")  # as pandas reads the raw CSV
    production = production_data.labelled(6)
    # Row 1 repeats a base image (ints in the CSV, floats from harvest: still a repeat);
    # row 4 repeats row 2's image but was labelled later.
    production.loc[1, production_data.FEATURES] = base.loc[0, production_data.FEATURES].astype(
        float
    )
    production.loc[4, production_data.FEATURES] = production.loc[2, production_data.FEATURES]

    kept, dropped = prepare.distinct_production(production, base, DIGITS)

    assert dropped == 2
    assert list(kept["prediction_id"]) == ["p000000", "p000002", "p000003", "p000005"]


# -- prepare + validate on a project --------------------------------------------------------


def test_base_split_is_byte_for_byte_the_same_with_production_rows(project: Project) -> None:
    project.stages("ingest", "prepare")
    prepared = project.root / "data/prepared"
    test_before = (prepared / "test.parquet").read_bytes()
    base_train = pd.read_parquet(prepared / "train.parquet")
    assert (base_train["source"] == "base").all()
    assert pd.read_parquet(prepared / "test_production.parquet").empty

    production = production_data.labelled(200)
    production.loc[0, production_data.FEATURES] = base_train.iloc[0][
        production_data.FEATURES
    ].astype(float)  # the base data already has this input
    production_data.write(project.root, production)
    project.stages("ingest", "prepare", "validate")

    assert (prepared / "test.parquet").read_bytes() == test_before
    train = pd.read_parquet(prepared / "train.parquet")
    base_rows = train[train["source"] == "base"].drop(columns="source")
    pd.testing.assert_frame_equal(
        base_rows.reset_index(drop=True),
        base_train.drop(columns="source").reset_index(drop=True),
        check_dtype=False,  # int pixels become float beside the harvested rows
    )
    held_out = pd.read_parquet(prepared / "test_production.parquet")
    val = pd.read_parquet(prepared / "val.parquet")
    n_train = int((train["source"] == "production").sum())
    n_val = int((val["source"] == "production").sum())
    assert n_train and n_val and len(held_out)
    assert n_train + n_val + len(held_out) == 200 - 1  # the repeat of a base row is dropped
    assert list(held_out.columns) == list(production.columns)  # provenance kept
    assert production.loc[0, "prediction_id"] not in set(held_out["prediction_id"])
    report = project.report("validate.json")
    assert report["production_rows"] == 200 and report["production_failed"] == 0
    assert report["rows"]["test_production"] == len(held_out)
    html = (project.root / "data/reports/validate.html").read_text()
    assert "Production rows: 200, checked against the same contract" in html


def test_a_bad_production_row_fails_validate_and_says_where(project: Project) -> None:
    production = production_data.labelled(50)
    production.loc[[3, 8], "pixel_20"] = [99.0, 42.0]  # outside data.feature_range
    production.loc[5, "prediction_id"] = production.loc[6, "prediction_id"]
    production_data.write(project.root, production)
    project.stages("ingest", "prepare")

    result = project.cli("validate")

    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "production.pixel_20: expect_column_values_to_be_between: 2 bad value(s)" in out
    assert "production_provenance.prediction_id: expect_column_values_to_be_unique" in out
    report = project.report("validate.json")
    assert report["success"] is False and report["production_failed"] == 2
    assert report["failed"] == 2  # the base data is fine


# -- train: the weight changes what is learned ----------------------------------------------


def _contradicted(n_production: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two clusters (class 0 near -2, class 1 near +2) and production rows at the class-0
    centre labelled 1: a contradiction only a heavy weight makes the model believe."""
    rng = np.random.default_rng(0)
    x0 = rng.normal(-2, 1, size=(200, 2))
    x1 = rng.normal(2, 1, size=(200, 2))
    xp = rng.normal(-2, 0.1, size=(n_production, 2))
    x = np.vstack([x0, x1, xp]).astype(np.float32)
    y = np.array([0] * 200 + [1] * 200 + [1] * n_production, dtype=np.int64)
    production = np.array([False] * 400 + [True] * n_production)
    probe = np.array([[-2.0, -2.0]], dtype=np.float32)
    return x, y, production, probe


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_production_weight_changes_what_is_learned(model: str) -> None:
    x, y, production, probe = _contradicted(10)
    cfg = Train(model=model, epochs=60, patience=60, batch_size=64, lr=0.01, mlp={"hidden": [16]})
    adapter = family(model)

    def predicted(weight: float) -> int:
        w = np.where(production, weight, 1.0).astype(np.float32)
        fitted = adapter.fit(cfg, x, y, x, y, 2, 0, None, sample_weight=w)
        return int(adapter.predict_proba(fitted.model, probe).argmax(1)[0])

    assert predicted(1e-6) == 0  # ten rows that count for nothing: the base data wins
    assert predicted(500.0) == 1  # the same ten rows at a heavy weight flip the answer


def test_only_production_rows_get_the_weight() -> None:
    from pipelines.dataset import sample_weight

    frame = pd.DataFrame({"source": ["base", "production", "base"]})
    weights = sample_weight(frame, 3.0)
    assert weights is not None and weights.tolist() == [1.0, 3.0, 1.0]
    assert sample_weight(frame.iloc[[0, 2]], 3.0) is None  # no production rows: unweighted
    assert sample_weight(pd.DataFrame({"x": [1]}), 3.0) is None


# -- evaluate: the production gate, pure ----------------------------------------------------


def _metrics(**over: Any) -> dict[str, Any]:
    base = {
        "accuracy": 0.97,
        "macro_f1": 0.97,
        "min_class_recall": 0.9,
        "noise_invariance": 0.99,
        "test_rows": 360,
        "latency": {
            "batch_1": {"p50_ms": 0.01, "p99_ms": 0.1},
            "batch_256": {"p50_ms": 1.0, "p99_ms": 1.2},
        },
    }
    return {**base, **over}


SCORED = {"scored": True, "rows": 120, "accuracy": 0.9, "macro_f1": 0.89}
SAME = {
    "version": "1",
    "compared": True,
    "rows": 360,
    "accuracy": 0.97,
    "only_champion_right": 3,
    "only_challenger_right": 3,
    "p_value": 1.0,
}
WORSE = {
    **SAME,
    "rows": 120,
    "accuracy": 0.99,
    "only_champion_right": 20,
    "only_challenger_right": 1,
    "p_value": 1e-5,
}


def _gates(cfg: Evaluate, m: dict[str, Any]) -> dict[str, bool]:
    return {g.name: g.passed for g in decide(cfg, m)}


def test_the_production_gate_applies_only_when_scored_and_compared() -> None:
    cfg = Evaluate()
    both = _gates(cfg, _metrics(production=SCORED, champion=SAME, champion_production=WORSE))
    assert both["not_worse_than_champion"] is True
    assert both["not_worse_than_champion_on_production"] is False  # significantly worse there
    better = {**WORSE, "only_champion_right": 1, "only_challenger_right": 20}
    assert _gates(cfg, _metrics(production=SCORED, champion=SAME, champion_production=better))[
        "not_worse_than_champion_on_production"
    ]
    few = {"scored": False, "rows": 12, "reason": "12 production test rows, fewer than 30"}
    assert "not_worse_than_champion_on_production" not in _gates(
        cfg, _metrics(production=few, champion=SAME)
    )
    assert "not_worse_than_champion_on_production" not in _gates(
        cfg,
        _metrics(production=SCORED),  # no champion
    )


def test_headline_has_production_numbers_only_when_scored() -> None:
    scored = headline(_metrics(production=SCORED), [])
    assert scored["production_accuracy"] == 0.9 and scored["production_macro_f1"] == 0.89
    assert scored["production_rows"] == 120
    absent = headline(_metrics(production={"scored": False, "rows": 0, "reason": "none"}), [])
    assert absent["production_rows"] == 0 and "production_accuracy" not in absent


# -- register: the card -----------------------------------------------------------------------


def test_the_card_shows_the_production_scores_and_both_comparisons() -> None:
    real = Reports.read(REPO / "data/reports")
    evaluation = {
        **real.evaluation,
        "accuracy": 0.975,
        "champion": SAME,
        "production": SCORED,
        "champion_production": {
            **WORSE,
            "accuracy": 0.8,
            "only_champion_right": 2,
            "only_challenger_right": 14,
            "p_value": 0.004,
        },
    }
    reports = Reports(real.gates, evaluation, real.validation, real.optimization)
    tags = {
        "metric.accuracy": "0.9750",
        "metric.production_accuracy": "0.9000",
        "metric.production_macro_f1": "0.8900",
        "data.production_rows": "400",
        "data.production_rows.train": "240",
        "data.production_rows.val": "40",
        "data.production_rows.test": "120",
    }
    champion = ("1", {"metric.accuracy": "0.9700", "metric.production_accuracy": "0.7000"})

    card = model_card(reports=reports, tags=tags, champion=champion, run_link=None)

    assert (
        "**Production labels**: 400 rows in this version's data (train 240, val 40, held out "
        "120). On the 120 held-out production test rows: accuracy 0.9000, macro-F1 0.8900; "
        "champion v1 on the same rows: accuracy 0.8000; 14 rows only this version gets right, "
        "2 only the champion; McNemar p = 0.004." in card
    )
    # The champion's production accuracy is the one measured on these rows, not its tag.
    assert "| production accuracy | 0.9000 | 0.8000 | +0.1 (+12.5%) |" in card
    plain = model_card(
        reports=Reports(real.gates, real.evaluation, real.validation, real.optimization),
        tags={"metric.accuracy": "0.9750"},
        champion=None,
        run_link=None,
    )
    assert "production accuracy" not in plain  # never scored on production: no such row
