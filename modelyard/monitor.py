"""Monitoring: the `monitor` group (drift job, Evidently UI) and simulate-traffic."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from core import settings
from core.errors import ModelyardError
from modelyard.common import ParamsOpt, console, err_console, guard, load
from modelyard.common import tracking as use_store

app = typer.Typer()
monitor_app = typer.Typer(
    help="Drift monitoring of the served model over its inference log (Evidently).",
    no_args_is_help=True,
)
PARAMS = Path("params.yaml")

MONITOR_EXIT_CODES = (
    "Exit codes: 0 no drift (or not enough data to judge); 1 drift; 2 the job could not run "
    "(bad options or params, unreadable log, no reference, a registry or Evidently error)."
)


def _log_dir(root: Path, given: Path | None) -> Path:
    return given or settings.current().log_dir or root / ".modelyard" / "inference-log"


@monitor_app.command("run", epilog=MONITOR_EXIT_CODES)
def monitor_run(
    since: Annotated[
        str | None,
        typer.Option(
            help="Window start: a duration back from now (30m, 24h, 7d) or an ISO "
            "time. Default: monitor.window."
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Window end (same forms). Default: now.")
    ] = None,
    log_dir: Annotated[
        Path | None,
        typer.Option(
            help="The service's inference log folder. Default: $MODELYARD_LOG_DIR, "
            "else .modelyard/inference-log."
        ),
    ] = None,
    alert_url: Annotated[
        str | None,
        typer.Option(
            help="POST the JSON summary here on drift. Default: $MODELYARD_ALERT_WEBHOOK_URL."
        ),
    ] = None,
    retrain: Annotated[
        bool, typer.Option(help="On drift, trigger retraining (monitor.retrain decides how).")
    ] = True,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Compare a window of the inference log with the serving version's training data.

    Writes report.html + summary.json under monitor.output/runs/<time>/ (and the latest
    summary.json), adds the run to the Evidently workspace (`modelyard monitor ui`),
    alerts and triggers retraining on drift.
    """
    from monitoring import monitor
    from registry.client import Registry

    def fail(exc: Exception) -> typer.Exit:
        err_console.print(f"[bold red]monitor failed:[/] {exc}", highlight=False)
        return typer.Exit(2)

    try:
        params, root = load(params_file)
        registry = Registry(use_store(root))
        cfg = params.monitor
        with console.status("reading the inference log and comparing with the reference..."):
            summary = monitor.run(
                cfg,
                params.data,
                params.validate_,
                registry,
                root,
                _log_dir(root, log_dir),
                since,
                until,
                params.seed,
            )
    except ModelyardError as exc:
        raise fail(exc) from None
    _print_monitor(summary)
    if summary.status == monitor.DRIFT:
        url = alert_url or settings.current().alert_webhook_url
        try:
            if url:
                summary.alert = monitor.alert(url, summary)
                console.print(f"alert: {summary.alert}")
            if retrain and cfg.retrain == "auto":
                summary.retrain = monitor.retrain(summary, root)
                console.print(f"retrain: {summary.retrain} (the new version still needs a review)")
        except ModelyardError as exc:
            raise fail(exc) from None
    raise typer.Exit(summary.exit_code)


def _print_monitor(summary: Any) -> None:
    colour = {"ok": "green", "drift": "bold red"}.get(summary.status, "yellow")
    console.print(f"[{colour}]{summary.status}[/]: {summary.message}", highlight=False)
    table = Table(title=f"window {summary.window['since']} .. {summary.window['until']}")
    table.add_column("model", no_wrap=True)
    for col in ("predictions", "sampled", "malformed lines", "data quality", "feedback"):
        table.add_column(col, justify="right")
    dq = summary.data_quality
    cls = summary.classification
    table.add_row(
        str(summary.model),
        str(summary.rows),
        str(summary.sampled),
        str(summary.malformed_lines),
        f"{dq['failed']}/{dq['evaluated']} failed" if dq else "-",
        f"acc {cls.get('accuracy', float('nan')):.3f} on {cls['rows']}" if cls else "-",
    )
    console.print(table)
    if summary.scores:
        top = sorted(summary.scores.items(), key=lambda kv: -kv[1]["score"])[:10]
        drift_table = Table(title="most drifted features")
        for col in ("feature", "score", "method", "drifted"):
            drift_table.add_column(col)
        for name, s in top:
            mark = "[red]yes[/]" if s["drifted"] else "no"
            drift_table.add_row(
                name, f"{s['score']:.3f}", f"{s['method']} > {s['threshold']:g}", mark
            )
        console.print(drift_table)
    if summary.report:
        console.print(
            f"report: {summary.report}\nworkspace: {summary.workspace} (`modelyard monitor ui`)"
        )


@monitor_app.command("ui")
def monitor_ui(
    params_file: ParamsOpt = PARAMS,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8000,
) -> None:
    """The Evidently UI on the monitoring workspace: drift over time, every report.

    Exit codes: 0 stopped; 1 no workspace yet (run `modelyard monitor run`); 2 bad params.
    """
    from monitoring import drift

    params, root = guard("monitor ui", lambda: load(params_file))
    workspace = root / params.monitor.output / "workspace"
    if not workspace.exists():
        err_console.print(f"[red]no workspace at {workspace} yet: run `modelyard monitor run`[/]")
        raise typer.Exit(1)
    console.print(
        f"Evidently UI on http://127.0.0.1:{port} (workspace {workspace}); Ctrl-C to stop"
    )
    command = guard("monitor ui", lambda: drift.ui_command(workspace, "127.0.0.1", port))
    raise typer.Exit(subprocess.call(command))


@app.command("simulate-traffic")
def simulate_traffic(
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:3000",
    rows: Annotated[int, typer.Option(min=1, help="Rows to send.")] = 1000,
    batch: Annotated[int, typer.Option(min=1, max=256, help="Rows per request.")] = 16,
    drift: Annotated[
        str, typer.Option(help="none | noise | shift | invert | occlude (see the module doc).")
    ] = "none",
    strength: Annotated[float, typer.Option(help="Noise std (x4 levels) or shift pixels.")] = 1.0,
    feedback: Annotated[
        float, typer.Option(min=0, max=1, help="Share of predictions that get a feedback label.")
    ] = 0.0,
    api_key: Annotated[
        str | None, typer.Option(help="API key. Default: the first of $MODELYARD_API_KEYS.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Send real digits from the test split to the service, clean or drifted (demos, tests).

    Exit codes: 0 sent; 1 no test split yet, or the service refused or was unreachable;
    2 bad options or params.
    """
    from rich.progress import Progress

    from monitoring import traffic

    params, root = guard("simulate-traffic", lambda: load(params_file))
    key = api_key or settings.current().first_api_key
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task(f"sending {rows} rows ({drift})", total=rows)
        sent = guard(
            "simulate-traffic",
            lambda: traffic.simulate(
                params,
                root,
                url=url,
                rows=rows,
                batch=batch,
                drift=drift,
                strength=strength,
                feedback=feedback,
                api_key=key,
                seed=seed,
                progress=lambda n: progress.advance(task, n),
            ),
        )
    console.print(
        f"simulate-traffic: {sent.rows} rows in {sent.requests} requests "
        f"({drift}), {sent.feedback} feedback labels -> {url}"
    )
