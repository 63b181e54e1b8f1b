"""The pipeline stages, one command each: what `dvc repro` runs (see dvc.yaml).

Each reads params.yaml (``--params``), runs its stage module (``pipelines.stages``), and
prints one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from modelyard.common import EXIT_CODES, ParamsOpt, console, err_console, gates_table, guard, load
from modelyard.common import tracking as use_store

app = typer.Typer()
PARAMS = Path("params.yaml")


@app.command(epilog=EXIT_CODES)
def ingest(params_file: ParamsOpt = PARAMS) -> None:
    """Materialize the raw dataset (ingest.source) as data/raw/dataset.csv."""
    from pipelines.stages import ingest as stage

    params, root = guard("ingest", lambda: load(params_file))
    r = guard("ingest", lambda: stage.run(params.ingest, params.data, params.paths, root))
    console.print(f"ingest: {r.rows} rows x {r.columns} columns -> {r.path}")


@app.command(epilog=EXIT_CODES)
def prepare(params_file: ParamsOpt = PARAMS) -> None:
    """Split the raw data into seeded, stratified train/val/test Parquet files."""
    from pipelines.stages import prepare as stage

    params, root = guard("prepare", lambda: load(params_file))
    r = guard(
        "prepare", lambda: stage.run(params.prepare, params.data, params.paths, params.seed, root)
    )
    console.print(
        f"prepare: {r.rows} (dropped {r.dropped_duplicates} duplicate rows, "
        f"{'stratified' if r.stratified else 'NOT stratified'})"
    )


@app.command(epilog=EXIT_CODES)
def validate(params_file: ParamsOpt = PARAMS) -> None:
    """Check the raw and prepared data with Great Expectations; stop on any failure.

    Writes data/reports/validate.json and a readable validate.html.
    """
    from pipelines.stages import validate as stage

    params, root = guard("validate", lambda: load(params_file))
    r = guard("validate", lambda: stage.run(params.validate_, params.data, params.paths, root))
    console.print(f"validate: {r.evaluated} expectations passed")


@app.command(epilog=EXIT_CODES)
def train(params_file: ParamsOpt = PARAMS) -> None:
    """Train the model named by train.model (cnn, mlp, logreg, gboost); logs to MLflow."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipelines.stages import train as stage

    params, root = guard("train", lambda: load(params_file))
    use_store(root)
    with Progress(
        TextColumn("train {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err_console,
    ) as progress:
        task = progress.add_task(params.train.model, total=params.train.epochs, status="")

        def on_epoch(e: Any) -> None:
            status = (
                f"loss {e.train_loss:.3f} val_loss {e.val_loss:.3f} val_acc {e.val_accuracy:.3f}"
            )
            progress.update(task, completed=e.epoch, status=status)

        r = guard("train", lambda: stage.run(params, root, on_epoch))
        progress.update(task, total=max(r.epochs_run, 1), completed=max(r.epochs_run, 1))
    best = f", best epoch {r.best_epoch}" if r.best_epoch else ""
    console.print(f"train: val accuracy {r.val_accuracy:.4f}{best}, MLflow run {r.run_id}")


@app.command(epilog=EXIT_CODES)
def export(params_file: ParamsOpt = PARAMS) -> None:
    """Export the trained model to ONNX and check parity with the native model."""
    from pipelines.stages import export as stage

    params, root = guard("export", lambda: load(params_file))
    use_store(root)
    r = guard("export", lambda: stage.run(params, root))
    console.print(
        f"export: {params.paths.onnx} ({r.size_bytes} bytes, opset {r.opset}), "
        f"parity max |diff| {r.parity.max_abs_diff:.2g} over {r.parity.rows} rows"
    )


@app.command(epilog=EXIT_CODES)
def optimize(params_file: ParamsOpt = PARAMS) -> None:
    """Build FP32/graph-optimized/int8/pruned variants, measure them here, pick one.

    The pick is the fastest by optimize.metric within optimize.accuracy_budget (accuracy
    points below FP32 on the validation split); evaluate and register use it.
    """
    from pipelines.stages import optimize as stage

    params, root = guard("optimize", lambda: load(params_file))
    use_store(root)
    with console.status("optimize: starting") as status:
        r = guard(
            "optimize", lambda: stage.run(params, root, lambda m: status.update(f"optimize: {m}"))
        )
    console.print(stage.markdown(r, params.optimize), markup=False, highlight=False, soft_wrap=True)
    console.print(f"optimize: chose {r.choice.variant} -> {params.paths.served_model}")


@app.command(epilog=EXIT_CODES)
def evaluate(params_file: ParamsOpt = PARAMS) -> None:
    """Score the ONNX model on the test set (quality, latency, behaviour, champion) and
    write the gate report. Gates are enforced by `register`."""
    from pipelines.stages import evaluate as stage

    params, root = guard("evaluate", lambda: load(params_file))
    use_store(root)
    r = guard("evaluate", lambda: stage.run(params, root))
    console.print(
        gates_table(
            {
                "gates": {g.name: g.__dict__ for g in r.gates},
                "passed": all(g.passed for g in r.gates),
            }
        )
    )


@app.command(epilog=EXIT_CODES)
def register(params_file: ParamsOpt = PARAMS) -> None:
    """Register the model as a new version with its lineage (alias `challenger`),
    only if every gate passed. Re-running with the same model creates nothing new."""
    from pipelines.stages import register as stage

    params, root = guard("register", lambda: load(params_file))
    use_store(root)
    r = guard("register", lambda: stage.run(params, root))
    verb = "registered" if r.created else "already registered"
    console.print(f"register: {verb} {r.name} v{r.version} (@{params.register_.alias})")
