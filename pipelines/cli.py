"""The ``modelyard`` command line: one Typer app for every stage and job.

The CLI is the only layer that loads params.yaml, configures logging, calls a stage
and turns domain errors (``pipelines.errors``) into messages and exit codes:
0 ok, 1 a pipeline error (bad data, failed gate, parity), 2 a configuration error.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from pipelines import config
from pipelines.errors import ModelyardError

app = typer.Typer(
    name="modelyard",
    help=(
        "From a commit to a registered, validated model version.\n\n"
        "The pipeline stages (ingest, prepare, validate, train, export, evaluate, register) "
        "are what `dvc repro` runs, one command each; `modelyard run` runs them all through "
        "DVC and prints a summary."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
err_console = Console(stderr=True)
log = logging.getLogger("modelyard")

ParamsOpt = Annotated[
    Path, typer.Option("--params", "-p", help="The params file (its folder is the project root).")
]
T = TypeVar("T")

OWN_LOGGERS = ("pipelines", "registry", "services", "modelyard")
TELEMETRY_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}


def main() -> None:
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


def _load(path: Path) -> tuple[config.Params, Path]:
    params = config.load(path)
    return params, path.resolve().parent


def _guard(step: str, fn: Callable[[], T]) -> T:
    """Run a step; print a domain error cleanly and exit with its code."""
    try:
        return fn()
    except ModelyardError as exc:
        err_console.print(f"[bold red]{step} failed:[/] {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from None


def _tracking(root: Path) -> None:
    from pipelines import tracking

    tracking.configure(root)


# -- stages ------------------------------------------------------------------------------


@app.command()
def ingest(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Materialize the raw dataset (ingest.source) as data/raw/dataset.csv."""
    from pipelines.stages import ingest as stage

    params, root = _guard("ingest", lambda: _load(params_file))
    r = _guard("ingest", lambda: stage.run(params.ingest, params.data, params.paths, root))
    console.print(f"ingest: {r.rows} rows x {r.columns} columns -> {r.path}")


@app.command()
def prepare(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Split the raw data into seeded, stratified train/val/test Parquet files."""
    from pipelines.stages import prepare as stage

    params, root = _guard("prepare", lambda: _load(params_file))
    r = _guard(
        "prepare", lambda: stage.run(params.prepare, params.data, params.paths, params.seed, root)
    )
    console.print(
        f"prepare: {r.rows} (dropped {r.dropped_duplicates} duplicate rows, "
        f"{'stratified' if r.stratified else 'NOT stratified'})"
    )


@app.command()
def validate(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Check the raw and prepared data with Great Expectations; stop on any failure.

    Writes data/reports/validate.json and a readable validate.html.
    """
    from pipelines.stages import validate as stage

    params, root = _guard("validate", lambda: _load(params_file))
    r = _guard("validate", lambda: stage.run(params.validate_, params.data, params.paths, root))
    console.print(f"validate: {r.evaluated} expectations passed")


@app.command()
def train(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Train the model named by train.model (cnn, mlp, logreg, gboost); logs to MLflow."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipelines.stages import train as stage

    params, root = _guard("train", lambda: _load(params_file))
    _tracking(root)
    with Progress(
        TextColumn("train {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=err_console,
    ) as progress:  # fmt: skip
        task = progress.add_task(params.train.model, total=params.train.epochs, status="")

        def on_epoch(e: Any) -> None:
            progress.update(
                task, completed=e.epoch,
                status=f"loss {e.train_loss:.3f} val_loss {e.val_loss:.3f} val_acc {e.val_accuracy:.3f}",
            )  # fmt: skip

        r = _guard("train", lambda: stage.run(params, root, on_epoch))
        progress.update(task, total=max(r.epochs_run, 1), completed=max(r.epochs_run, 1))
    best = f", best epoch {r.best_epoch}" if r.best_epoch else ""
    console.print(f"train: val accuracy {r.val_accuracy:.4f}{best}, MLflow run {r.run_id}")


@app.command()
def export(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Export the trained model to ONNX and check parity with the native model."""
    from pipelines.stages import export as stage

    params, root = _guard("export", lambda: _load(params_file))
    _tracking(root)
    r = _guard("export", lambda: stage.run(params, root))
    console.print(
        f"export: {params.paths.onnx} ({r.size_bytes} bytes, opset {r.opset}), "
        f"parity max |diff| {r.parity.max_abs_diff:.2g} over {r.parity.rows} rows"
    )


@app.command()
def evaluate(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Score the ONNX model on the test set (quality, latency, behaviour, champion) and
    write the gate report. Gates are enforced by `register`."""
    from pipelines.stages import evaluate as stage

    params, root = _guard("evaluate", lambda: _load(params_file))
    _tracking(root)
    r = _guard("evaluate", lambda: stage.run(params, root))
    console.print(_gates_table(r.gates))


@app.command()
def register(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Register the model as a new version with its lineage (alias `challenger`),
    only if every gate passed. Re-running with the same model creates nothing new."""
    from pipelines.stages import register as stage

    params, root = _guard("register", lambda: _load(params_file))
    _tracking(root)
    r = _guard("register", lambda: stage.run(params, root))
    verb = "registered" if r.created else "already registered"
    console.print(f"register: {verb} {r.name} v{r.version} (@{params.register_.alias})")


# -- whole pipeline and tools --------------------------------------------------------------


@app.command()
def run(
    params_file: ParamsOpt = Path("params.yaml"),
    force: Annotated[bool, typer.Option("--force", "-f", help="Re-run every stage.")] = False,
) -> None:
    """Run the whole pipeline with `dvc repro` and print a summary.

    DVC cannot see the MLflow registry: on a fresh clone (or a fresh store) it may
    find every stage up to date and skip `register`. So `run` ends with the idempotent
    register step, which adds the version only if this store lacks it.
    """
    from pipelines import tracking
    from pipelines.stages import register as register_stage
    from registry.client import Registry

    params, root = _guard("run", lambda: _load(params_file))
    _tracking(root)
    registry = Registry(tracking.tracking_uri(root))
    before = {v.version for v in registry.versions(params.register_.model_name)}
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    code = subprocess.call([dvc, "repro", *(["--force"] if force else [])], cwd=root)
    if code != 0:
        err_console.print(
            f"[bold red]dvc repro failed (exit {code}).[/] The failing stage printed why above; "
            "fix it and run `modelyard run` again (DVC re-runs only what changed)."
        )
        raise typer.Exit(1)
    logging.getLogger("pipelines.stages.register").setLevel(logging.WARNING)
    reg = _guard("register", lambda: register_stage.run(params, root))
    summary(params_file, created=reg.version not in before)


@app.command()
def summary(params_file: ParamsOpt = Path("params.yaml"), created: bool | None = None) -> None:
    """Print the last run's metrics, gates and registered version."""
    from pipelines import files

    params, root = _guard("summary", lambda: _load(params_file))
    reports = root / params.paths.reports
    try:
        metrics = files.read_json(reports / "evaluate.json")
        gates = files.read_json(reports / "gates.json")
        reg = files.read_json(reports / "register.json")
    except OSError as exc:
        err_console.print(f"[red]no complete run yet ({exc}); run `modelyard run`[/]")
        raise typer.Exit(1) from None
    lat = metrics["latency"]
    table = Table(title="modelyard: test-set metrics (ONNX Runtime)", show_header=True)
    for col in ("accuracy", "macro-F1", "min class recall", "noise invariance",
                "p50/p99 ms @1", "p50/p99 ms @256"):  # fmt: skip
        table.add_column(col, justify="right")
    table.add_row(
        f"{metrics['accuracy']:.4f}", f"{metrics['macro_f1']:.4f}",
        f"{metrics['min_class_recall']:.3f}", f"{metrics['noise_invariance']:.3f}",
        f"{lat['batch_1']['p50_ms']:.3f}/{lat['batch_1']['p99_ms']:.3f}",
        f"{lat['batch_256']['p50_ms']:.2f}/{lat['batch_256']['p99_ms']:.2f}",
    )  # fmt: skip
    console.print(table)
    console.print(_gates_table_from_report(gates))
    state = {True: " (new version)", False: " (unchanged: already registered)", None: ""}[created]
    console.print(
        f"[bold green]{reg['model']} v{reg['version']}[/]{state} @{params.register_.alias}\n"
        "Next:\n"
        "  modelyard ui                      browse runs and the registry (MLflow UI)\n"
        "  dvc metrics show / dvc plots show metrics and plots DVC tracks\n"
        "  dvc exp run -S train.epochs=20    try a change; `dvc metrics diff` compares\n"
        f"  open {params.paths.report('validate.html')}   the data validation report"
    )


@app.command()
def ui(
    params_file: ParamsOpt = Path("params.yaml"),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 5000,
) -> None:
    """Open the MLflow UI on this project's store (embedded SQLite unless MLFLOW_TRACKING_URI)."""
    from pipelines import tracking

    _, root = _guard("ui", lambda: _load(params_file))
    uri = tracking.tracking_uri(root)
    if uri.startswith("http"):
        console.print(f"MLFLOW_TRACKING_URI points at a server: open {uri}")
        return
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    tracking.configure(root)
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    console.print(f"MLflow UI on http://127.0.0.1:{port} (store {uri}); Ctrl-C to stop")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    raise typer.Exit(
        subprocess.call(
            [
                mlflow,
                "ui",
                "--backend-store-uri",
                uri,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env=env,
        )
    )


# -- promotion (the review gate) ------------------------------------------------------------


def _registry(params_file: Path) -> Any:
    from pipelines import tracking
    from registry.client import Registry

    _, root = _guard("registry", lambda: _load(params_file))
    _tracking(root)
    return Registry(tracking.tracking_uri(root))


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version number to promote.")],
    reviewer: Annotated[
        str | None,
        typer.Option(
            help="Who approves (not the training commit's author). "
            "Omit if the approval tags were set in the MLflow UI."
        ),
    ] = None,
    comment: Annotated[str, typer.Option(help="Why it is approved.")] = "",
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Approve a version and make it `champion`, through the review gate.

    Refuses, with the reasons, unless every gate passed, data validation passed, a
    reviewer approved, and the reviewer is not the author of the training commit.
    """  # fmt: skip
    from registry import promotion

    registry = _registry(params_file)
    new, previous = _guard(
        "promote", lambda: promotion.promote(registry, name, version, reviewer, comment)
    )
    was = f" (was v{previous.version})" if previous else ""
    console.print(f"promote: {name} v{new.version} is now @champion{was}")


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    actor: Annotated[
        str | None, typer.Option(help="Who rolls back (audit trail). Default: $USER.")
    ] = None,
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Move `champion` back to the previous approved version, with an audit entry."""
    from registry import promotion

    registry = _registry(params_file)
    who = actor or os.environ.get("USER", "unknown")
    new, old = _guard("rollback", lambda: promotion.rollback(registry, name, who))
    console.print(f"rollback: {name} @champion v{old.version} -> v{new.version}")


registry_app = typer.Typer(
    help="The review gate on a shared MLflow server: webhook receiver, reconciler.",
    no_args_is_help=True,
)
webhook_app = typer.Typer(
    help="The MLflow webhook that feeds `modelyard registry listen`.", no_args_is_help=True
)
registry_app.add_typer(webhook_app, name="webhook")
app.add_typer(registry_app, name="registry")


def _secret() -> str:
    secret = os.environ.get("MODELYARD_WEBHOOK_SECRET", "")
    if not secret:
        err_console.print(
            "[red]MODELYARD_WEBHOOK_SECRET is not set: the shared HMAC secret of the webhook[/]"
        )
        raise typer.Exit(2)
    return secret


@registry_app.command("listen")
def registry_listen(
    params_file: ParamsOpt = Path("params.yaml"),
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for POST /webhook and GET /health.")] = 8765,
) -> None:
    """Receive MLflow webhooks: verify HMAC + replay window, enforce the review gate on
    `champion` moves (revert refused ones), and trigger the deploy of approved ones
    (GitHub repository_dispatch with GITHUB_REPOSITORY/GITHUB_TOKEN, else a local build)."""
    from registry import dispatch, webhooks

    registry = _registry(params_file)
    receiver = webhooks.Receiver(
        webhooks.Verifier(_secret()), registry, dispatch.from_env(registry.uri)
    )
    server = receiver.serve(host, port)
    console.print(f"listening on http://{host}:{port}/webhook (registry {registry.uri})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")


@webhook_app.command("install")
def webhook_install(
    url: Annotated[
        str, typer.Option(help="Where MLflow should post, e.g. http://127.0.0.1:8765/webhook")
    ],
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Register (or update) the review-gate webhook on the MLflow server (SQL store)."""
    from registry import webhooks

    registry = _registry(params_file)
    hook_id = _guard("webhook install", lambda: webhooks.install(registry, url, _secret()))
    console.print(f"webhook {hook_id} -> {url} for {', '.join(webhooks.EVENTS)}")


@registry_app.command("reconcile")
def registry_reconcile(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Deploy the champion if a lost webhook delivery left it undeployed (idempotent)."""
    from registry import dispatch, webhooks

    registry = _registry(params_file)
    outcome = _guard(
        "reconcile", lambda: webhooks.reconcile(registry, name, dispatch.from_env(registry.uri))
    )
    console.print(f"reconcile {name}: {outcome}")


# -- serving ------------------------------------------------------------------------------------

ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m",
        help="NAME@ALIAS or NAME/VERSION. Default: <register.model_name>@champion, "
        "or @challenger while there is no champion.",
    ),
]  # fmt: skip


def _build(params: config.Params, root: Path, ref: str | None) -> Any:
    from pipelines import tracking
    from registry.client import CHALLENGER, CHAMPION, Registry
    from services import build as bento_build

    _tracking(root)
    registry = Registry(tracking.tracking_uri(root))
    if ref is None:
        name = params.register_.model_name
        alias = CHAMPION if registry.by_alias(name, CHAMPION) else CHALLENGER
        if alias == CHALLENGER:
            err_console.print(
                f"[yellow]{name} has no @champion yet (see promotion); using @challenger[/]"
            )
        ref = f"{name}@{alias}"
    return _guard("build", lambda: bento_build.build(ref, registry))


@app.command()
def build(params_file: ParamsOpt = Path("params.yaml"), model: ModelOpt = None) -> None:
    """Build a Bento (BentoML) from an exact registry version, checking its sha256.

    The Bento's tag and labels name the model version; its Dockerfile is what the deploy
    workflow containerizes. Set BENTOML_HOME to choose the BentoML store.
    """
    params, root = _guard("build", lambda: _load(params_file))
    built = _build(params, root, model)
    verb = "built" if built.created else "up to date:"
    console.print(
        f"build: {verb} Bento {built.bento_tag} ({built.name} v{built.version}, model {built.model_tag})"
    )


@app.command()
def serve(
    params_file: ParamsOpt = Path("params.yaml"),
    model: ModelOpt = None,
    port: Annotated[int, typer.Option(help="Port on --host.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Build the Bento if needed and serve it (ONNX Runtime) with `bentoml serve`.

    API keys come from MODELYARD_API_KEYS (comma-separated); the inference log goes to
    MODELYARD_LOG_DIR (default .modelyard/inference-log).
    """
    params, root = _guard("serve", lambda: _load(params_file))
    built = _build(params, root, model)
    env = {**os.environ}
    env.setdefault("MODELYARD_LOG_DIR", str(root / ".modelyard" / "inference-log"))
    bentoml_bin = shutil.which("bentoml") or str(Path(sys.executable).with_name("bentoml"))
    console.print(
        f"serving {built.name} v{built.version} on http://{host}:{port}  (POST /v1/predict, "
        f"GET /v1/metadata, /readyz, /metrics); log: {env['MODELYARD_LOG_DIR']}"
    )
    raise typer.Exit(
        subprocess.call(
            [bentoml_bin, "serve", built.bento_tag, "--host", host, "--port", str(port)], env=env
        )
    )


def _gates_table(gates: list[Any]) -> Table:
    return _gates_table_from_report(
        {"gates": {g.name: g.__dict__ for g in gates}, "passed": all(g.passed for g in gates)}
    )


def _gates_table_from_report(report: dict[str, Any]) -> Table:
    verdict = "[green]all passed[/]" if report["passed"] else "[red]FAILED[/]"
    table = Table(title=f"gates: {verdict}")
    for col in ("gate", "value", "threshold", "result"):
        table.add_column(col)
    for g in report["gates"].values():
        mark = "[green]pass[/]" if g["passed"] else "[red]fail[/]"
        value = "n/a" if g["value"] is None else f"{g['value']:.4g}"
        table.add_row(g["name"], value, f"{g['op']} {g['threshold']:g}", mark)
    return table


if __name__ == "__main__":
    main()
