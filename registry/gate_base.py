"""The review gate's state, shared by its parts (``registry.gate`` approves, ``gate_compare``
compares, ``gate_cards`` writes the cards, ``gate_reconcile`` checks from the other side):
its registry, team, store, key, rules and dispatcher, one lock for every decision, and
whether a production version carries an approval it signed."""

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from registry import evidence, keys, policy
from registry.approval import (
    signed,
)
from registry.client import Registry
from registry.dispatch import Dispatcher
from registry.store import GateStore
from registry.team import Team

log = logging.getLogger(__name__)

# Where the whole audit is (the model card shows a summary of it).
AUDIT_WHERE = "the `gate_audit` table of the gate's database, MODELYARD_GATE_DATABASE_URL"


@dataclass(frozen=True)
class Backoff:
    """When to retry a failed deploy: ``base`` x 2^(attempts-1), at most ``cap``."""

    base: timedelta = timedelta(minutes=1)
    cap: timedelta = timedelta(hours=1)
    # A requested deploy not confirmed (deployed.version) in this time is retried.
    confirm_within: timedelta = timedelta(hours=1)

    def after(self, attempts: int) -> timedelta:
        wait: timedelta = self.base * (2 ** max(0, attempts - 1))
        return min(self.cap, wait)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class GateBase:
    def __init__(
        self,
        *,
        registry: Registry,
        team: Team,
        store: GateStore,
        key: keys.Key,
        rules: policy.Rules,
        dispatcher: Dispatcher,
        backoff: Backoff | None = None,
        committed: evidence.Source | None = None,
    ) -> None:
        if not isinstance(key, keys.Signer | keys.Verifier):
            raise TypeError("the gate's key is a registry.keys.Signer (or Verifier: no approvals)")
        self.registry, self.team, self.store, self.key = registry, team, store, key
        self.rules, self.dispatcher = rules, dispatcher
        self.backoff = backoff or Backoff()
        # Where the reviewed commits and their data are: the gate scores candidates on the
        # test rows a commit's dvc.lock names (registry.evidence), not on their own rows.
        self.committed = committed
        self.production = team.models.production
        self._lock = threading.Lock()  # one decision at a time (approve, events, reconcile)

    def approved(self, version: str) -> bool:
        """Whether production ``version`` carries an approval this gate signed."""
        stored = self.store.approval_for(self.production, version)
        if stored is None:
            return False
        record = json.dumps(stored.record, sort_keys=True, separators=(",", ":"))
        return (
            signed(self.key, record, stored.signature)
            and stored.record.get("production_version") == version
        )
