"""The whole pipeline and its tools: run, summary, diff (CI's PR comment), ui."""

from __future__ import annotations

import contextlib
import socket
import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core import settings
from modelyard.common import EXIT_CODES, ParamsOpt, console, err_console, gates_table, guard, load

app = typer.Typer()
PARAMS = Path("params.yaml")


@app.command(epilog=EXIT_CODES)
def run(
    params_file: ParamsOpt = PARAMS,
    force: Annotated[bool, typer.Option("--force", "-f", help="Re-run every stage.")] = False,
    remeasure: Annotated[
        bool,
        typer.Option(
            help="Run evaluate again even if DVC finds it up to date (`dvc repro -f -s "
            "evaluate`, then register): its latency is a measurement of this moment, so a "
            "timing gate that failed while the machine was busy can be measured again."
        ),
    ] = False,
    push: Annotated[
        bool,
        typer.Option(
            help="`dvc push` the stage outputs before registering (the version's lineage "
            "then points at data the team can pull). Remote: --remote-url, else $DVC_REMOTE_URL, "
            "else the repo's default DVC remote."
        ),
    ] = False,
    remote_url: Annotated[
        str | None,
        typer.Option(help="DVC remote URL for --push and --production-dvc (a path, s3://...)."),
    ] = None,
    drift_run: Annotated[
        str | None,
        typer.Option(
            help="The drift job's MLflow run that asked for this retrain (a `retrain` "
            "dispatch): a version registered now is tagged monitor.drift_run_id, and the "
            "run retrain.version. Empty: none."
        ),
    ] = None,
    production_dvc: Annotated[
        str | None,
        typer.Option(
            help="The text of the harvested labels' .dvc pointer (a `retrain` dispatch): "
            "written beside ingest.production.path and `dvc pull`ed before the pipeline "
            "runs. Empty: none."
        ),
    ] = None,
) -> None:
    """Run the whole pipeline with `dvc repro` and print a summary.

    DVC cannot see the MLflow registry: on a fresh clone (or a fresh store) it may
    find every stage up to date and skip `register`. So `run` ends with the idempotent
    register step, which adds the version only if this store lacks it.
    """
    from pipelines import run as pipeline

    params, root = guard("run", lambda: load(params_file))
    url = remote_url or settings.current().dvc_remote_url
    outcome = guard(
        "run",
        lambda: pipeline.run(
            params,
            root,
            force=force,
            remeasure=remeasure,
            push_outputs=push,
            push_to=url,
            drift_run=drift_run or None,
            production_pointer=production_dvc or None,
        ),
    )
    _summary(params_file, outcome=outcome)


@app.command(epilog=EXIT_CODES)
def summary(params_file: ParamsOpt = PARAMS) -> None:
    """Print the last run's metrics, gates and registered version."""
    _summary(params_file, outcome=None)


def _summary(params_file: Path, *, outcome: object | None) -> None:
    from core import files

    params, root = guard("summary", lambda: load(params_file))
    reports = root / params.paths.reports
    try:
        metrics = files.read_json(reports / "evaluate.json")
        gates = files.read_json(reports / "gates.json")
        reg = files.read_json(reports / "register.json")
    except OSError as exc:
        err_console.print(f"[red]no complete run yet ({exc}); run `modelyard run`[/]")
        raise typer.Exit(1) from None
    table = Table(title="modelyard: test-set metrics (ONNX Runtime)", show_header=True)
    for col in (
        "accuracy",
        "macro-F1",
        "min class recall",
        "noise invariance",
        "p50/p99 ms @1",
        "p50/p99 ms @256",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        f"{metrics['accuracy']:.4f}",
        f"{metrics['macro_f1']:.4f}",
        f"{metrics['min_class_recall']:.3f}",
        f"{metrics['noise_invariance']:.3f}",
        f"{metrics['p50_ms_batch1']:.3f}/{metrics['p99_ms_batch1']:.3f}",
        f"{metrics['p50_ms_batch256']:.2f}/{metrics['p99_ms_batch256']:.2f}",
    )
    console.print(table)
    console.print(gates_table(gates))
    with contextlib.suppress(OSError):  # runs from before the optimize stage have no report
        opt = files.read_json(reports / "optimize.details.json")
        console.print(
            f"optimize: served variant [bold]{opt['chosen']}[/] "
            f"({opt['speedup_vs_fp32']:.2f}x fp32 by {opt['metric']}, "
            f"{opt['size_ratio_vs_fp32']:.2f}x its size). {opt.get('int8', '')}"
        )
    alias = params.register_.alias
    state = ""
    if outcome is not None:
        created = getattr(outcome, "created", None)
        where = getattr(outcome, "alias_version", None)
        state = " (new version)" if created else " (unchanged: already registered)"
        if where is not None and where != str(reg["version"]):
            state += f"; @{alias} points at v{where}"
    console.print(
        f"[bold green]{params.register_.model_name} v{reg['version']}[/]{state} @{alias}\n"
        "Next:\n"
        "  modelyard ui                      browse runs and the registry (MLflow UI)\n"
        "  dvc metrics show / dvc plots show metrics and plots DVC tracks\n"
        "  dvc exp run -S train.epochs=20    try a change; `dvc metrics diff` compares\n"
        f"  open {params.paths.report('validate.html')}   the data validation report"
    )


@app.command(epilog=EXIT_CODES)
def diff(
    base: Annotated[str, typer.Option(help="Git revision to compare the workspace with.")] = "main",
    pr: Annotated[
        int | None,
        typer.Option(
            help="Post (or update) the result as a comment on this pull request "
            "(GITHUB_REPOSITORY + GITHUB_TOKEN)."
        ),
    ] = None,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Markdown of `dvc metrics diff` and `dvc params diff` against BASE (CI's PR comment)."""
    from core import github
    from pipelines import diff as metrics_diff

    _, root = guard("diff", lambda: load(params_file))
    text = guard("diff", lambda: metrics_diff.markdown(root, base=base))
    console.print(text, markup=False, highlight=False)
    if pr is not None:
        gh = github.from_env()
        if gh is None:
            err_console.print("[red]--pr needs GITHUB_REPOSITORY and GITHUB_TOKEN[/]")
            raise typer.Exit(2)
        outcome = guard("diff", lambda: gh.upsert_comment(pr, text, metrics_diff.MARKER))
        console.print(f"diff: comment {outcome} on {gh.repository}#{pr}")


@app.command(epilog=EXIT_CODES)
def ui(
    params_file: ParamsOpt = PARAMS,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 5000,
) -> None:
    """Open the MLflow UI on this project's store (embedded SQLite unless MLFLOW_TRACKING_URI)."""
    from core import tools
    from pipelines import tracking

    _, root = guard("ui", lambda: load(params_file))
    uri = tracking.tracking_uri(root)
    if uri.startswith("http"):
        console.print(f"MLFLOW_TRACKING_URI points at a server: open {uri}")
        return
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    guard("ui", lambda: tools.check_port("127.0.0.1", port))
    tracking.configure(root)
    mlflow = guard("ui", lambda: tools.binary("mlflow"))
    console.print(f"MLflow UI on http://127.0.0.1:{port} (store {uri}); Ctrl-C to stop")
    env = tools.env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    cmd = [mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    raise typer.Exit(subprocess.call([*cmd, "--workers", "1"], env=env))
