"""The ``modelyard`` command line: one Typer app for every stage and job.

The CLI is the only layer that loads params.yaml, configures logging, calls a stage
and turns domain errors (``pipelines.errors``) into messages and exit codes:
0 ok, 1 a pipeline error (bad data, failed gate, parity), 2 a configuration error.
"""

from __future__ import annotations

import contextlib
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
        "From a commit to a monitored production API.\n\n"
        "The pipeline stages (ingest, prepare, validate, train, export, optimize, evaluate, "
        "register) are what `dvc repro` runs, one command each; `modelyard run` runs them all "
        "through DVC and prints a summary. Then: `promote`/`rollback` (the review gate), "
        "`registry` (webhook receiver, reconciler), `build`/`serve` (the Bento), `deploy` "
        "(image, Kubernetes, record), `monitor` (drift jobs, Evidently UI), "
        "`simulate-traffic`, `diff` (CI's PR comment)."
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
    # MLflow's per-file download bars are noise next to our own output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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
def optimize(params_file: ParamsOpt = Path("params.yaml")) -> None:
    """Build FP32/graph-optimized/int8/pruned variants, measure them here, pick one.

    The pick is the fastest by optimize.metric within optimize.accuracy_budget (accuracy
    points below FP32 on the validation split); evaluate and register use it.
    """
    from pipelines.stages import optimize as stage

    params, root = _guard("optimize", lambda: _load(params_file))
    _tracking(root)
    with console.status("optimize: starting") as status:
        r = _guard(
            "optimize", lambda: stage.run(params, root, lambda m: status.update(f"optimize: {m}"))
        )
    console.print(stage.markdown(r, params.optimize), markup=False, highlight=False, soft_wrap=True)
    console.print(f"optimize: chose {r.choice.variant} -> {params.paths.served_model}")


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
    push: Annotated[
        bool,
        typer.Option(
            help="`dvc push` the stage outputs before registering (the version's lineage "
            "then points at data the team can pull). Remote: --remote-url, else $DVC_REMOTE_URL, "
            "else the repo's default DVC remote."
        ),
    ] = False,
    remote_url: Annotated[
        str | None, typer.Option(help="DVC remote URL for --push (a path, s3://..., ...).")
    ] = None,
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
    if push:
        _dvc_push(dvc, root, remote_url or os.environ.get("DVC_REMOTE_URL"))
    logging.getLogger("pipelines.stages.register").setLevel(logging.WARNING)
    reg = _guard("register", lambda: register_stage.run(params, root))
    summary(params_file, created=reg.version not in before)


def _dvc_push(dvc: str, root: Path, url: str | None) -> None:
    remote: list[str] = []
    if url:
        subprocess.run([dvc, "remote", "add", "--local", "--force", "modelyard-push", url],
                       cwd=root, check=True, capture_output=True)  # fmt: skip
        remote = ["--remote", "modelyard-push"]
    if subprocess.call([dvc, "push", *remote], cwd=root) != 0:
        err_console.print(
            "[bold red]dvc push failed;[/] nothing was registered. Set --remote-url or "
            "DVC_REMOTE_URL (or `dvc remote add -d ...`), check its credentials, and run again."
        )
        raise typer.Exit(1)


DIFF_MARKER = "<!-- modelyard:diff -->"


@app.command()
def diff(
    base: Annotated[str, typer.Option(help="Git revision to compare the workspace with.")] = "main",
    pr: Annotated[
        int | None,
        typer.Option(
            help="Post (or update) the result as a comment on this pull request "
            "(GITHUB_REPOSITORY + GITHUB_TOKEN)."
        ),
    ] = None,
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Markdown of `dvc metrics diff` and `dvc params diff` against BASE (CI's PR comment)."""
    from pipelines import github

    _, root = _guard("diff", lambda: _load(params_file))
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    parts = [DIFF_MARKER, f"### modelyard: metrics and params against `{base}`"]
    for kind, extra in (("metrics", ["--all"]), ("params", [])):
        done = subprocess.run([dvc, kind, "diff", base, "--md", *extra], cwd=root,
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            err_console.print(f"[red]dvc {kind} diff {base} failed:[/] {done.stderr.strip()}")
            raise typer.Exit(1)
        rows = [line for line in done.stdout.strip().splitlines() if line.strip()]
        body = "\n".join(rows) if len(rows) > 2 else f"_no {kind} changed_"
        parts += [f"#### {kind}", body]
    text = "\n\n".join(parts) + "\n"
    console.print(text, markup=False, highlight=False)
    if pr is not None:
        gh = github.from_env()
        if gh is None:
            err_console.print("[red]--pr needs GITHUB_REPOSITORY and GITHUB_TOKEN[/]")
            raise typer.Exit(2)
        outcome = _guard("diff", lambda: gh.upsert_comment(pr, text, DIFF_MARKER))
        console.print(f"diff: comment {outcome} on {gh.repository}#{pr}")


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
    with contextlib.suppress(OSError):  # runs from before the optimize stage have no report
        optimized = files.read_json(reports / "optimize.json")
        console.print(f"optimize: served variant [bold]{optimized['chosen']}[/] "
                      f"({optimized['speedup_vs_fp32']:.2f}x fp32 by {optimized['metric']}, "
                      f"{optimized['size_ratio_vs_fp32']:.2f}x its size). {optimized.get('int8', '')}")  # fmt: skip
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
    workflow containerizes. Set BENTOML_HOME to choose the BentoML store. In GitHub
    Actions ($GITHUB_OUTPUT set) it also writes the step outputs bento_tag,
    model_name and model_version.
    """
    params, root = _guard("build", lambda: _load(params_file))
    built = _build(params, root, model)
    verb = "built" if built.created else "up to date:"
    console.print(
        f"build: {verb} Bento {built.bento_tag} ({built.name} v{built.version}, model {built.model_tag})"
    )
    _github_output(bento_tag=built.bento_tag, model_name=built.name, model_version=built.version)


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


def _github_output(**values: str) -> None:
    """Step outputs for the next workflow steps, when running in GitHub Actions."""
    path = os.environ.get("GITHUB_OUTPUT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.writelines(f"{key}={value}\n" for key, value in values.items())


# -- deploy (what deploy.yml runs after `modelyard build`) ------------------------------------

deploy_app = typer.Typer(
    help="Ship a built Bento: container image + push, Kubernetes rollout, and the record "
    "of what runs (the steps of .github/workflows/deploy.yml).",
    no_args_is_help=True,
)
app.add_typer(deploy_app, name="deploy")


@deploy_app.command("containerize")
def deploy_containerize(
    bento: Annotated[
        str, typer.Option(help="Bento tag NAME:VERSION (as `modelyard build` prints).")
    ],
    repository: Annotated[
        str, typer.Option(help="Image repository, e.g. ghcr.io/OWNER/REPO (lower-cased).")
    ],
    push: Annotated[bool, typer.Option(help="docker push the image after building it.")] = True,
) -> None:
    """`bentoml containerize` the Bento and push the image (needs a Docker engine).

    The image is REPOSITORY/<bento name>:<bento version>; in GitHub Actions it is also
    written to the step output `image`.
    """
    from services import deploy

    image = _guard("containerize", lambda: deploy.containerize(bento, repository, push))
    console.print(f"containerize: {image.ref}{' (pushed)' if push else ''}")
    _github_output(image=image.ref)


@deploy_app.command("apply")
def deploy_apply(
    image: Annotated[str, typer.Option(help="The pushed image, REGISTRY/NAME:TAG.")],
    namespace: Annotated[str | None, typer.Option(help="Kubernetes namespace.")] = None,
    timeout: Annotated[int, typer.Option(help="Seconds to wait for the rollout.")] = 300,
) -> None:
    """`kubectl apply -k` services/k8s with IMAGE, then wait for the rollout.

    Cluster credentials: $KUBE_CONFIG (a kubeconfig's content, as the workflow's secret),
    else kubectl's own configuration ($KUBECONFIG, ~/.kube/config).
    """
    from services import deploy

    kubeconfig = os.environ.get("KUBE_CONFIG") or None
    _guard("deploy apply", lambda: deploy.apply(image, namespace, timeout, kubeconfig))
    console.print(f"deploy apply: deployment/{deploy.DEPLOYMENT} runs {image}")


@deploy_app.command("record")
def deploy_record(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="The version now deployed.")],
    image: Annotated[str, typer.Option(help="The image that runs it.")],
    target: Annotated[
        str, typer.Option(help="Where it runs (cluster/namespace, or 'image-only').")
    ] = "production",
    actor: Annotated[
        str | None, typer.Option(help="Who deployed (audit). Default: $GITHUB_ACTOR or $USER.")
    ] = None,
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Record the deployed version on the registered model (the reconciler reads it)."""
    from registry import promotion

    registry = _registry(params_file)
    who = actor or os.environ.get("GITHUB_ACTOR") or os.environ.get("USER", "unknown")
    _guard("deploy record", lambda: promotion.record_deployment(
        registry, name, version, image, target, who))  # fmt: skip
    console.print(f"deploy record: {name} v{version} runs {image} on {target}")


# -- monitoring (what monitor.yml runs) -------------------------------------------------------

monitor_app = typer.Typer(
    help="Drift monitoring of the served model over its inference log (Evidently).",
    no_args_is_help=True,
)
app.add_typer(monitor_app, name="monitor")


def _log_dir(root: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    env = os.environ.get("MODELYARD_LOG_DIR")
    return Path(env) if env else root / ".modelyard" / "inference-log"


@monitor_app.command("run")
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
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Compare a window of the inference log with the serving version's training data.

    Writes report.html + summary.json under monitor.output/runs/<time>/ (and the latest
    summary.json), adds the run to the Evidently workspace (`modelyard monitor ui`),
    alerts and triggers retraining on drift.

    Exit codes: 0 no drift (or not enough data), 1 drift, 2 error.
    """
    from pipelines import monitor, tracking
    from registry.client import Registry

    def fail(exc: Exception) -> typer.Exit:
        err_console.print(f"[bold red]monitor failed:[/] {exc}", highlight=False)
        return typer.Exit(2)

    try:
        params, root = _load(params_file)
        _tracking(root)
        registry = Registry(tracking.tracking_uri(root))
        cfg = params.monitor
        with console.status("reading the inference log and comparing with the reference..."):
            summary = monitor.run(cfg, params.data, params.validate_, registry, root,
                                  _log_dir(root, log_dir), since, until, params.seed)  # fmt: skip
    except ModelyardError as exc:
        raise fail(exc) from None
    _print_monitor(summary)
    if summary.status == monitor.DRIFT:
        url = alert_url or os.environ.get("MODELYARD_ALERT_WEBHOOK_URL")
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
        str(summary.model), str(summary.rows), str(summary.sampled), str(summary.malformed_lines),
        f"{dq['failed']}/{dq['evaluated']} failed" if dq else "-",
        f"acc {cls.get('accuracy', float('nan')):.3f} on {cls['rows']}" if cls else "-",
    )  # fmt: skip
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
        console.print(f"report: {summary.report}\nworkspace: {summary.workspace} "
                      "(`modelyard monitor ui`)")  # fmt: skip


@monitor_app.command("ui")
def monitor_ui(
    params_file: ParamsOpt = Path("params.yaml"),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8000,
) -> None:
    """The Evidently UI on the monitoring workspace: drift over time, every report."""
    from pipelines import drift

    params, root = _guard("monitor ui", lambda: _load(params_file))
    workspace = root / params.monitor.output / "workspace"
    if not workspace.exists():
        err_console.print(f"[red]no workspace at {workspace} yet: run `modelyard monitor run`[/]")
        raise typer.Exit(1)
    console.print(
        f"Evidently UI on http://127.0.0.1:{port} (workspace {workspace}); Ctrl-C to stop"
    )
    raise typer.Exit(subprocess.call(drift.ui_command(workspace, "127.0.0.1", port)))


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
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Send real digits from the test split to the service, clean or drifted (demos, tests)."""
    import numpy as np
    import pandas as pd
    from rich.progress import Progress

    from pipelines import traffic

    if drift not in traffic.KINDS:
        err_console.print(f"[red]--drift {drift!r}: one of {', '.join(traffic.KINDS)}[/]")
        raise typer.Exit(2)
    params, root = _guard("simulate-traffic", lambda: _load(params_file))
    test_file = root / params.paths.split("test")
    if not test_file.exists():
        err_console.print(
            f"[red]{test_file} not found: run the pipeline first (`modelyard run`)[/]"
        )
        raise typer.Exit(1)
    frame = pd.read_parquet(test_file)
    features = params.data.feature_names
    low, high = params.data.feature_range or (float(frame[features].min().min()),
                                               float(frame[features].max().max()))  # fmt: skip
    rng = np.random.default_rng(seed)
    x = traffic.distort(frame[features].to_numpy(np.float64), drift, strength, low, high, rng)
    labels = frame[params.data.target].tolist()
    key = api_key or (os.environ.get("MODELYARD_API_KEYS", "").split(",")[0].strip() or None)
    client = traffic.Client(url, key)
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task(f"sending {rows} rows ({drift})", total=rows)
        sent = _guard("simulate-traffic", lambda: traffic.send(
            client, x, labels, rows, batch, feedback, rng, lambda n: progress.advance(task, n)))  # fmt: skip
    console.print(f"simulate-traffic: {sent.rows} rows in {sent.requests} requests "
                  f"({drift}), {sent.feedback} feedback labels -> {url}")  # fmt: skip


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
