"""`modelyard tune`: search the training parameters (wiring only: pipelines/tune.py)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelyard.common import ParamsOpt, console, err_console, guard, load

if TYPE_CHECKING:
    from pipelines.config import Params
    from pipelines.tune import Outcome

app = typer.Typer()
PARAMS = Path("params.yaml")

TUNE_EXIT_CODES = (
    "Exit codes:\n\n"
    "0  the budget is spent: the best values are printed (and written to params.yaml as a "
    "diff to commit, unless --no-write).\n\n"
    "1  no trial completed (each failed: the first error is printed), or MLflow failed.\n\n"
    "2  bad input, nothing written: an unknown or untunable parameter in tune.space, an "
    "empty range, an objective the family does not produce, a budget of zero, a storage "
    "that cannot be opened, --join of a study that does not exist or searches other "
    "parameters."
)


@app.command("tune", epilog=TUNE_EXIT_CODES)
def tune(
    join: Annotated[
        str | None,
        typer.Option(
            help="Join the study STUDY (its space and budget) as one more worker, on this "
            "machine or another with the same storage (tune.storage)."
        ),
    ] = None,
    trials: Annotated[
        int | None, typer.Option(help="The study's budget in trials (default tune.trials).")
    ] = None,
    minutes: Annotated[
        float | None, typer.Option(help="This worker's time budget (default tune.minutes).")
    ] = None,
    write: Annotated[
        bool,
        typer.Option(
            "--write/--no-write",
            help="Write the best values into params.yaml (printed as a diff to commit).",
        ),
    ] = True,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Search the training parameters of params.yaml's tune.space with Optuna (TPE, seeded;
    trials pruned on their validation curve), each trial a child run of the study's MLflow
    run, scored on the validation split only: the test split is never read while tuning.

    Nothing is registered: the best values go into params.yaml, and `modelyard run` (or a
    commit to CI) trains, evaluates on the test split and registers them through the same
    gates and review as any change. Pictures (history, importances, parallel coordinates)
    go to .modelyard/tune/STUDY/ and onto the study's run.
    """
    from pipelines import tune as tuning

    params, root = guard("tune", lambda: load(params_file))
    if trials is not None and trials < 0:
        err_console.print("[bold red]tune failed:[/] --trials must be 0 or more")
        raise typer.Exit(2)
    update = {k: v for k, v in (("trials", trials), ("minutes", minutes)) if v is not None}
    if update:
        params = params.model_copy(update={"tune": params.tune.model_copy(update=update)})
    outcome = _search(params, root, join)
    guard("tune", lambda: tuning.finish(params, root, outcome))
    _report(outcome, root)
    if write and outcome.best_values:
        before, after = guard("tune", lambda: _write(params_file, outcome))
        diff = difflib.unified_diff(
            before.splitlines(), after.splitlines(), "params.yaml", "params.yaml", lineterm=""
        )
        text = "\n".join(diff)
        console.print(text or "params.yaml already holds the best values", markup=False)


def _search(params: Params, root: Path, join: str | None) -> Outcome:
    """The search with a progress bar: trials done of the budget, the best value so far."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pipelines import tune as tuning

    with Progress(
        TextColumn("tune {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        console=err_console,
    ) as bar:
        task = bar.add_task("", total=None, best="")

        def progress(outcome: Outcome) -> None:
            best = (
                f"best {outcome.objective} {outcome.best_value:.4f} "
                if outcome.best_value is not None
                else ""
            )
            bar.update(
                task,
                description=outcome.study,
                total=outcome.budget or None,
                completed=outcome.complete + outcome.pruned,
                best=f"{best}({outcome.pruned} pruned, {outcome.failed} failed)",
            )

        return guard("tune", lambda: tuning.search(params, root, join=join, progress=progress))


def _report(outcome: Outcome, root: Path) -> None:
    console.print(
        f"study {outcome.study} ({outcome.storage}): {outcome.complete} complete, "
        f"{outcome.pruned} pruned, {outcome.failed} failed of {outcome.budget}; this worker "
        f"ran {len(outcome.ran)}; MLflow run {outcome.parent_run_id}",
        markup=False,
    )
    console.print(
        f"best {outcome.objective} {outcome.best_value:.4f} with "
        + ", ".join(f"{k}={v}" for k, v in outcome.best_values.items()),
        markup=False,
    )
    console.print(
        f"epochs run: {outcome.epochs_run}; saved by pruning (estimate): "
        f"{outcome.pruning_saved_epochs}",
        markup=False,
    )
    for path in outcome.pictures:
        console.print(f"picture: {path.relative_to(root)}", markup=False)


def _write(params_file: Path, outcome: Outcome) -> tuple[str, str]:
    from pipelines import init

    return init.set_values(params_file, outcome.best_values)
