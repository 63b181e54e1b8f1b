"""The review gate: promote, rollback, and the `registry` group (webhook receiver,
webhook install, reconciler)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from core import settings
from modelyard.common import EXIT_CODES, ParamsOpt, console, err_console, guard, load
from modelyard.common import registry as open_registry

if TYPE_CHECKING:
    from registry.client import Registry

app = typer.Typer()
registry_app = typer.Typer(
    help="The review gate on a shared MLflow server: webhook receiver, reconciler.",
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
) -> None:
    """Move `champion` back to the previous approved version, with an audit entry."""
    from registry import promotion

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
    if params.register_.model_name != name:
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
    name = params.register_.model_name
    now, changed = guard("champion", lambda: pointer.refresh(registry, name, params.paths, root))
    state = f"v{now.version}" if now.version else "none yet"
    console.print(f"champion of {name}: {state}" + (" (pointer updated)" if changed else ""))


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
) -> None:
    """Receive MLflow webhooks: verify HMAC + replay window, enforce the review gate on
    `champion` moves (revert refused ones), and trigger the deploy of approved ones
    (GitHub repository_dispatch with GITHUB_REPOSITORY/GITHUB_TOKEN, else a local build)."""
    from registry import dispatch, webhooks

    registry = open_registry(params_file)
    receiver = webhooks.Receiver(
        webhooks.Verifier(_secret()), registry, dispatch.from_env(_local_build(registry))
    )
    server = receiver.serve(host, port)
    console.print(f"listening on http://{host}:{port}/webhook (registry {registry.uri})")
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
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    params_file: ParamsOpt = PARAMS,
) -> None:
    """Deploy the champion if a lost webhook delivery left it undeployed (idempotent)."""
    from registry import dispatch, webhooks

    registry = open_registry(params_file)
    dispatcher = dispatch.from_env(_local_build(registry))
    outcome = guard("reconcile", lambda: webhooks.reconcile(registry, name, dispatcher))
    console.print(f"reconcile {name}: {outcome}")
