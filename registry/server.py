"""The team's MLflow server: the basic-auth app on PostgreSQL, artifacts proxied,
webhooks configured. `modelyard registry server` runs it; SQLite stays the embedded
default for one person.

One folder (``data_dir``) holds everything the server needs to come back after a restart:

    data_dir/
      postgres/       the PostgreSQL cluster (pgserver), unless --database-url names one
      artifacts/      every artifact, served through the server (``mlflow-artifacts:/``)
      basic_auth.ini  the auth app's config: its user database, default permission READ
      secrets.json    (0600) the Flask secret key and the webhook secrets' Fernet key,
                      generated once: without a stable Fernet key MLflow loses the stored
                      webhook secrets on restart
      logs/mlflow.log

Three databases on the one PostgreSQL: ``mlflow`` (tracking and registry), ``mlflow_auth``
(users and permissions) and ``modelyard_gate`` (the review gate's own tables, which no
MLflow account can reach). The gate connects as its own role, ``modelyard_gate`` (its
password generated once, in secrets.json), which may only connect to the gate's database,
read and append there, and move a deploy's state: it can neither rewrite nor truncate the
audit, nor drop its triggers (the admin owns the tables), nor reach MLflow's users. The admin's password comes from ``MLFLOW_AUTH_ADMIN_PASSWORD``
on the first start (MLflow has no default and refuses to start without one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import files, http, tools
from core.errors import ConfigError, RegistryError

log = logging.getLogger(__name__)

DATABASES = ("mlflow", "mlflow_auth", "modelyard_gate")
GATE_ROLE = "modelyard_gate"  # the gate's own login (registry.store.GATE_GRANTS)
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Options:
    """How to run the team server (``modelyard registry server``)."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    admin_username: str = "admin"
    admin_password: str | None = None  # needed on the first start only
    database_url: str | None = None  # an existing PostgreSQL; None: pgserver in data_dir
    webhook_schemes: str = "https"  # add http for a gate on the same host or network
    webhook_private_ips: bool = False


@dataclass(frozen=True)
class Databases:
    """SQLAlchemy URLs of the three databases (``postgresql+psycopg2://...``)."""

    tracking: str
    auth: str
    gate: str


class TeamServer:
    """A running team server: the MLflow process and (if started here) its PostgreSQL."""

    def __init__(
        self, options: Options, databases: Databases, process: subprocess.Popen[bytes], pg: Any
    ) -> None:
        self.options, self.databases, self.process, self._pg = options, databases, process, pg

    @property
    def uri(self) -> str:
        return f"http://{self.options.host}:{self.options.port}"

    def stop(self) -> None:
        """Stop MLflow (its whole process tree), then the PostgreSQL started here."""
        import psutil

        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(self.process.pid)
            procs = [parent, *parent.children(recursive=True)]
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.terminate()
            _, alive = psutil.wait_procs(procs, timeout=20)
            for proc in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
        if self._pg is not None:
            self._pg.cleanup()
            self._pg = None


def start(options: Options) -> TeamServer:
    """Start PostgreSQL (unless ``database_url``), then MLflow with the basic-auth app;
    return once ``/health`` answers. Raises ConfigError on a missing admin password,
    RegistryError if the server dies or does not answer in time (with its log's tail)."""
    data = options.data_dir.resolve()
    for sub in ("artifacts", "logs"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    first_start = not (data / "secrets.json").exists()
    if first_start and not options.admin_password:
        raise ConfigError(
            "first start of the team server: set MLFLOW_AUTH_ADMIN_PASSWORD (the password "
            f"of the admin account {options.admin_username!r}; MLflow has no default)"
        )
    keys = _secrets(data / "secrets.json")
    pg = None
    if options.database_url:
        databases = _databases(options.database_url)
    else:
        pg, base = _postgres(data / "postgres")
        databases = _databases(base)
    _ensure_databases(databases)
    databases = _gate_role(databases, keys["gate_db_password"])
    ini = data / "basic_auth.ini"
    files.write_text(ini, auth_ini(databases.auth, admin_username=options.admin_username))
    env = tools.env(
        {
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": keys["flask_secret_key"],
            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": keys["webhook_fernet_key"],
            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": options.webhook_schemes,
            "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": str(options.webhook_private_ips).lower(),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    if options.admin_password:
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = options.admin_password
    cmd = [tools.binary("mlflow"), "server", "--app-name", "basic-auth"]
    cmd += ["--backend-store-uri", databases.tracking, "--serve-artifacts"]
    cmd += ["--artifacts-destination", str(data / "artifacts")]
    cmd += ["--host", options.host, "--port", str(options.port)]
    cmd += ["--workers", str(options.workers)]
    logfile = data / "logs" / "mlflow.log"
    with open(logfile, "ab") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = TeamServer(options, databases, process, pg)
    try:
        _wait_ready(server, logfile)
    except BaseException:
        server.stop()
        raise
    log.info("team server at %s (data in %s)", server.uri, data)
    return server


@contextlib.contextmanager
def running(options: Options) -> Iterator[TeamServer]:
    server = start(options)
    try:
        yield server
    finally:
        server.stop()


def auth_ini(database_uri: str, *, admin_username: str) -> str:
    """The basic-auth app's config: users and permissions in ``database_uri``, READ for
    anyone without a grant (`modelyard registry users apply` grants the rest). A ``%`` in
    the URL (an encoded socket path) is doubled: configparser reads ``%`` as interpolation."""
    database_uri = database_uri.replace("%", "%%")
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        f"admin_username = {admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Each request's password check (PBKDF2) costs ~0.35 s on 2 busy cores; a gate's
        # approval makes ~25 requests. Cached per worker for 60 s: a password changed
        # through the API is dropped at once on that worker (see MLflow's basic_auth.ini).
        "auth_cache_ttl_seconds = 60\n"
    )


def _secrets(path: Path) -> dict[str, str]:
    """The server's own keys, created once and kept (0600): a new Flask key would break
    sessions, a new Fernet key would lose every stored webhook secret."""
    if path.exists():
        kept = dict(files.read_json(path))
        if "gate_db_password" not in kept:  # made before the gate had its own role
            kept["gate_db_password"] = secrets.token_hex(24)
            with files.atomic_path(path) as tmp:
                tmp.write_text(json.dumps(kept))
                tmp.chmod(0o600)
        return kept
    from cryptography.fernet import Fernet

    keys = {
        "flask_secret_key": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
        or secrets.token_urlsafe(32),
        "webhook_fernet_key": os.environ.get("MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY")
        or Fernet.generate_key().decode(),
        "gate_db_password": secrets.token_hex(24),
    }
    with files.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(keys))
        tmp.chmod(0o600)
    return keys


def _postgres(pgdata: Path) -> tuple[Any, str]:
    """A PostgreSQL cluster in ``pgdata`` (created on first use), listening on a Unix
    socket only; returns (handle, base SQLAlchemy URL without a database)."""
    import warnings

    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir when imported: a warning without
        # XDG_RUNTIME_DIR (CI containers, root shells), and it falls back to /tmp
        warnings.simplefilter("ignore")
        import pgserver

        _wait_while_in_transition(pgdata)
        pg = pgserver.get_server(pgdata, cleanup_mode="stop")
    uri: str = pg.get_uri()  # postgresql://postgres:@/postgres?host=SOCKET_DIR
    return pg, uri.replace("postgresql://", "postgresql+psycopg2://", 1)


def _wait_while_in_transition(pgdata: Path, timeout: float = 120.0) -> None:
    """Wait while the cluster in ``pgdata`` is still stopping or starting (a quick restart:
    the last server's shutdown checkpoint can take seconds on a busy machine). pgserver
    takes a postmaster it finds for a running server and refuses it unless it is ready.
    The status is line 8 of postmaster.pid (PostgreSQL 10+)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return  # no server: pgserver starts one
        if len(lines) < 8 or lines[7].strip() not in ("stopping", "starting"):
            return
        log.info("PostgreSQL in %s is %s: waiting", pgdata, lines[7].strip())
        time.sleep(0.5)


def _databases(base: str) -> Databases:
    """The three databases' URLs on the server of ``base`` (any database in the path)."""
    from sqlalchemy.engine import make_url

    url = make_url(base)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    return Databases(
        *(url.set(database=name).render_as_string(hide_password=False) for name in DATABASES)
    )


def _ensure_databases(databases: Databases) -> None:
    """CREATE DATABASE for each one that does not exist yet."""
    import sqlalchemy as sa

    admin = sa.create_engine(
        _with_database(databases.tracking, "postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            have = {row[0] for row in conn.execute(sa.text("SELECT datname FROM pg_database"))}
            for name in DATABASES:
                if name not in have:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.SQLAlchemyError as exc:
        raise RegistryError(f"cannot prepare the team databases: {exc}") from exc
    finally:
        admin.dispose()


def _gate_role(databases: Databases, password: str) -> Databases:
    """Create (or update) the gate's role, the gate's tables as the admin, and the role's
    grants (registry.store.GATE_GRANTS); the databases with ``gate`` as that role."""
    import re

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from registry.store import GATE_GRANTS, create_schema

    if not re.fullmatch(r"[0-9a-f]{16,}", password):  # it is spliced into SQL below
        raise ConfigError("secrets.json: gate_db_password must be hex (delete it to renew)")
    admin = sa.create_engine(databases.gate, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": GATE_ROLE}
            ).first()
            conn.execute(
                sa.text(
                    f"{'ALTER' if exists else 'CREATE'} ROLE {GATE_ROLE} LOGIN NOSUPERUSER "
                    f"NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD '{password}'"
                )
            )
            for name in DATABASES:
                conn.execute(sa.text(f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC'))
            gate_db = make_url(databases.gate).database
            conn.execute(sa.text(f'GRANT CONNECT ON DATABASE "{gate_db}" TO {GATE_ROLE}'))
            conn.execute(sa.text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
            conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {GATE_ROLE}"))
        create_schema(admin)
        with admin.connect() as conn:
            for grant in GATE_GRANTS:
                conn.execute(sa.text(grant.format(role=GATE_ROLE)))
    except sa.exc.SQLAlchemyError as exc:
        raise RegistryError(f"cannot prepare the gate's database role: {exc}") from exc
    finally:
        admin.dispose()
    gate = make_url(databases.gate).set(username=GATE_ROLE, password=password)
    return Databases(databases.tracking, databases.auth, gate.render_as_string(hide_password=False))


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _wait_ready(server: TeamServer, logfile: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RegistryError(
                f"the MLflow server exited ({server.process.returncode}) while starting:\n"
                + _tail(logfile)
            )
        if http.is_up(f"{server.uri}/health"):
            return
        time.sleep(0.3)
    raise RegistryError(
        f"the MLflow server did not answer {server.uri}/health in {READY_TIMEOUT_S:.0f} s:\n"
        + _tail(logfile)
    )


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"
