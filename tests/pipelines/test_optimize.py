"""optimize: the pure selection, and the stage on real models measured on this machine."""

from __future__ import annotations

import random
from pathlib import Path

import onnx
import pytest

from pipelines.stages.optimize import METRICS, Row, choose
from tests.conftest import REPO, Project, new_project


def row(name: str, acc: float, p99: float, size: int = 1000, **other: float) -> Row:
    return Row(name, acc, size, other.get("p50", p99), p99, 1.0, 1.0, 1000.0)


# -- choose(): a table in, a choice out ---------------------------------------------------------


def test_fastest_within_budget_wins() -> None:
    table = [row("fp32", 0.990, 0.30), row("int8", 0.988, 0.10), row("ort", 0.990, 0.25)]
    choice = choose(table, "p99_ms_batch1", budget_points=0.5)
    assert choice.variant == "int8" and choice.rejected == {}


def test_a_variant_over_budget_is_never_chosen_however_fast() -> None:
    table = [row("fp32", 0.990, 0.30), row("int8", 0.984, 0.01)]  # 0.6 points worse
    choice = choose(table, "p99_ms_batch1", budget_points=0.5)
    assert choice.variant == "fp32"
    assert "int8" in choice.rejected and "0.60 points" in choice.rejected["int8"]


@pytest.mark.parametrize(("drop", "allowed"), [(0.5, True), (0.5 + 1e-6, False), (0.49, True)])
def test_the_edge_of_the_budget(drop: float, allowed: bool) -> None:
    table = [row("fp32", 0.99, 0.30), row("int8", 0.99 - drop / 100, 0.10)]
    assert (choose(table, "p99_ms_batch1", 0.5).variant == "int8") is allowed


def test_ties_go_to_the_smaller_file_then_to_the_reference() -> None:
    table = [row("fp32", 0.99, 0.100, size=4000), row("int8", 0.99, 0.101, size=1000)]
    assert choose(table, "p99_ms_batch1", 0.5, tie_tolerance=0.02).variant == "int8"
    assert choose(table, "p99_ms_batch1", 0.5, tie_tolerance=0.0).variant == "fp32"
    same = [row("fp32", 0.99, 0.1), row("ort", 0.99, 0.1)]
    assert choose(same, "p99_ms_batch1", 0.5).variant == "fp32"


def test_a_better_variant_than_the_reference_is_fine() -> None:
    table = [row("fp32", 0.95, 0.3), row("pruned", 0.97, 0.2)]  # negative drop
    assert choose(table, "p99_ms_batch1", 0.0).variant == "pruned"


def test_random_tables_never_break_the_budget() -> None:
    rng = random.Random(0)
    for _ in range(500):
        table = [row("fp32", rng.uniform(0.9, 1), rng.uniform(0.01, 1), rng.randint(1, 9))]
        table += [row(f"v{i}", rng.uniform(0.85, 1), rng.uniform(0.01, 1), rng.randint(1, 9))
                  for i in range(rng.randint(0, 6))]  # fmt: skip
        budget = rng.choice([0.0, 0.25, 0.5, 2.0])
        metric = rng.choice(METRICS)
        pick = next(r for r in table if r.variant == choose(table, metric, budget).variant)
        assert (table[0].accuracy - pick.accuracy) * 100 <= budget + 1e-9
        eligible = [r for r in table if (table[0].accuracy - r.accuracy) * 100 <= budget + 1e-9]
        assert pick.metric(metric) == min(r.metric(metric) for r in eligible)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        choose([row("fp32", 0.9, 0.1)], "speed", 0.5)
    with pytest.raises(ValueError, match="no reference"):
        choose([row("int8", 0.9, 0.1)], "p99_ms_batch1", 0.5)


# -- the stage on real models -------------------------------------------------------------------


def ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.slow
def test_stage_builds_measures_and_writes_the_choice(project: Project) -> None:
    project.set_params(train={"epochs": 12, "patience": 4})
    project.stages("ingest", "prepare", "validate", "train", "export", "optimize")
    report = project.report("optimize.json")
    variants = report["variants"]
    assert set(variants) == {"fp32", "fp32-ort", "int8-dynamic", "int8-static", "pruned",
                             "pruned-int8-static"}  # fmt: skip
    folder = project.root / "data/models/optimized"
    assert "QuantizeLinear" in ops(folder / "variants/int8-static.onnx")  # QDQ format
    assert ops(folder / "variants/int8-dynamic.onnx") & {
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
    }
    for name in ("int8-static", "int8-dynamic"):  # int8 weights: a much smaller file
        assert variants[name]["size_bytes"] < 0.6 * variants["fp32"]["size_bytes"]
    # Half of the pruned model's conv/linear weights are exactly zero.
    pruned = onnx.load(str(folder / "variants/pruned.onnx"))
    from onnx import numpy_helper

    weights = [
        numpy_helper.to_array(t) for t in pruned.graph.initializer if t.dims and len(t.dims) >= 2
    ]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros >= 0.45
    # The choice is one of the table's, within budget, and is the file evaluate will score.
    chosen = report["chosen"]
    assert report["accuracy_drop_points"] <= 0.5 + 1e-9
    assert (folder / "model.onnx").read_bytes() == (folder / f"variants/{chosen}.onnx").read_bytes()
    assert isinstance(report["cpu"]["int8_acceleration"], bool) and "avx2" in report["cpu"]["flags"]
    md = (project.root / "data/reports/optimize.md").read_text()
    assert f"Chosen: **{chosen}**" in md and "| int8-static |" in md
    assert (project.root / "data/reports/optimize.png").stat().st_size > 10_000
    # The quantizer's scratch file stays in the stage's temporary folder.
    assert not Path("sym_shape_infer_temp.onnx").exists()
    assert not (project.root / "sym_shape_infer_temp.onnx").exists()


@pytest.mark.slow
def test_sklearn_models_get_the_variants_that_apply(make_project: object) -> None:
    project: Project = make_project(REPO / "pipelines/examples/wine.params.yaml")  # type: ignore[operator]
    project.stages("ingest", "prepare", "validate", "train", "export", "optimize")
    report = project.report("optimize.json")
    assert {"fp32", "fp32-ort"} <= set(report["variants"])
    assert "no weights to prune" in report["not_applicable"]["pruned"]
    for name in ("int8-dynamic", "int8-static"):  # ONNX-ML operators: nothing to quantize
        assert name in report["not_applicable"] or name in report["variants"]
    assert report["chosen"] in report["variants"]


@pytest.mark.slow
def test_choice_flips_to_int8_for_the_wide_mlp_and_stays_fp32_for_the_cnn(tmp_path: Path) -> None:
    """The shipped configs, measured here: int8 pays for a 4.3M-parameter MLP, not for the
    small CNN. (Measured, so it depends on the CPU; on this machine type the margins are
    about 3x for the MLP and about 10% against int8 for the CNN.)"""
    chosen = {}
    for name, params in (("cnn", REPO / "params.yaml"),
                         ("wide", REPO / "pipelines/examples/wide-mlp.params.yaml")):  # fmt: skip
        project = new_project(tmp_path / name, params)
        # Shipped optimize settings (no FAST_OPTIMIZE); fewer timed calls for the big model.
        settings = project.params()["optimize"]
        project.set_params(optimize={**settings, **({"runs": 600, "rounds": 6} if name == "wide" else {}),
                                     "finetune_epochs": 1},
                           train={"epochs": 8 if name == "wide" else 20})  # fmt: skip
        if name == "cnn":
            project.set_params(
                optimize={**project.params()["optimize"], "runs": 2000, "rounds": 10}
            )
        project.stages("ingest", "prepare", "validate", "train", "export", "optimize")
        chosen[name] = project.report("optimize.json")
    assert chosen["cnn"]["chosen"] in {"fp32", "fp32-ort", "pruned"}, chosen["cnn"]["variants"]
    assert "int8" in chosen["wide"]["chosen"], chosen["wide"]["variants"]
    wide = chosen["wide"]["variants"]
    assert wide[chosen["wide"]["chosen"]]["size_bytes"] < 0.3 * wide["fp32"]["size_bytes"]
