"""Monitoring: the `monitor` group (drift job, Evidently UI) and simulate-traffic."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from core import processes, settings
from core.errors import ModelyardError
from modelyard.common import ParamsOpt, console, err_console, guard, load, log
from modelyard.common import tracking as use_store

if TYPE_CHECKING:
    from monitoring.monitor import Summary
    from pipelines.config import Params

app = typer.Typer()
monitor_app = typer.Typer(
    help="Drift monitoring of the served model over its inference log (Evidently).",
    no_args_is_help=True,
)
PARAMS = Path("params.yaml")

MONITOR_EXIT_CODES = (
    "Exit codes:\n\n"
    "0  no drift, or not enough data to judge.\n\n"
    "1  drift: the only verdict that exits 1 (also when the alert webhook failed; "
    "summary.json records that).\n\n"
    "2  the job failed: bad options or params, an unreadable log, no reference, records "
    "that do not fit the model, a registry or Evidently error, any crash; or drift was "
    "found but harvesting the labels or retraining failed; or the drift run or the shadow "
    "evidence could not be written to the registry (summary.json records the verdict and "
    "why).\n\n"
    "130  interrupted (Ctrl-C): no verdict."
)


FAILED = 2  # the table's "the job failed" (monitoring.monitor.EXIT_FAILED, importing it is slow)


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
    align: Annotated[
        bool,
        typer.Option(
            "--align",
            help="Read the last whole period of --since's length (a duration): --since 1h "
            "at 10:17 reads 09:00..10:00 UTC, so hourly runs read windows that touch, never "
            "overlap, and leave no gap however late each starts; after missed runs it "
            "starts where the last judged window ended (MLflow's drift runs), at most "
            "monitor.window back.",
        ),
    ] = False,
    retrain: Annotated[
        bool,
        typer.Option(
            help="On drift, harvest the feedback labels and, when monitor.min_new_labels "
            "arrived since the last training, retrain (monitor.retrain: auto): a `retrain` "
            "dispatch on GitHub when GITHUB_REPOSITORY and GITHUB_TOKEN are set (the labels "
            "pushed to the DVC remote first), else the pipeline here."
        ),
    ] = True,
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Compare a window of the inference log with the serving version's training data.

    Writes report.html under monitor.output/runs/<time>/ and adds the run to the
    Evidently workspace (`modelyard monitor ui`). On drift, alerts and retrains. Then
    writes summary.json (that folder's and the latest): the verdict and what the alert
    and the retrain did.
    """

    def fail(message: str) -> typer.Exit:
        err_console.print(f"[bold red]monitor failed:[/] {message}", highlight=False)
        return typer.Exit(FAILED)

    try:
        from core import github
        from monitoring import monitor
        from registry.client import Registry

        params, root = load(params_file)
        if align:
            from core.errors import MonitoringError
            from monitoring.window import aligned

            if until is not None:
                raise MonitoringError("--align sets the window's end itself: give --since only")

            since, until = aligned(since or params.monitor.window, time.time())
            since = _after_the_last_window(params, root, since)
        registry = Registry(use_store(root))
        with console.status("monitor run...") as status:
            summary = monitor.job(
                params,
                registry=registry,
                root=root,
                log_dir=_log_dir(root, log_dir),
                since=since,
                until=until,
                alert_url=alert_url or settings.current().alert_webhook_url,
                retrain=retrain,
                github=github.from_env(),
                progress=status.update,
            )
        _print_monitor(summary)
    except ModelyardError as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # a crash is a failure, never a verdict (exit 1 means drift)
        log.debug("monitor run crashed", exc_info=exc)
        raise fail(
            f"unexpected {type(exc).__name__}: {exc} (a bug in modelyard or a library under "
            "it; `modelyard -v monitor run ...` shows the traceback)"
        ) from None
    raise typer.Exit(summary.exit_code)


def _after_the_last_window(params: Params, root: Path, since: str) -> str:
    """``since``, moved back to where the last judged window ended when scheduled runs
    were missed (at most monitor.window back), so no rows go unchecked."""
    from datetime import UTC, datetime

    from monitoring.driftrun import last_checked_until
    from monitoring.window import contiguous, parse_time

    now = time.time()
    start = parse_time(since, now)
    cap = now - parse_time(params.monitor.window, now)
    last = last_checked_until(f"{params.tracking.experiment}-monitoring", root)
    moved = contiguous(start, last, cap)
    if moved == start:
        return since
    text = datetime.fromtimestamp(moved, UTC).isoformat(timespec="seconds")
    err_console.print(
        f"monitor: the window starts at {text}, where the last judged window ended "
        "(scheduled runs were missed)",
        highlight=False,
    )
    return text


def _print_monitor(summary: Summary) -> None:
    from monitoring import monitor

    colours: dict[str, str] = {monitor.OK: "green", monitor.DRIFT: "bold red"}
    colour = colours.get(summary.status, "yellow")
    console.print(f"[{colour}]{summary.status}[/]: {summary.message}", highlight=False)
    table = Table(title=f"window {summary.window.since} .. {summary.window.until}")
    table.add_column("model", no_wrap=True)
    for col in (
        "predictions",
        "sampled",
        "left out",
        "malformed lines",
        "data quality",
        "feedback",
    ):
        table.add_column(col, justify="right")
    dq = summary.data_quality
    cls = summary.classification
    unusable = summary.unusable.wrong_width + summary.unusable.not_numeric
    table.add_row(
        str(summary.model),
        str(summary.rows),
        str(summary.sampled),
        str(unusable),
        str(summary.malformed_lines),
        f"{dq.failed}/{dq.evaluated} failed" if dq else "-",
        f"acc {cls.metrics.get('accuracy', float('nan')):.3f} on {cls.rows}" if cls else "-",
    )
    console.print(table)
    if summary.scores:
        top = sorted(summary.scores, key=lambda c: -c.score)[:10]
        drift_table = Table(title="most drifted features")
        for col in ("feature", "score", "method", "drifted"):
            drift_table.add_column(col)
        for c in top:
            mark = "[red]yes[/]" if c.drifted else "no"
            drift_table.add_row(c.column, f"{c.score:.3f}", f"{c.method} > {c.threshold:g}", mark)
        console.print(drift_table)
    if summary.report:
        console.print(
            f"report: {summary.report}\nworkspace: {summary.workspace} (`modelyard monitor ui`)"
        )
    for evidence in summary.shadow:
        console.print(f"shadow: {evidence.describe()}", highlight=False)
    if summary.shadow_tags is not None:
        if summary.shadow_tags.status == monitor.FAILED:
            console.print(
                f"[bold red]shadow evidence FAILED:[/] {summary.shadow_tags.detail}",
                highlight=False,
            )
        else:
            console.print(f"shadow evidence: {summary.shadow_tags.detail}", highlight=False)
    if summary.drift_run is not None:
        run = summary.drift_run
        if run.status == monitor.FAILED:
            console.print(f"[bold red]drift run FAILED:[/] {run.detail}", highlight=False)
        else:
            console.print(f"drift run: {run.detail}", highlight=False)
    if summary.labels is not None:
        labels = summary.labels
        console.print(
            f"labels: {labels.count} new since "
            f"{'v' + labels.since_version if labels.since_version else 'no version'} "
            f"({labels.harvested} harvested into {labels.path})",
            highlight=False,
        )
    if summary.status == monitor.DRIFT:
        for step, outcome in (("alert", summary.alert), ("retrain", summary.retrain)):
            if outcome is None:
                continue
            if outcome.status == monitor.FAILED:
                style = "bold red" if step == "retrain" else "yellow"
                what = "FAILED" if step == "retrain" else "failed (the verdict stands)"
                console.print(f"[{style}]{step} {what}:[/] {outcome.detail}", highlight=False)
            elif outcome.status == monitor.SKIPPED:
                console.print(f"{step}: skipped ({outcome.detail})", highlight=False)
            else:
                console.print(f"{step}: {outcome.detail}", highlight=False)
    console.print(f"summary: {summary.folder}/summary.json")


@monitor_app.command("ui")
def monitor_ui(
    params_file: ParamsOpt = PARAMS,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8000,
) -> None:
    """The Evidently UI on the monitoring workspace: drift over time, every report.

    Exit codes: 0 stopped; 1 no workspace yet (run `modelyard monitor run`); 2 bad params;
    130 stopped by Ctrl-C; 143 stopped by SIGTERM (the UI server is stopped first).
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
    raise typer.Exit(processes.run_foreground(command))


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
    split: Annotated[
        str,
        typer.Option(
            help="Which prepared split the rows come from: test | val | train (its base "
            "rows only, never harvested production rows)."
        ),
    ] = "test",
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Send real digits from a prepared split to the service, clean or drifted (demos, tests).

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
                split=split,
                progress=lambda n: progress.advance(task, n),
            ),
        )
    console.print(
        f"simulate-traffic: {sent.rows} rows in {sent.requests} requests "
        f"({drift}), {sent.feedback} feedback labels -> {url}"
    )
