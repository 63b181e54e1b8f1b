"""The review gate's own database: what it has seen, approved, deployed and done.

No MLflow account can reach it (team mode: the ``modelyard_gate`` database next to
MLflow's, ``MODELYARD_GATE_DATABASE_URL``), so nobody with edit rights on a model can
rewrite it, unlike model tags. SQLAlchemy Core; PostgreSQL in team mode, SQLite in tests
of the pure parts.

    gate_deliveries  webhook delivery ids seen: a replay is refused after a restart too
    gate_approvals   signed approvals of production versions (the latest one counts)
    gate_audit       append-only: UPDATE, DELETE (and TRUNCATE) are refused by triggers
    gate_deploys     the deploy of each (model, version): requested, failed (when to
                     retry), deployed; claimed atomically so a version is dispatched once
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from core.errors import RegistryError

log = logging.getLogger(__name__)

meta = sa.MetaData()
deliveries = sa.Table(
    "gate_deliveries",
    meta,
    sa.Column("delivery_id", sa.String(200), primary_key=True),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)
approvals = sa.Table(
    "gate_approvals",
    meta,
    sa.Column("approval_id", sa.String(64), primary_key=True),
    sa.Column("production_name", sa.String(256), nullable=False),
    sa.Column("production_version", sa.String(32), nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # the signed fields, canonical JSON
    sa.Column("signature", sa.String(128), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
audit = sa.Table(
    "gate_audit",
    meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("version", sa.String(32)),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
)
deploys = sa.Table(
    "gate_deploys",
    meta,
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("version", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),  # requested|failed|deployed|superseded
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
)

REQUESTED, FAILED, DEPLOYED = "requested", "failed", "deployed"
SUPERSEDED = "superseded"  # another version's deploy was requested after this one
# Events after which ``champion`` names the version the gate stands behind.
CHAMPION_EVENTS = ("promote", "rollback", "promote-discovered", "alias-restored")

_APPEND_ONLY = {
    "postgresql": [
        """CREATE OR REPLACE FUNCTION gate_audit_append_only() RETURNS trigger AS $$
           BEGIN RAISE EXCEPTION 'gate_audit is append-only'; END $$ LANGUAGE plpgsql""",
        "DROP TRIGGER IF EXISTS gate_audit_no_change ON gate_audit",
        """CREATE TRIGGER gate_audit_no_change BEFORE UPDATE OR DELETE ON gate_audit
           FOR EACH ROW EXECUTE FUNCTION gate_audit_append_only()""",
        "DROP TRIGGER IF EXISTS gate_audit_no_truncate ON gate_audit",
        """CREATE TRIGGER gate_audit_no_truncate BEFORE TRUNCATE ON gate_audit
           FOR EACH STATEMENT EXECUTE FUNCTION gate_audit_append_only()""",
    ],
    "sqlite": [
        """CREATE TRIGGER IF NOT EXISTS gate_audit_no_update BEFORE UPDATE ON gate_audit
           BEGIN SELECT RAISE(ABORT, 'gate_audit is append-only'); END""",
        """CREATE TRIGGER IF NOT EXISTS gate_audit_no_delete BEFORE DELETE ON gate_audit
           BEGIN SELECT RAISE(ABORT, 'gate_audit is append-only'); END""",
    ],
}


# What the gate's own PostgreSQL role may do (``modelyard registry server`` creates it; the
# tables and the audit's triggers belong to the server's admin): read and append, and move
# a deploy's state. No UPDATE, DELETE or TRUNCATE of the audit, no ALTER of any table.
GATE_GRANTS = (
    "GRANT SELECT, INSERT ON gate_audit, gate_approvals, gate_deliveries TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON gate_deploys TO {role}",
    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
)


def create_schema(engine: sa.Engine) -> None:
    """The gate's tables and the audit's append-only triggers, where they are missing.
    Run by the tables' owner; a role that may only use them (the gate's) finds them all
    in place and changes nothing."""
    meta.create_all(engine)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            found = conn.execute(
                sa.text("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'gate_audit_no_%'")
            ).scalar()
            if found == 2:
                return
        for statement in _APPEND_ONLY.get(engine.dialect.name, []):
            conn.execute(sa.text(statement))


@dataclass(frozen=True)
class Entry:
    """One audit entry."""

    id: int
    at: datetime
    event: str
    model: str
    version: str | None
    actor: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class Deploy:
    model: str
    version: str
    state: str
    attempts: int
    last_error: str | None
    updated_at: datetime
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class StoredApproval:
    approval_id: str
    production_name: str
    production_version: str
    record: dict[str, Any]
    signature: str


class GateStore:
    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        try:
            create_schema(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryError(f"cannot open the gate's database: {exc}") from exc

    def close(self) -> None:
        self.engine.dispose()

    # -- deliveries ---------------------------------------------------------------------

    def remember_delivery(self, delivery_id: str) -> bool:
        """Record a webhook delivery id; False if it was seen before (a replay)."""
        try:
            with self._tx() as conn:
                conn.execute(deliveries.insert().values(delivery_id=delivery_id, received_at=now()))
        except sa.exc.IntegrityError:
            return False
        return True

    # -- approvals ----------------------------------------------------------------------

    def add_approval(self, approval: StoredApproval) -> None:
        with self._tx() as conn:
            conn.execute(
                approvals.insert().values(
                    **{**asdict(approval), "record": _dump(approval.record)}, at=now()
                )
            )

    def approval_for(self, production_name: str, version: str) -> StoredApproval | None:
        with self._tx() as conn:
            row = (
                conn.execute(
                    approvals.select()
                    .where(
                        approvals.c.production_name == production_name,
                        approvals.c.production_version == version,
                    )
                    .order_by(approvals.c.at.desc())
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        return StoredApproval(
            row["approval_id"],
            row["production_name"],
            row["production_version"],
            json.loads(row["record"]),
            row["signature"],
        )

    def approval_of_candidate(
        self, production_name: str, name: str, version: str
    ) -> StoredApproval | None:
        """The approval that copied candidate ``name`` v``version`` into production, if
        any (approvals are few: read them all)."""
        with self._tx() as conn:
            rows = (
                conn.execute(
                    approvals.select()
                    .where(approvals.c.production_name == production_name)
                    .order_by(approvals.c.at)
                )
                .mappings()
                .all()
            )
        for row in rows:
            record = json.loads(row["record"])
            if (record.get("candidate_name"), record.get("candidate_version")) == (name, version):
                return StoredApproval(
                    row["approval_id"],
                    row["production_name"],
                    row["production_version"],
                    record,
                    row["signature"],
                )
        return None

    # -- audit --------------------------------------------------------------------------

    def audit(
        self, event: str, *, model: str, version: str | None, actor: str, **detail: Any
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                audit.insert().values(
                    at=now(),
                    event=event,
                    model=model,
                    version=version,
                    actor=actor,
                    detail=_dump(detail),
                )
            )
        log.info("audit %s %s v%s by %s %s", event, model, version, actor, detail or "")

    def audit_log(self, model: str | None = None) -> list[Entry]:
        query = audit.select().order_by(audit.c.id)
        if model is not None:
            query = query.where(audit.c.model == model)
        with self._tx() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            Entry(
                r["id"],
                r["at"],
                r["event"],
                r["model"],
                r["version"],
                r["actor"],
                json.loads(r["detail"]),
            )
            for r in rows
        ]

    def model_identity(self, model: str) -> int | None:
        """The creation time the gate recorded the first time it saw ``model`` (an
        append-only ``model-identity`` audit entry), or None."""
        with self._tx() as conn:
            row = conn.execute(
                sa.select(audit.c.detail)
                .where(audit.c.model == model, audit.c.event == "model-identity")
                .order_by(audit.c.id)
                .limit(1)
            ).first()
        return int(json.loads(row[0])["created"]) if row is not None else None

    def last_champion(self, model: str) -> str | None:
        """The version the gate last made (or accepted as) champion of ``model``."""
        with self._tx() as conn:
            row = conn.execute(
                sa.select(audit.c.version)
                .where(audit.c.model == model, audit.c.event.in_(CHAMPION_EVENTS))
                .order_by(audit.c.id.desc())
                .limit(1)
            ).first()
        return str(row[0]) if row is not None else None

    # -- deploys ------------------------------------------------------------------------

    def deploy(self, model: str, version: str) -> Deploy | None:
        with self._tx() as conn:
            row = (
                conn.execute(
                    deploys.select().where(deploys.c.model == model, deploys.c.version == version)
                )
                .mappings()
                .first()
            )
        return Deploy(**row) if row is not None else None

    def claim_deploy(self, model: str, version: str, *, at: datetime | None = None) -> bool:
        """Mark the deploy of (model, version) requested if nobody has, if it failed and
        its retry is due, or if another version was requested or deployed since (it is
        champion again). True: the caller dispatches it (exactly one caller gets True).
        Every other version's request is superseded by this one."""
        at = at or now()
        with self._tx() as conn:
            try:
                with conn.begin_nested():
                    conn.execute(
                        deploys.insert().values(
                            model=model, version=version, state=REQUESTED, attempts=1, updated_at=at
                        )
                    )
                claimed = True
            except sa.exc.IntegrityError:
                again = sa.or_(
                    sa.and_(deploys.c.state == FAILED, deploys.c.next_attempt_at <= at),
                    deploys.c.state.in_((SUPERSEDED, DEPLOYED)),
                )
                changed = conn.execute(
                    deploys.update()
                    .where(deploys.c.model == model, deploys.c.version == version, again)
                    .values(state=REQUESTED, attempts=deploys.c.attempts + 1, updated_at=at)
                )
                claimed = changed.rowcount == 1
            if claimed:
                conn.execute(
                    deploys.update()
                    .where(
                        deploys.c.model == model,
                        deploys.c.version != version,
                        deploys.c.state != SUPERSEDED,
                    )
                    .values(state=SUPERSEDED, updated_at=at, next_attempt_at=None)
                )
        return claimed

    def deploy_failed(self, model: str, version: str, error: str, *, retry_in: timedelta) -> Deploy:
        at = now()
        with self._tx() as conn:
            conn.execute(
                deploys.update()
                .where(deploys.c.model == model, deploys.c.version == version)
                .values(
                    state=FAILED,
                    last_error=error[:2000],
                    updated_at=at,
                    next_attempt_at=at + retry_in,
                )
            )
        found = self.deploy(model, version)
        assert found is not None
        return found

    def deploy_stale(self, model: str, version: str, *, older_than: timedelta) -> bool:
        """A request nobody confirmed in time becomes a failure due for retry now."""
        at = now()
        with self._tx() as conn:
            changed = conn.execute(
                deploys.update()
                .where(
                    deploys.c.model == model,
                    deploys.c.version == version,
                    deploys.c.state == REQUESTED,
                    deploys.c.updated_at <= at - older_than,
                )
                .values(state=FAILED, last_error="not confirmed in time", next_attempt_at=at)
            )
        return changed.rowcount == 1

    def deployed(self, model: str, version: str) -> None:
        at = now()
        with self._tx() as conn:
            changed = conn.execute(
                deploys.update()
                .where(deploys.c.model == model, deploys.c.version == version)
                .values(state=DEPLOYED, updated_at=at, next_attempt_at=None)
            )
            if changed.rowcount == 0:
                conn.execute(
                    deploys.insert().values(
                        model=model, version=version, state=DEPLOYED, attempts=0, updated_at=at
                    )
                )

    @contextmanager
    def exclusive(self, name: str) -> Iterator[None]:
        """Hold the lock ``name`` across processes (the gate and a scheduled reconcile
        both rewrite model cards: the last writer must have read the latest state).
        PostgreSQL: a session advisory lock; SQLite: one writer at a time anyway."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryError(f"the gate's database failed: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except sa.exc.IntegrityError:
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryError(f"the gate's database failed: {exc}") from exc


def now() -> datetime:
    return datetime.now(UTC)


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
