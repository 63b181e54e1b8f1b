"""Team mode, prevention: a real `modelyard registry server` (basic-auth app, PostgreSQL),
the team applied with `modelyard registry users apply`, and each account trying what its
role must not do. The server itself answers 403: nothing to revert."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from registry.client import Registry
from tests.conftest import BIN, record_exit
from tests.registry.conftest import (
    ADMIN,
    CANDIDATES,
    EXPERIMENT,
    PRODUCTION,
    TeamServer,
    as_user,
    password,
    start_server,
    stop_server,
    team_yaml,
)

pytestmark = pytest.mark.slow


def test_the_server_knows_its_admin(team_server: TeamServer, team_file: Path) -> None:
    me = httpx.get(f"{team_server.uri}/api/2.0/mlflow/users/current", auth=ADMIN).json()
    assert me == {"is_basic_auth": True, "user": {"id": 1, "is_admin": True, "username": "admin"}}


@pytest.mark.parametrize("auth", [None, ("dana", "nope")], ids=["no-login", "wrong-password"])
def test_the_server_refuses_a_client_it_cannot_authenticate(
    team_server: TeamServer, team_file: Path, auth: tuple[str, str] | None
) -> None:
    refused = httpx.get(f"{team_server.uri}/api/2.0/mlflow/users/current", auth=auth)
    assert refused.status_code == 401


def test_the_server_keeps_models_and_users_in_postgresql(
    team_server: TeamServer, team_file: Path
) -> None:
    """The registry lives in PostgreSQL (the gate's database is on the same server)."""
    engine = sa.create_engine(team_server.database_url("mlflow", admin=True))
    with engine.connect() as conn:
        names = {r[0] for r in conn.execute(sa.text("SELECT name FROM registered_models"))}
        users = sa.create_engine(team_server.database_url("mlflow_auth", admin=True))
        with users.connect() as auth:
            logins = {r[0] for r in auth.execute(sa.text("SELECT username FROM users"))}
    engine.dispose()
    users.dispose()
    assert {CANDIDATES, PRODUCTION} <= names
    assert {"admin", "dana", "ci", "rui", "lee", "gate"} <= logins


def test_the_gates_role_appends_but_cannot_rewrite_the_audit_nor_reach_mlflow(
    team_server: TeamServer,
) -> None:
    """Issue 21: the gate's database URL is its own role, not the superuser: it may read
    and append, but not rewrite, truncate or unprotect the audit (the admin owns the table
    and its triggers), nor create tables, nor connect to MLflow's databases (users)."""
    from sqlalchemy.engine import make_url

    from registry.store import GateStore

    assert make_url(team_server.gate_database_url).username == "modelyard_gate"
    store = GateStore(team_server.gate_database_url)  # opens: the schema is in place
    try:
        store.audit("role-probe", model="m", version="1", actor="test")
        assert any(e.event == "role-probe" for e in store.audit_log("m"))
        with store.engine.connect() as conn:
            for statement in (
                "UPDATE gate_audit SET actor = 'x'",
                "DELETE FROM gate_audit",
                "TRUNCATE gate_audit",
                "ALTER TABLE gate_audit DISABLE TRIGGER ALL",
                "DROP TRIGGER gate_audit_no_change ON gate_audit",
                "DROP TABLE gate_audit",
                "CREATE TABLE gate_mine (x int)",
            ):
                with pytest.raises(
                    sa.exc.ProgrammingError, match=r"permission denied|must be owner"
                ):
                    conn.execute(sa.text(statement))
                conn.rollback()
    finally:
        store.close()
    for database in ("mlflow", "mlflow_auth"):
        other = sa.create_engine(team_server.database_url(database))
        with pytest.raises(sa.exc.OperationalError, match="permission denied for database"):
            other.connect().close()
        other.dispose()


def test_artifacts_go_through_the_server(team_server: TeamServer, team_file: Path) -> None:
    """Proxied (mlflow-artifacts:), not a path clients must reach."""
    with as_user(team_server, "dana"):
        experiment = Registry(team_server.uri).client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")


def test_users_apply_is_idempotent_and_repairs_a_changed_grant(
    team_server: TeamServer, team_file: Path
) -> None:
    again = team_server.apply(team_file)
    assert again.returncode == 0, again.stderr
    assert "nothing changed" in again.stdout

    # Someone gave dana update rights on production by hand; apply takes them back.
    admin = httpx.Client(base_url=f"{team_server.uri}/api/3.0/mlflow/users/permissions", auth=ADMIN)
    grant = {"username": "dana", "resource_type": "registered_model", "resource_id": PRODUCTION}
    assert admin.post("/revoke", json=grant).status_code == 200
    assert admin.post("/grant", json={**grant, "permission": "EDIT"}).status_code == 200
    repaired = team_server.apply(team_file)
    assert repaired.returncode == 0, repaired.stderr
    assert f"granted dana: READ on registered_model {PRODUCTION}" in repaired.stdout
    now = admin.get("/get", params=grant).json()
    assert now["permission"] == "READ"


def test_a_new_user_without_a_password_is_refused_and_nothing_is_created(
    team_server: TeamServer, tmp_path: Path
) -> None:
    users = {**{k: v for k, v in team_yaml()["users"].items()}, "eve": {"role": "data_scientist"}}
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump({**team_yaml(), "users": users}))
    result = team_server.apply(path)
    assert result.returncode == 2
    assert "eve: set MODELYARD_PASSWORD_EVE" in result.stderr
    found = httpx.get(
        f"{team_server.uri}/api/2.0/mlflow/users/get", params={"username": "eve"}, auth=ADMIN
    )
    assert found.status_code == 404


def test_users_apply_needs_the_admin(team_server: TeamServer, team_file: Path) -> None:
    result = team_server.apply(
        team_file, MLFLOW_TRACKING_USERNAME="dana", MLFLOW_TRACKING_PASSWORD=password("dana")
    )
    assert result.returncode == 1
    assert "403" in result.stderr and "admin" in result.stderr


# -- what each role may not do: the server answers 403 ---------------------------------------


@pytest.fixture(scope="module")
def versions(team_server: TeamServer, team_file: Path) -> dict[str, str]:
    """A candidate registered by the trainer, copied to production by the gate."""
    with as_user(team_server, "ci"):
        candidate = Registry(team_server.uri).client.create_model_version(
            CANDIDATES, source="s3://modelyard-test/model"
        )
    with as_user(team_server, "gate"):
        client = Registry(team_server.uri).client
        copied = client.copy_model_version(f"models:/{CANDIDATES}/{candidate.version}", PRODUCTION)
        client.set_registered_model_alias(PRODUCTION, "champion", copied.version)
    return {"candidate": str(candidate.version), "production": str(copied.version)}


Action = Callable[[Any, dict[str, str]], Any]
ACTIONS: dict[str, Action] = {
    "move champion": lambda c, v: c.set_registered_model_alias(
        PRODUCTION, "champion", v["production"]
    ),
    "remove champion": lambda c, v: c.delete_registered_model_alias(PRODUCTION, "champion"),
    "write an approval tag": lambda c, v: c.set_model_version_tag(
        PRODUCTION, v["production"], "approval.reviewer", "rui"
    ),
    # what copy_model_version does (without its wrapping of the server's answer)
    "copy a candidate to production": lambda c, v: c.create_model_version(
        PRODUCTION, source=f"models:/{CANDIDATES}/{v['candidate']}"
    ),
    "tag a candidate": lambda c, v: c.set_model_version_tag(
        CANDIDATES, v["candidate"], "gates.passed", "True"
    ),
    "register a candidate": lambda c, v: c.create_model_version(CANDIDATES, source="s3://x/m"),
}
FORBIDDEN = [
    ("dana", "move champion"),
    ("dana", "remove champion"),
    ("dana", "write an approval tag"),
    ("dana", "copy a candidate to production"),
    ("dana", "tag a candidate"),
    ("dana", "register a candidate"),
    ("ci", "move champion"),
    ("ci", "write an approval tag"),
    ("ci", "copy a candidate to production"),
    ("rui", "move champion"),
    ("rui", "write an approval tag"),
    ("rui", "tag a candidate"),
]


@pytest.mark.parametrize(("user", "action"), FORBIDDEN, ids=[f"{u}-{a}" for u, a in FORBIDDEN])
def test_the_server_refuses(
    team_server: TeamServer, versions: dict[str, str], user: str, action: str
) -> None:
    from mlflow.exceptions import MlflowException

    with as_user(team_server, user), pytest.raises(MlflowException) as refused:
        ACTIONS[action](Registry(team_server.uri).client, versions)
    assert refused.value.get_http_status_code() == 403, str(refused.value)
    with as_user(team_server, "gate"):
        registry = Registry(team_server.uri)
        assert registry.by_alias(PRODUCTION, "champion").version == versions["production"]
        assert "approval.reviewer" not in registry.version(PRODUCTION, versions["production"]).tags


ALLOWED = [("ci", "tag a candidate"), ("ci", "register a candidate"), ("gate", "move champion")]


@pytest.mark.parametrize(("user", "action"), ALLOWED, ids=[f"{u}-{a}" for u, a in ALLOWED])
def test_the_roles_that_should_can(
    team_server: TeamServer, versions: dict[str, str], user: str, action: str
) -> None:
    """What a role may do, it can, and the server then holds the change."""
    with as_user(team_server, user):
        registry = Registry(team_server.uri)
        before = {v.version for v in registry.versions(CANDIDATES)}
        done = ACTIONS[action](registry.client, versions)
        if action == "tag a candidate":
            tags = registry.version(CANDIDATES, versions["candidate"]).tags
            assert tags["gates.passed"] == "True"
        elif action == "register a candidate":
            assert {v.version for v in registry.versions(CANDIDATES)} == {*before, done.version}
        else:
            assert registry.by_alias(PRODUCTION, "champion").version == versions["production"]


def test_a_restart_keeps_users_grants_and_models(team_server: TeamServer, team_file: Path) -> None:
    """SIGTERM stops the server cleanly (exit 0, PostgreSQL too); started again on the same
    folder, without the admin password, it has every user, grant and model. The session's
    later tests use the restarted server."""
    from mlflow.exceptions import MlflowException

    code = stop_server(team_server)
    record_exit(["registry", "server"], code if code is not None else -1)
    assert code == 0, team_server.log.read_text()[-2000:]
    restarted = start_server(team_server.data_dir, first_start=False)
    team_server.uri, team_server.process, team_server.log = (
        restarted.uri,
        restarted.process,
        restarted.log,
    )
    again = team_server.apply(team_file)
    assert again.returncode == 0 and "nothing changed" in again.stdout, again.stderr
    with as_user(team_server, "dana"), pytest.raises(MlflowException) as refused:
        Registry(team_server.uri).client.set_registered_model_alias(PRODUCTION, "champion", "1")
    assert refused.value.get_http_status_code() == 403


def test_a_server_that_cannot_reach_its_database_stops_with_1(
    server_tier: None, tmp_path: Path
) -> None:
    args = ["registry", "server", "--data-dir", str(tmp_path / "data")]
    unreachable = "postgresql://modelyard@127.0.0.1:9/none"  # port 9: nothing listens
    done = subprocess.run(
        [str(BIN / "modelyard"), *args, "--database-url", unreachable],
        env={**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1], "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    record_exit(args, done.returncode)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot prepare the team databases" in done.stderr
