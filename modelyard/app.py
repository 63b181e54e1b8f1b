"""The ``modelyard`` Typer app: the root command, logging, and the command groups."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from modelyard import (
    apikeys,
    harvest,
    init,
    monitor,
    pipeline,
    promotion,
    serving,
    stages,
    team,
    tune,
    webapp,
)
from modelyard.common import err_console

app = typer.Typer(
    name="modelyard",
    help=(
        "From a commit to a monitored production API.\n\n"
        "`init` describes a CSV/Parquet file of your own in params.yaml (and a data suite). "
        "The pipeline stages (ingest, prepare, validate, train, export, optimize, evaluate, "
        "register) are what `dvc repro` runs, one command each; `modelyard run` runs them all "
        "through DVC and prints a summary. Then: `promote`/`rollback` (the review gate; "
        "`approve` in team mode), `registry` (team server and users, webhook receiver and "
        "gate, reconciler), `build`/`serve` (the Bento), `deploy` "
        "(image, Kubernetes, record), `monitor` (drift jobs, Evidently UI), `harvest` "
        "(feedback labels from the inference log into training data), "
        "`keys` (the API's named keys and limits), `simulate-traffic`, `diff` (CI's PR "
        "comment), `webapp` (the web application)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (init, stages, pipeline, promotion, serving, monitor, harvest, tune):
    app.registered_commands.extend(module.app.registered_commands)
app.add_typer(promotion.registry_app, name="registry")
promotion.registry_app.registered_commands.extend(team.app.registered_commands)
promotion.registry_app.add_typer(team.users_app, name="users")
app.add_typer(serving.deploy_app, name="deploy")
app.add_typer(monitor.monitor_app, name="monitor")
app.add_typer(webapp.webapp_app, name="webapp")
app.add_typer(apikeys.keys_app, name="keys")

OWN_LOGGERS = ("core", "pipelines", "registry", "services", "monitoring", "modelyard")
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    # MLflow's per-file download bars are noise next to our own output.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # A registry outage is reported in seconds, not after MLflow's 7 retries (minutes).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
}


def main() -> None:
    """The console script: telemetry off for every tool underneath, then the app."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    app()


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=err_console, show_path=False, show_time=False)
    if not verbose:
        # Our own INFO lines; only warnings from the libraries underneath.
        handler.addFilter(
            lambda r: r.levelno >= logging.WARNING or r.name.split(".")[0] in OWN_LOGGERS
        )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", handlers=[handler]
    )


if __name__ == "__main__":
    main()
