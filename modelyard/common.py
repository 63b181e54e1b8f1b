"""What every command module shares: the consoles, loading params, the error guard."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core import settings
from core.errors import ModelyardError
from pipelines import config

console = Console(stderr=False)
err_console = Console(stderr=True)
log = logging.getLogger("modelyard")

T = TypeVar("T")

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="The params file (its folder is the project root).")
]

EXIT_CODES = (
    "Exit codes: 0 done; 1 the work failed (bad data, a failed gate, a refused promotion, "
    "an unreachable service); 2 a usage or configuration error (bad params, a missing "
    "file or variable)."
)


def load(path: Path) -> tuple[config.Params, Path]:
    """params.yaml, parsed and checked, and the project root (its folder)."""
    params = config.load(path)
    return params, path.resolve().parent


def guard(step: str, fn: Callable[[], T]) -> T:
    """Run a step; print a domain error cleanly and exit with its code."""
    try:
        return fn()
    except ModelyardError as exc:
        # The message is text, not markup: "[magnesium, proline]" must survive.
        err_console.print(f"[bold red]{step} failed:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(exc.exit_code) from None


def tracking(root: Path) -> str:
    """Point MLflow at this project's store; return its URI."""
    from pipelines import tracking as mlflow_tracking

    return mlflow_tracking.configure(root)


def registry(params_file: Path) -> Any:
    """The registry of the project whose params file is ``params_file``."""
    from registry.client import Registry

    _, root = guard("registry", lambda: load(params_file))
    return Registry(tracking(root))


def github_output(**values: str) -> None:
    """Step outputs for the next workflow steps, when running in GitHub Actions."""
    path = settings.current().github_output
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.writelines(f"{key}={value}\n" for key, value in values.items())


def gates_table(report: dict[str, Any]) -> Table:
    """The gate report (gates.json's shape) as a table."""
    verdict = "[green]all passed[/]" if report["passed"] else "[red]FAILED[/]"
    table = Table(title=f"gates: {verdict}")
    for col in ("gate", "value", "threshold", "result"):
        table.add_column(col)
    for g in report["gates"].values():
        mark = "[green]pass[/]" if g["passed"] else "[red]fail[/]"
        value = "n/a" if g["value"] is None else f"{g['value']:.4g}"
        table.add_row(g["name"], value, f"{g['op']} {g['threshold']:g}", mark)
    return table
