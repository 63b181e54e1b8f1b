"""`modelyard keys`: the API's named keys (scopes, rate limits, daily quotas) in the key
file the service reads (services/gateway.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from core import settings
from modelyard.common import console, err_console

DEFAULT_FILE = Path(".modelyard/api-keys.json")

keys_app = typer.Typer(
    help="The API's named keys: each with scopes (predict, feedback, metadata), an optional "
    "rate limit (a token bucket) and daily quota. The file keeps each key's sha256, never "
    "the key: `create` shows it once. The service reads MODELYARD_API_KEY_FILE at start and "
    "whenever it changes, so `revoke` needs no restart. Limits hold per worker process (two "
    "per pod as deployed, one under `modelyard serve`).",
    no_args_is_help=True,
)

CODES = (
    "Exit codes: 0 done; 2 a usage or configuration error (a bad name, scope, rate or quota; "
    "an unreadable key file; no such key)."
)

FileOpt = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        help=f"The key file. Default: MODELYARD_API_KEY_FILE, else {DEFAULT_FILE}.",
    ),
]


def key_file(given: Path | None) -> Path:
    return given or settings.current().api_key_file or DEFAULT_FILE


def _fail(exc: Exception) -> typer.Exit:
    err_console.print(f"[bold red]keys failed:[/] {escape(str(exc))}", highlight=False)
    return typer.Exit(2)


@keys_app.command("create", epilog=CODES)
def create(
    name: Annotated[str, typer.Argument(help="The key's name: what metrics and logs show.")],
    scope: Annotated[
        str,
        typer.Option(help="Comma-separated: predict, feedback, metadata."),
    ] = "predict,feedback,metadata",
    rate: Annotated[
        str | None,
        typer.Option(help="Requests allowed, e.g. 50/s or 3000/min (per worker). Default: none."),
    ] = None,
    burst: Annotated[
        int | None,
        typer.Option(help="Requests allowed at once above the rate. Default: one second's worth."),
    ] = None,
    quota: Annotated[
        str | None,
        typer.Option(help="Requests per UTC day, e.g. 100000/day (per worker). Default: none."),
    ] = None,
    file: FileOpt = None,
) -> None:
    """Create a key and print it once (stdout); the file keeps only its sha256."""
    from services import gateway

    path = key_file(file)
    scopes = [s.strip() for s in scope.split(",") if s.strip()]
    try:
        secret, record = gateway.create_key(
            path, name, scopes=scopes, rate=rate, burst=burst, quota=quota
        )
    except gateway.KeyFileError as exc:
        raise _fail(exc) from None
    limits = ", ".join(
        part
        for part in (
            f"rate {record.rate} (burst {record.limiter().burst})" if record.rate else "",  # type: ignore[union-attr]
            f"quota {record.quota}/day" if record.quota else "",
        )
        if part
    )
    err_console.print(
        f"created {record.name}: scopes {', '.join(record.scopes)}"
        + (f"; {limits}" if limits else "; no limits")
        + f"\nin {path} (sha256 only). The key, shown once:"
    )
    console.print(secret, highlight=False, soft_wrap=True)
    err_console.print(
        f"Serve with it: MODELYARD_API_KEY_FILE={path} modelyard serve (a running service "
        "reads the file again within a second)."
    )


@keys_app.command("list", epilog=CODES)
def list_keys(
    file: FileOpt = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Also revoked keys.")] = False,
) -> None:
    """The keys in the file: name, scopes, limits, created, revoked."""
    from services import gateway

    path = key_file(file)
    try:
        keys = gateway.read_keys(path)
    except gateway.KeyFileError as exc:
        raise _fail(exc) from None
    table = Table(title=f"API keys in {path}")
    for col in ("name", "key", "scopes", "rate", "quota/day", "created", "revoked"):
        table.add_column(col)
    shown = [k for k in keys if all_keys or k.revoked is None]
    for k in shown:
        table.add_row(
            k.name,
            f"{k.shown}…" if k.shown else "",
            ", ".join(k.scopes),
            f"{k.rate} (burst {k.limiter().burst})" if k.rate else "-",  # type: ignore[union-attr]
            str(k.quota) if k.quota else "-",
            k.created,
            k.revoked or "-",
        )
    console.print(table)
    hidden = len(keys) - len(shown)
    if hidden:
        err_console.print(f"{hidden} revoked key(s) not shown (--all shows them)")


@keys_app.command("revoke", epilog=CODES)
def revoke(
    name: Annotated[str, typer.Argument(help="The key to revoke.")],
    file: FileOpt = None,
) -> None:
    """Revoke a key: a running service refuses it (401) within a second. The record stays
    in the file, marked revoked."""
    from services import gateway

    path = key_file(file)
    try:
        record = gateway.revoke_key(path, name)
    except gateway.KeyFileError as exc:
        raise _fail(exc) from None
    err_console.print(f"revoked {record.name} at {record.revoked} in {path}")
