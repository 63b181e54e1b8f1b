"""Team mode: `registry server` (MLflow with users, on PostgreSQL),
`registry users apply` (users and permissions from team.yaml), `registry keygen` (the
gate's Ed25519 key pair) and `registry resign` (the gate's approvals re-signed with its
current key, after a key rotation)."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.markup import escape

from core import settings
from modelyard.common import ParamsOpt, console, err_console, guard

app = typer.Typer()  # its commands join the `registry` group (modelyard/app.py)
users_app = typer.Typer(
    help="Users and permissions of the team server, from team.yaml.", no_args_is_help=True
)

SERVER_CODES = (
    "Exit codes: 0 stopped (Ctrl-C or SIGTERM); 1 the server did not start or died "
    "(its log's tail is printed); 2 a configuration error (first start without "
    "MLFLOW_AUTH_ADMIN_PASSWORD)."
)
RESIGN_CODES = (
    "Exit codes: 0 every approval is signed with the current key (re-signed now or "
    "already); 1 an approval did not verify with any key the gate has (listed, not "
    "re-signed), or the registry or the gate's database failed; 2 MLFLOW_TRACKING_URI, "
    "the gate's MLFLOW_TRACKING_USERNAME/PASSWORD, MODELYARD_GATE_KEY or "
    "MODELYARD_GATE_DATABASE_URL not set, a key that is not an Ed25519 key (64 hex "
    "digits), or a login that is not the team's gate."
)
KEYGEN_CODES = (
    "Exit codes: 0 the keys are printed; 2 --from-env without a valid MODELYARD_GATE_KEY."
)
APPLY_CODES = (
    "Exit codes: 0 the server matches the file; 1 the server refused or could not be "
    "reached (not an admin, down); 2 a bad team file, a missing password variable, or "
    "MLFLOW_TRACKING_URI/USERNAME/PASSWORD not set."
)


@app.command("server", epilog=SERVER_CODES)
def registry_server(
    data_dir: Annotated[
        Path, typer.Option(help="Everything the server keeps: PostgreSQL, artifacts, keys.")
    ] = Path(".modelyard/team"),
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the MLflow UI and API.")] = 5000,
    workers: Annotated[int, typer.Option(help="MLflow server workers.")] = 1,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="An existing PostgreSQL (postgresql://user:pw@host/any). Default: a "
            "PostgreSQL started here in DATA_DIR/postgres (pgserver)."
        ),
    ] = None,
    http_webhooks: Annotated[
        bool,
        typer.Option(help="Allow http:// webhook URLs (a gate on this host or network)."),
    ] = True,
    private_webhooks: Annotated[
        bool, typer.Option(help="Allow webhook URLs on loopback/private addresses.")
    ] = True,
) -> None:
    """Run the team's MLflow server: the basic-auth app (users, permissions), a
    PostgreSQL backend store, artifacts proxied through the server, webhooks enabled.

    The first start needs MLFLOW_AUTH_ADMIN_PASSWORD (12+ characters): the admin account
    it creates. Then `modelyard registry users apply team.yaml` (as that admin) creates the
    team's users, models and permissions. Runs until Ctrl-C or SIGTERM, then stops MLflow
    and the PostgreSQL it started.
    """
    from registry import server

    admin_password = settings.current().mlflow_admin_password
    options = server.Options(
        data_dir,
        host=host,
        port=port,
        workers=workers,
        admin_password=admin_password.get_secret_value() if admin_password else None,
        database_url=database_url,
        webhook_schemes="http,https" if http_webhooks else "https",
        webhook_private_ips=private_webhooks,
    )
    stop = _stop_on_sigterm()
    team = guard("registry server", lambda: server.start(options))
    # soft_wrap: a long URL must stay on one line, whole, to be copied.
    console.print(f"team server: {team.uri} (data in {data_dir})", soft_wrap=True)
    console.print(
        f"gate database: MODELYARD_GATE_DATABASE_URL={team.databases.gate}", soft_wrap=True
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop, as SIGTERM does
            while team.process.poll() is None and not stop:
                time.sleep(0.5)
    finally:
        died = team.process.poll() is not None and not stop
        team.stop()
    if died:
        err_console.print(f"[red]the MLflow server exited; see {data_dir}/logs/mlflow.log[/]")
        raise typer.Exit(1)
    console.print("stopped")


def _stop_on_sigterm() -> list[int]:
    """SIGTERM stops the server like Ctrl-C (so PostgreSQL is stopped too)."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    signal.signal(signal.SIGTERM, handler)
    return received


@users_app.command("apply", epilog=APPLY_CODES)
def users_apply(
    team_file: Annotated[Path, typer.Argument(help="The team file (team.yaml).")],
) -> None:
    """Create the team's experiment, its two registered models (candidates, production)
    and its users, and set each user's permissions from its role. Idempotent.

    Run as the server's admin (MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD).
    New users' passwords come from MODELYARD_PASSWORD_<USER> (or the user's password_env).
    """
    from registry import team as team_mod
    from registry.auth import AuthAPI
    from registry.client import Registry

    env = settings.current()
    credentials = env.mlflow_credentials()
    if not (env.mlflow_tracking_uri or "").startswith(("http://", "https://")) or not credentials:
        err_console.print(
            "[red]set MLFLOW_TRACKING_URI (the team server, http://...) and "
            "MLFLOW_TRACKING_USERNAME/PASSWORD (its admin)[/]"
        )
        raise typer.Exit(2)
    uri = str(env.mlflow_tracking_uri)
    team = guard("users apply", lambda: team_mod.load(team_file))
    applied = guard(
        "users apply",
        lambda: team_mod.apply(
            team,
            admin=AuthAPI(uri, credentials),
            registry=Registry(uri),
            password=settings.variable,
        ),
    )
    for line in applied.created:
        console.print(f"created {line}")
    for line in applied.granted:
        console.print(f"granted {line}")
    if not applied.changed:
        console.print(f"{uri} already matches {team_file}: nothing changed")


@app.command("resign", epilog=RESIGN_CODES)
def registry_resign(
    team_file: Annotated[
        Path, typer.Option("--team", help="team.yaml: the gate's account and models.")
    ],
    params_file: ParamsOpt = Path("params.yaml"),
) -> None:
    """Re-sign every approval the gate stored with its current key (MODELYARD_GATE_KEY),
    after verifying each with the key that signed it (the current one or one of
    MODELYARD_GATE_PREVIOUS_KEYS). Run as the gate (its MLflow login and environment)
    during a key rotation (docs/team.md: "Rotating the gate's key"); one audit entry per
    re-signed approval; running it again changes nothing."""
    from modelyard.promotion import _gate
    from registry import keys

    gate = _gate(params_file, team_file)
    signer = gate.key
    assert isinstance(signer, keys.Signer)  # _gate(signing=True) holds the private key
    actor = settings.current().mlflow_username or "gate"
    done = guard(
        "resign",
        lambda: keys.resign(gate.registry, gate.store, signer, gate.production, actor=actor),
    )
    key_id = gate.key.key_id
    for version, old in done.resigned:
        console.print(f"re-signed {gate.production} v{version}: key {old} -> {key_id}")
    if done.current:
        versions = ", ".join(f"v{v}" for v in done.current)
        console.print(f"already signed with key {key_id}: {versions}")
    for version, why in done.refused:
        err_console.print(f"[red]{gate.production} v{version} not re-signed:[/] {escape(why)}")
    if done.refused:
        raise typer.Exit(1)
    if not done.resigned and not done.current:
        console.print(f"{gate.production}: no approvals to re-sign")


@app.command("keygen", epilog=KEYGEN_CODES)
def registry_keygen(
    from_env: Annotated[
        bool,
        typer.Option(
            "--from-env",
            help="Print the public key of MODELYARD_GATE_KEY instead of making a new pair "
            "(an upgrade from HMAC keeps the gate's key: its text is a valid private key "
            "when it is 64 hex digits).",
        ),
    ] = False,
) -> None:
    """Make the review gate's Ed25519 key pair, printed as environment lines: the private
    key (MODELYARD_GATE_KEY) goes to the gate only, as a secret; the public key
    (MODELYARD_GATE_PUBLIC_KEY) to everything that verifies approvals (deploy workflow,
    `registry verify`, `build`, reconcile). The public key cannot sign."""
    from registry import keys

    if from_env:
        signer = guard("keygen", lambda: keys.from_settings(settings.current()))
        if signer is None:
            err_console.print("[red]MODELYARD_GATE_KEY is not set[/]")
            raise typer.Exit(2)
        console.print(f"# key id {signer.key_id}", markup=False)
        console.print(
            f"MODELYARD_GATE_PUBLIC_KEY={signer.verifier.public_hex}", markup=False, soft_wrap=True
        )
        return
    private, public = keys.keygen()
    key_id = keys.key_id(bytes.fromhex(public))
    console.print(
        f"# The review gate's Ed25519 key pair, key id {key_id}.\n"
        "# The gate only, as a secret (its environment; GitHub environment `gate`):\n"
        f"MODELYARD_GATE_KEY={private}\n"
        "# Whatever verifies approvals (deploy, build, reconcile, registry verify); not secret:\n"
        f"MODELYARD_GATE_PUBLIC_KEY={public}",
        markup=False,
        soft_wrap=True,
    )
