"""`modelyard harvest`: production feedback labels into a training dataset (wiring only)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from core.errors import ModelyardError
from modelyard.common import ParamsOpt, console, err_console, load, log
from modelyard.monitor import _log_dir

if TYPE_CHECKING:
    from monitoring.harvest import Harvested

app = typer.Typer()
PARAMS = Path("params.yaml")
FAILED = 2

HARVEST_EXIT_CODES = (
    "Exit codes:\n\n"
    "0  done, also when nothing new arrived.\n\n"
    "2  an error: no log folder, bad params or GX suite, an unreadable manifest, another "
    "harvest running, `dvc add` failed (the message says what to do), any crash."
)


@app.command("harvest", epilog=HARVEST_EXIT_CODES)
def harvest(
    log_dir: Annotated[
        Path | None,
        typer.Option(
            help="The service's inference log folder (pods' subfolders included). Default: "
            "$MODELYARD_LOG_DIR, else .modelyard/inference-log."
        ),
    ] = None,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Join feedback labels to their logged predictions: the production training data.

    Reads the log's lines added since the last harvest (LOG/.harvest/manifest.json says how
    far each file was read; pending.parquet beside it remembers unlabelled predictions for
    harvest.pending_days, so late labels still join after log rotation). Writes, under
    paths.production: labelled.parquet (one row per prediction id, the last label wins,
    with its model, prediction, times and log file), rejected.parquet (rows the training
    contract and the GX suite refused, with the reason) and harvest.json (the counts);
    then `dvc add`s the Parquet files (harvest.dvc_add, in a DVC project). The log writer
    deletes a rotated file only once harvest has read it.
    """

    def fail(message: str) -> typer.Exit:
        err_console.print(f"[bold red]harvest failed:[/] {message}", highlight=False)
        return typer.Exit(FAILED)

    try:
        from monitoring import harvest as harvesting

        params, root = load(params_file)
        with console.status("harvest...") as status:
            done = harvesting.harvest(
                params, root=root, log_dir=_log_dir(root, log_dir), progress=status.update
            )
    except ModelyardError as exc:
        raise fail(_plain(str(exc))) from None
    except Exception as exc:  # a crash is an error (2), with the way to its traceback
        log.debug("harvest crashed", exc_info=exc)
        raise fail(
            f"unexpected {type(exc).__name__}: {_plain(str(exc))} (a bug in modelyard or a "
            "library under it; `modelyard -v harvest ...` shows the traceback)"
        ) from None
    console.print(summary_line(done, root), highlight=False)


def summary_line(done: Harvested, root: Path) -> str:
    """One line: what this harvest added, replaced, rejected and left waiting."""
    line = (
        f"harvested {done.new + done.replaced:,} labels: {done.new:,} new, "
        f"{done.replaced:,} replaced ({done.conflicts:,} conflicts); {done.rejected:,} rejected "
        f"({_rel(done.path.parent / 'rejected.parquet', root)}); {done.pending:,} predictions "
        "wait for a label"
    )
    if done.orphans:
        line += f"; {done.orphans:,} labels wait for their prediction"
    if done.malformed:
        line += f"; {done.malformed:,} malformed log lines skipped"
    return f"{line} ({done.rows:,} rows in {_rel(done.path, root)})"


def _rel(path: Path, root: Path) -> Path:
    return path.relative_to(root) if path.is_relative_to(root) else path


def _plain(text: str) -> str:
    from rich.markup import escape

    return escape(text)
