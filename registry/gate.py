"""The review gate in team mode: the only account that moves ``champion``.

A reviewer asks it with their own MLflow login (`modelyard approve NAME VERSION`):

1. the gate asks the MLflow server who the credentials belong to
   (``/api/2.0/mlflow/users/current``), and checks that login's role in team.yaml;
2. it gathers evidence, never reading the candidate's editable tags as truth: the
   version's run exists and lives in the trainer's experiment (only the trainer can write
   there), the registered artifact was logged by that run, its model.onnx sha256 is
   recomputed and must be the file the run registered, the gates are recomputed from the
   run's logged metrics with the gate's own thresholds, four eyes compares the
   reviewer's identities with the run's verified author, and the candidate is compared
   with the current champion now (registry.comparison: both verified model files scored
   on the run's logged test splits; refused when significantly worse, as evaluate does);
   a candidate approved before is not copied again;
3. it copies the candidate into the production model (tags written by the gate only),
   signs the approval (Ed25519 with the gate's private key) and stores it in its own
   database and on the production version, audits it, and only then moves
   ``champion``, then triggers the deploy once (``registry.dispatch``);
4. it rewrites the model cards (registry.card): on the new production version the
   comparison with the champion it replaced and a summary of its audit, on the open
   candidate (``challenger``) the comparison recomputed against the new champion.

The gate's parts: ``registry.gate_base`` (its state, ``approved``), ``gate_compare``
(evidence and the comparison of step 2), ``gate_cards`` (step 4), ``gate_reconcile``
(below), ``registry.approval`` (what is signed, and the deploy side's check) and
``registry.webhooks`` (the HTTP side: the receiver, and the reviewer's requests).

Webhook events on the production model and ``reconcile`` (on a schedule) check the
same thing from the other side: a champion without a valid signed approval is put back
(second line of defence; only an admin could have moved it), a removed champion is
restored, a champion moved to another approved version is recorded, and the champion's
deploy is requested once, confirmed from the model's ``deployed.version`` tag, and
retried with backoff when the dispatch failed or was never confirmed.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from core.errors import (
    PromotionRefused,
)
from core.tagkeys import CopyTag, LineageTag
from registry import policy
from registry.approval import (
    MANIFEST_TAG,
    Approval,
    sign,
)
from registry.auth import AuthAPI
from registry.client import CHAMPION, Version
from registry.comparison import REFERENCE, Comparison
from registry.gate_base import now as _now
from registry.gate_reconcile import Reconciling
from registry.keys import RECORD_TAG, SIGNATURE_TAG
from registry.manifest import DOWNLOAD_META, Manifest
from registry.store import CHAMPION_EVENTS, StoredApproval

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promotion:
    """What ``approve`` did."""

    approval: Approval
    previous: str | None
    deploy: str
    gates: list[policy.GateCheck] = field(default_factory=list)
    comparison: Comparison | None = None
    already: bool = False  # approved before: nothing was done again


class Gate(Reconciling):
    """The review gate: approve (and roll back) here; compare, cards and reconcile in its
    parts (registry.gate_compare, gate_cards, gate_reconcile), state in gate_base."""

    # -- approve ------------------------------------------------------------------------

    def approve(
        self, credentials: tuple[str, str], name: str, version: str, comment: str
    ) -> Promotion:
        """Check and promote candidate ``name`` v``version`` for the holder of
        ``credentials``. Raises BadCredentials (not a login of this server),
        PromotionRefused (with every reason; audited), RegistryError."""
        user = AuthAPI(self.registry.uri, credentials).current_user().username
        try:
            return self._approve(user, name, version, comment)
        except PromotionRefused as exc:
            self.store.audit(
                "approval-refused", model=name, version=version, actor=user, reasons=str(exc)
            )
            raise

    def approve_request(
        self, credentials: tuple[str, str], request: dict[str, Any]
    ) -> dict[str, Any]:
        """POST /approve's body in, its JSON reply out."""
        done = self.approve(
            credentials,
            str(request["name"]),
            str(request["version"]),
            str(request.get("comment", "")),
        )
        return {
            "production": done.approval.production_name,
            "version": done.approval.production_version,
            "previous": done.previous,
            "deploy": done.deploy,
            "approval": asdict(done.approval),
            "gates": [asdict(g) for g in done.gates],
            "comparison": done.approval.comparison,
            "already": done.already,
        }

    def _approve(self, user: str, name: str, version: str, comment: str) -> Promotion:
        role = self.team.role(user)
        if role != "reviewer":
            raise PromotionRefused(f"{user} may not approve: role {role or 'none'}, not reviewer")
        if name != self.team.models.candidates:
            raise PromotionRefused(
                f"{name} is not the team's candidates model ({self.team.models.candidates})"
            )
        candidate = self.registry.version(name, version)
        with self._lock:  # the champion compared with is the one replaced
            again = self._approved_before(user, name, version)
            if again is not None:
                return again
            evidence = self.gather(candidate)
            verdict = policy.judge(evidence, self.rules, reviewer=user, people=self.team.people())
            if not verdict.decision.ok:
                raise PromotionRefused(f"{name} v{version}: {verdict.decision}")
            assert evidence.onnx_sha256 and evidence.run_id and verdict.author
            previous = self.registry.by_alias(self.production, CHAMPION)
            with tempfile.TemporaryDirectory(prefix="modelyard-approve-") as tmp:
                reference, source = self._reference(candidate, evidence, Path(tmp) / REFERENCE)
                floor = (
                    self.check_floor(candidate, evidence, reference, source)
                    if self.committed is not None
                    else None
                )
                comparison = self.compare(
                    candidate, evidence, previous, reference=reference, source=source
                )
                if floor:
                    comparison = replace(comparison, notes=[floor, *comparison.notes])
                if not comparison.passed:
                    raise PromotionRefused(
                        f"{name} v{version} is worse than the current champion: "
                        f"{comparison.summary()}"
                    )
                return self._promote(
                    user, candidate, evidence, verdict, comparison, previous, comment, reference
                )

    def _promote(
        self,
        user: str,
        candidate: Version,
        evidence: policy.Evidence,
        verdict: policy.Verdict,
        comparison: Comparison,
        previous: Version | None,
        comment: str,
        reference: Path,
    ) -> Promotion:
        assert evidence.onnx_sha256 and evidence.run_id and verdict.author
        name, version = candidate.name, candidate.version
        at = _now()
        manifest, (kept_by, source) = self._keep(candidate, evidence.onnx_sha256, reference)
        copied = self.registry.create_version(
            self.production,
            source,
            run_id=kept_by,
            tags={
                CopyTag.SOURCE_MODEL: name,
                CopyTag.SOURCE_VERSION: version,
                CopyTag.SOURCE_RUN_ID: evidence.run_id,
                LineageTag.ONNX_SHA256: evidence.onnx_sha256,
                MANIFEST_TAG: manifest.digest(),
                policy.RUN_AUTHOR: verdict.author,
                policy.APPROVAL_REVIEWER: user,
                policy.APPROVAL_AT: at,
                policy.APPROVAL_COMMENT: comment,
            },
            description=candidate.description,
        )
        approval = Approval(
            approval_id=uuid.uuid4().hex,
            candidate_name=name,
            candidate_version=version,
            production_name=self.production,
            production_version=copied.version,
            run_id=evidence.run_id,
            onnx_sha256=evidence.onnx_sha256,
            reviewer=user,
            author=verdict.author,
            comment=comment,
            at=at,
            comparison=comparison.record(),
            manifest=manifest.record(),
            artifacts=source,
            reference=Manifest.of_folder(reference).record(),
            reference_artifacts=f"{source.rpartition('/')[0]}/{REFERENCE}",
        )
        record = approval.canonical()
        signature = sign(self.key, record)
        # The approval is written (its own table, then the version) before the alias
        # moves: whoever sees the new champion can find what approved it.
        self.store.add_approval(
            StoredApproval(
                approval.approval_id,
                self.production,
                copied.version,
                asdict(approval),
                signature,
            )
        )
        self.registry.set_version_tags(
            self.production, copied.version, {RECORD_TAG: record, SIGNATURE_TAG: signature}
        )
        gates = {g.name: g.value for g in verdict.gates}
        self.store.audit(
            "approved",
            model=self.production,
            version=copied.version,
            actor=user,
            candidate=f"{name} v{version}",
            run_id=evidence.run_id,
            author=verdict.author,
            onnx_sha256=evidence.onnx_sha256,
            manifest_sha256=manifest.digest(),
            artifacts=source,
            gates=gates,
            comparison=comparison.record(),
            comment=comment,
        )
        self.registry.set_champion(self.production, copied.version)
        self.store.audit(
            "promote",
            model=self.production,
            version=copied.version,
            actor=user,
            previous=previous.version if previous else None,
        )
        deploy = self._ensure_deployed(copied.version)
        self._refresh_cards(copied.version, candidate=candidate, comparison=comparison)
        return Promotion(
            approval,
            previous.version if previous else None,
            deploy,
            verdict.gates,
            comparison,
        )

    def _keep(
        self, candidate: Version, onnx_sha256: str, reference: Path
    ) -> tuple[Manifest, tuple[str, str]]:
        """Copy the candidate's model folder, and the ``reference`` rows it was compared
        on, into the gate's own experiment (only the gate may write there: team.yaml's
        ``approved`` experiment), so no one can change an approved file afterwards.
        Returns the model's manifest and (the gate's run, the model copy's URI). Refuses
        when model.onnx is no longer the file the evidence verified."""
        label = f"{candidate.name} v{candidate.version}"
        with tempfile.TemporaryDirectory(prefix="modelyard-approve-") as tmp:
            folder = self.registry.download(candidate.name, candidate.version, Path(tmp) / "m")
            (folder / DOWNLOAD_META).unlink(missing_ok=True)
            manifest = Manifest.of_folder(folder)
            if manifest.sha256_of("model.onnx") != onnx_sha256:
                raise PromotionRefused(
                    f"{label}: its model.onnx is not the verified file (sha256 "
                    f"{onnx_sha256[:12]}): it changed during the approval; investigate, "
                    "then try again"
                )
            experiment, _ = self.registry.ensure_experiment(self.team.approved_experiment)
            source = self.registry.keep_folder(
                experiment, folder, run_name=f"approved {label}", beside={REFERENCE: reference}
            )
        return manifest, source

    def _approved_before(self, user: str, name: str, version: str) -> Promotion | None:
        """Approving a candidate again changes nothing. While its production copy is the
        champion the answer is that copy (a retried request); otherwise a refusal."""
        stored = self.store.approval_of_candidate(self.production, name, version)
        if stored is None:
            return None
        approval = Approval(**stored.record)
        champion = self.registry.by_alias(self.production, CHAMPION)
        if champion is None or champion.version != approval.production_version:
            now = f"v{champion.version}" if champion else "none"
            raise PromotionRefused(
                f"{name} v{version} was approved before, by {approval.reviewer} at "
                f"{approval.at}, as {self.production} v{approval.production_version}, which is "
                f"no longer the champion (champion: {now}); a candidate is approved once: "
                "to go back to it use `modelyard rollback`, or register it again"
            )
        self.store.audit(
            "approval-repeated",
            model=name,
            version=version,
            actor=user,
            production_version=approval.production_version,
        )
        state = self.store.deploy(self.production, approval.production_version)
        return Promotion(
            approval,
            None,
            f"deploy-{state.state}" if state else "deploy-unknown",
            already=True,
        )

    # -- the comparison with the current champion ----------------------------------------

    # -- the cards ------------------------------------------------------------------------

    # -- rollback -----------------------------------------------------------------------

    def rollback(self, credentials: tuple[str, str]) -> tuple[str, str]:
        """Move ``champion`` back to the previous version the gate made champion that
        still carries a valid signed approval, for a reviewer. Returns (from, to)."""
        user = AuthAPI(self.registry.uri, credentials).current_user().username
        if self.team.role(user) != "reviewer":
            raise PromotionRefused(
                f"{user} may not roll back: role {self.team.role(user) or 'none'}, not reviewer"
            )
        with self._lock:
            current = self.registry.by_alias(self.production, CHAMPION)
            if current is None:
                raise PromotionRefused(f"{self.production} has no champion to roll back from")
            earlier = [
                e.version
                for e in reversed(self.store.audit_log(self.production))
                if e.event in CHAMPION_EVENTS and e.version and e.version != current.version
            ]
            target = next((v for v in earlier if self.approved(v)), None)
            if target is None:
                raise PromotionRefused(f"{self.production}: no earlier approved champion")
            self.registry.set_champion(self.production, target)
            self.store.audit(
                "rollback",
                model=self.production,
                version=target,
                actor=user,
                previous=current.version,
            )
            self._ensure_deployed(target)
            self._refresh_cards(target, candidate=None, comparison=None)
        return current.version, target

    def rollback_request(
        self, credentials: tuple[str, str], request: dict[str, Any]
    ) -> dict[str, Any]:
        """POST /rollback's reply."""
        was, now = self.rollback(credentials)
        return {"production": self.production, "from": was, "to": now}

    # -- events and reconcile -----------------------------------------------------------


# -- what the deploy workflow checks before building ---------------------------------------


# -- the reviewer's side -------------------------------------------------------------------
