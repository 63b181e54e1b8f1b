"""The review gate: promote, approve, rollback, champion, and the `registry` group
(webhook receiver and team gate, webhook install, reconciler, deploy verify)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from core import settings, tools
from modelyard.common import EXIT_CODES, ParamsOpt, console, err_console, guard, load
from modelyard.common import registry as open_registry

if TYPE_CHECKING:
    from registry.client import Registry
    from registry.gate import Gate

app = typer.Typer()
registry_app = typer.Typer(
    help="The shared MLflow server and its review gate: the team server and its users, "
    "the webhook receiver (the gate with --team), the reconciler, the deploy's check.",
    no_args_is_help=True,
)
webhook_app = typer.Typer(
    help="The MLflow webhook that feeds `modelyard registry listen`.", no_args_is_help=True
)
registry_app.add_typer(webhook_app, name="webhook")
PARAMS = Path("params.yaml")


@app.command(epilog=EXIT_CODES)
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
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Approve a version and make it `champion`, through the review gate.

    Refuses, with the reasons, unless every gate passed, data validation passed, a
    reviewer approved, and the reviewer is not the author of the training commit.
    """
    from registry import promotion

    registry = open_registry(params_file)
    new, previous = guard(
        "promote", lambda: promotion.promote(registry, name, version, reviewer, comment)
    )
    was = f" (was v{previous.version})" if previous else ""
    console.print(f"promote: {name} v{new.version} is now @champion{was}")
    _refresh_pointer(params_file, name)


@app.command(epilog=EXIT_CODES)
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    actor: Annotated[
        str | None, typer.Option(help="Who rolls back (audit trail). Default: $USER.")
    ] = None,
    params_file: ParamsOpt = PARAMS,
    gate: Annotated[
        str | None,
        typer.Option(
            help="Team mode: ask the review gate at this URL, as yourself "
            "(MLFLOW_TRACKING_USERNAME/PASSWORD, a reviewer). Default: MODELYARD_GATE_URL."
        ),
    ] = None,
) -> None:
    """Move `champion` back to the previous approved version, with an audit entry.

    In team mode (--gate or MODELYARD_GATE_URL) the gate does it: only it may move
    `champion`; NAME is then the production model."""
    from registry import promotion

    env = settings.current()
    url = gate or env.gate_url
    if url:
        from registry.webhooks import request_rollback

        credentials = env.mlflow_credentials()
        if not credentials:
            err_console.print("[red]set your own MLFLOW_TRACKING_USERNAME/PASSWORD[/]")
            raise typer.Exit(2)
        done = guard("rollback", lambda: request_rollback(url, credentials))
        console.print(f"rollback: {done['production']} @champion v{done['from']} -> v{done['to']}")
        _refresh_pointer(params_file, name)
        return
    registry = open_registry(params_file)
    who = actor or settings.current().user or "unknown"
    new, old = guard("rollback", lambda: promotion.rollback(registry, name, who))
    console.print(f"rollback: {name} @champion v{old.version} -> v{new.version}")
    _refresh_pointer(params_file, name)


def _refresh_pointer(params_file: Path, name: str) -> None:
    """Rewrite the champion pointer of this project if it tracks ``name``: the next
    `dvc repro` then re-runs evaluate against the new champion."""
    from pipelines import pointer

    params, root = guard("champion", lambda: load(params_file))
    if params.register_.champion_model != name:
        return
    now, changed = guard(
        "champion",
        lambda: pointer.refresh(open_registry(params_file), name, params.paths, root),
    )
    if changed:
        console.print(f"champion: {params.paths.report(pointer.FILE)} now names v{now.version}")


@app.command(epilog=EXIT_CODES)
def champion(params_file: ParamsOpt = PARAMS) -> None:
    """Write who the registry's champion is now to data/reports/champion.json.

    `evaluate` depends on that file, so the next `dvc repro` re-runs the champion
    comparison when it changed. `modelyard run`, `promote` and `rollback` do this for
    you; run it yourself before a plain `dvc repro` after someone else promoted.
    Stops (exit 1) if the registry cannot be read: an outage is not "no champion".
    """
    from pipelines import pointer

    params, root = guard("champion", lambda: load(params_file))
    registry = open_registry(params_file)
    name = params.register_.champion_model  # team mode: the production model
    now, changed = guard("champion", lambda: pointer.refresh(registry, name, params.paths, root))
    state = f"v{now.version}" if now.version else "none yet"
    console.print(f"champion of {name}: {state}" + (" (pointer updated)" if changed else ""))


TeamOpt = Annotated[
    Path | None,
    typer.Option("--team", help="team.yaml: run as the team's review gate (team mode)."),
]
RetryOpt = Annotated[
    float,
    typer.Option(
        help="Team mode: a failed deploy is retried after this many seconds, doubling "
        "with each failure (at most an hour)."
    ),
]


def _gate(
    params_file: Path, team_file: Path, retry_base: float = 60.0, *, signing: bool = True
) -> Gate:
    """The team's review gate, from the environment, the team file and params.yaml
    (its own thresholds: evaluate). ``signing``: it approves, so it needs the private key
    (MODELYARD_GATE_KEY); else (reconcile) the public key is enough. Exits 2 when something
    is missing or when the MLflow login is not the team's gate account."""
    from registry import dispatch, evidence, keys, policy
    from registry import team as team_mod
    from registry.auth import AuthAPI
    from registry.client import Registry
    from registry.gate import Gate
    from registry.gate_base import Backoff
    from registry.store import GateStore

    params, _ = guard("gate", lambda: load(params_file))  # a bad params file says so first
    env = settings.current()
    credentials = env.mlflow_credentials()
    uri = env.mlflow_tracking_uri or ""
    missing = [
        name
        for name, value in (
            ("MLFLOW_TRACKING_URI (http://...)", uri.startswith(("http://", "https://"))),
            ("MLFLOW_TRACKING_USERNAME/PASSWORD (the gate's account)", credentials),
            (
                "MODELYARD_GATE_KEY" if signing else "MODELYARD_GATE_PUBLIC_KEY",
                env.gate_key or (not signing and env.gate_public_key),
            ),
            ("MODELYARD_GATE_DATABASE_URL", env.gate_database_url),
        )
        if not value
    ]
    if missing:
        err_console.print(f"[red]the gate needs: {', '.join(missing)}[/]")
        raise typer.Exit(2)
    assert credentials and env.gate_database_url
    if bool(env.gate_repo) != bool(env.gate_dvc_remote):
        err_console.print(
            "[red]the gate reads reviewed commits' test rows from both MODELYARD_GATE_REPO "
            "and MODELYARD_GATE_DVC_REMOTE: set both, or neither[/]"
        )
        raise typer.Exit(2)
    committed = (
        evidence.Source(
            env.gate_repo,
            env.gate_dvc_remote,
            prepared=params.paths.prepared.as_posix(),
            branch=env.gate_branch,
        )
        if env.gate_repo and env.gate_dvc_remote
        else None
    )
    key = guard(
        "gate",
        lambda: keys.from_settings(env) if signing else keys.verifier_from_settings(env),
    )
    assert key is not None
    team = guard("gate", lambda: team_mod.load(team_file))
    me = guard("gate", lambda: AuthAPI(uri, credentials).current_user())
    if team.role(me.username) != "gate":
        err_console.print(
            f"[red]{me.username} is not the gate's account in {team_file} (role: "
            f"{team.role(me.username) or 'none'})[/]"
        )
        raise typer.Exit(2)
    registry = Registry(uri)
    rules = policy.Rules.of(params.evaluate)
    database = env.gate_database_url.get_secret_value()
    return Gate(
        registry=registry,
        team=team,
        store=guard("gate", lambda: GateStore(database)),
        key=key,
        rules=rules,
        dispatcher=dispatch.from_env(_local_build(registry)),
        backoff=Backoff(base=timedelta(seconds=retry_base)),
        committed=committed,
    )


def _secret() -> str:
    secret = settings.current().webhook_secret
    if secret is None:
        err_console.print(
            "[red]MODELYARD_WEBHOOK_SECRET is not set: the shared HMAC secret of the webhook[/]"
        )
        raise typer.Exit(2)
    return secret.get_secret_value()


def _local_build(registry: Registry) -> Callable[[str], str]:
    """What a promotion deploys when GitHub is not configured: the Bento, built here."""
    from services import build

    return lambda ref: build.build(ref, registry).bento_tag


@registry_app.command("listen", epilog=EXIT_CODES)
def registry_listen(
    params_file: ParamsOpt = PARAMS,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for POST /webhook and GET /health.")] = 8765,
    team_file: TeamOpt = None,
    retry_base: RetryOpt = 60.0,
) -> None:
    """Receive MLflow webhooks: verify HMAC + replay window, enforce the review gate on
    `champion` moves (revert refused ones), and trigger the deploy of approved ones
    (GitHub repository_dispatch with GITHUB_REPOSITORY/GITHUB_TOKEN, else a local build).

    With --team: the team's review gate. It also serves POST /approve (`modelyard
    approve`), keeps what it sees and does in its own database, and acts on the
    production model. Needs MLFLOW_TRACKING_URI with the gate's own MLFLOW_TRACKING_USERNAME/
    PASSWORD, MODELYARD_GATE_KEY and MODELYARD_GATE_DATABASE_URL.
    """
    from registry import dispatch, webhooks

    if team_file is not None:
        gate = _gate(params_file, team_file, retry_base)
        receiver = webhooks.Receiver(
            webhooks.Verifier(_secret(), remember=gate.store.remember_delivery),
            gate.handle,
            approve=gate.approve_request,
            rollback=gate.rollback_request,
        )
        uri = gate.registry.uri
    else:
        registry = open_registry(params_file)
        dispatcher = dispatch.from_env(_local_build(registry))
        receiver = webhooks.Receiver(
            webhooks.Verifier(_secret()), lambda e: webhooks.handle(e, registry, dispatcher)
        )
        uri = registry.uri
    guard("registry listen", lambda: tools.check_port(host, port))
    server = receiver.serve(host, port)
    console.print(f"listening on http://{host}:{port}/webhook (registry {uri})", soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")


@webhook_app.command("install", epilog=EXIT_CODES)
def webhook_install(
    url: Annotated[
        str, typer.Option(help="Where MLflow should post, e.g. http://127.0.0.1:8765/webhook")
    ],
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Register (or update) the review-gate webhook on the MLflow server (SQL store)."""
    from registry import webhooks

    registry = open_registry(params_file)
    hook_id = guard("webhook install", lambda: webhooks.install(registry, url, _secret()))
    console.print(f"webhook {hook_id} -> {url} for {', '.join(webhooks.EVENTS)}")


@registry_app.command("reconcile", epilog=EXIT_CODES)
def registry_reconcile(
    name: Annotated[
        str | None,
        typer.Argument(help="Registered model name (with --team: the production model's)."),
    ] = None,
    params_file: ParamsOpt = PARAMS,
    team_file: TeamOpt = None,
    every: Annotated[
        float | None,
        typer.Option(help="Run again every SECONDS until stopped (a scheduler's loop)."),
    ] = None,
    retry_base: RetryOpt = 60.0,
) -> None:
    """Catch what a lost webhook delivery missed: deploy the champion if it is not
    deployed (idempotent). With --team, the gate's reconcile: a champion without a valid
    signed approval is put back, a removed one restored, a discovered promotion recorded,
    a failed or unconfirmed deploy retried with backoff."""
    from registry import dispatch, webhooks

    if team_file is not None:
        gate = _gate(params_file, team_file, retry_base, signing=False)
        label, run = gate.production, gate.reconcile
    elif name is None:
        err_console.print("[red]name the registered model (or give --team)[/]")
        raise typer.Exit(2)
    else:
        registry = open_registry(params_file)
        dispatcher = dispatch.from_env(_local_build(registry))
        label, run = name, lambda: webhooks.reconcile(registry, name, dispatcher)
    while True:
        outcome = guard("reconcile", run)
        console.print(f"reconcile {label}: {outcome}")
        if "files-changed:" in outcome:  # the champion's files are not the approved ones
            err_console.print(
                f"[bold red]reconcile: {label}'s champion files changed after approval: not "
                "deployed; the gate's audit (files-changed) names each file[/]"
            )
            if every is None:
                raise typer.Exit(1)
        if "model-missing:" in outcome or "model-replaced:" in outcome:
            err_console.print(
                "[bold red]reconcile: a registered model the gate knows is gone (deleted or "
                "renamed) or was made again under its name: nothing deployed for it; the "
                "gate's audit (model-missing, model-replaced) says which[/]"
            )
            if every is None:
                raise typer.Exit(1)
        if every is None:
            return
        time.sleep(every)


APPROVE_CODES = (
    "Exit codes: 0 approved, `champion` moved, deploy requested (or approved before and "
    "still @champion: nothing changed); 1 refused (the reasons are printed: not a reviewer, "
    "four eyes, evidence, worse than the current champion, approved before) or the "
    "gate/registry failed; "
    "2 MODELYARD_GATE_URL or MLFLOW_TRACKING_USERNAME/PASSWORD not set."
)


@app.command(epilog=APPROVE_CODES)
def approve(
    name: Annotated[str, typer.Argument(help="The candidates model (team.yaml: models).")],
    version: Annotated[str, typer.Argument(help="The candidate version you reviewed.")],
    comment: Annotated[str, typer.Option(help="Why it is approved (kept with the approval).")],
    gate: Annotated[
        str | None, typer.Option(help="The gate's URL. Default: MODELYARD_GATE_URL.")
    ] = None,
) -> None:
    """Approve a candidate as yourself (team mode): the gate checks your MLflow login
    (MLFLOW_TRACKING_USERNAME/PASSWORD), your reviewer role, four eyes and the evidence,
    then copies it to production and moves `champion` itself."""
    from registry.webhooks import request_approval

    env = settings.current()
    url, credentials = gate or env.gate_url, env.mlflow_credentials()
    if not url or not credentials:
        err_console.print(
            "[red]set MODELYARD_GATE_URL (or --gate) and your own "
            "MLFLOW_TRACKING_USERNAME/PASSWORD[/]"
        )
        raise typer.Exit(2)
    done = guard(
        "approve", lambda: request_approval(url, credentials, name, version, comment=comment)
    )
    if done.get("already"):
        approval = done["approval"]
        console.print(
            f"approve: {name} v{version} was already approved by {approval['reviewer']} at "
            f"{approval['at']}: {done['production']} v{done['version']} is @champion; "
            f"nothing changed ({done['deploy']})",
            soft_wrap=True,
        )
        return
    was = f" (was v{done['previous']})" if done.get("previous") else ""
    console.print(
        f"approve: {name} v{version} approved by {done['approval']['reviewer']}: "
        f"{done['production']} v{done['version']} is now @champion{was}; {done['deploy']}",
        soft_wrap=True,
    )
    summary = (done.get("comparison") or {}).get("summary")
    if summary:
        console.print(f"approve: recomputed by the gate: {summary}", soft_wrap=True, markup=False)


@registry_app.command("verify", epilog=EXIT_CODES)
def registry_verify(
    name: Annotated[str, typer.Argument(help="The production model.")],
    version: Annotated[str, typer.Argument(help="The version about to be deployed.")],
) -> None:
    """Refuse to deploy a version the gate did not approve (deploy.yml runs it first):
    it must be @champion, carry an approval signed by the gate's key
    (MODELYARD_GATE_PUBLIC_KEY verifies; during a rotation MODELYARD_GATE_PREVIOUS_KEYS too)
    for exactly this version, and every file must be one the signed manifest lists."""
    from registry import keys
    from registry.approval import verify_for_deploy
    from registry.client import Registry

    env = settings.current()
    if not (env.gate_public_key or env.gate_key) or not env.mlflow_tracking_uri:
        err_console.print("[red]set MODELYARD_GATE_PUBLIC_KEY and MLFLOW_TRACKING_URI[/]")
        raise typer.Exit(2)
    key = guard("verify", lambda: keys.verifier_from_settings(env))
    assert key is not None
    uri = env.mlflow_tracking_uri
    approval = guard("verify", lambda: verify_for_deploy(Registry(uri), key, name, version))
    console.print(
        f"verify: {name} v{version} approved by {approval.reviewer} at {approval.at} "
        f"(sha256 {approval.onnx_sha256[:12]})"
    )
