"""`modelyard init`: describe a dataset of your own in params.yaml and a GX suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelyard.common import ParamsOpt, console, guard

app = typer.Typer()
PARAMS = Path("params.yaml")

INIT_CODES = (
    "Exit codes: 0 written (or already so); 1 the data cannot be used as it is (no such "
    "target column; missing, float or boolean labels; one label or over 100; a label with "
    "under 3 rows; text or missing feature values); 2 a "
    "usage error (the file is not under paths.sources, a bad --name, params.yaml missing) "
    "or a refusal to overwrite a different suite or params of your own without --force."
)


@app.command(epilog=INIT_CODES)
def init(
    source: Annotated[
        str,
        typer.Option(help="A CSV or Parquet file under data/sources/ (or sklearn:<name>)."),
    ],
    target: Annotated[str, typer.Option(help="The column that holds the label.")],
    name: Annotated[
        str | None,
        typer.Option(help="Registered model name (default: <file name>-classifier)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite a different suite or params of your own.")
    ] = False,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Read the --source file and write the params for it (ingest, data, validate, train, evaluate
    floors, register) and a Great Expectations suite, then print what it chose.

    Every other key of params.yaml, and its comments, stay as they are. Then:
    `modelyard run`.
    """
    from pipelines import init as setup

    written = guard(
        "init",
        lambda: setup.run(params_file, source=source, target=target, name=name, force=force),
    )
    table = Table(title=f"modelyard init: {source}", show_header=True)
    for col in ("params key", "value", "why"):
        table.add_column(col, overflow="fold")
    for c in written.proposal.choices:
        value = json.dumps(c.value) if not isinstance(c.value, str) else c.value
        if len(value) > 48:
            value = value[:45] + "..."
        mark = "" if c.key in written.changed else " [dim](unchanged)[/]"
        table.add_row(c.key, value + mark, c.why)
    console.print(table)
    suite = written.proposal.suite_path
    n = len(written.proposal.suite["expectations"])
    verb = "wrote" if written.suite_written else "kept (the same)"
    changed = len(written.changed)
    console.print(
        f"init: {verb} {suite} ({n} expectations); {changed} params changed in "
        f"{written.params_path.name}. Check the evaluate floors, then: modelyard run"
    )
