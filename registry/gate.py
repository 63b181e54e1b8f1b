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
   signs the approval (HMAC-SHA256 with the gate's key) and stores it in its own
   database and on the production version, audits it, and only then moves
   ``champion``, then triggers the deploy once (``registry.dispatch``);
4. it rewrites the model cards (registry.card): on the new production version the
   comparison with the champion it replaced and a summary of its audit, on the open
   candidate (``challenger``) the comparison recomputed against the new champion.

Webhook events on the production model and ``reconcile`` (on a schedule) check the
same thing from the other side: a champion without a valid signed approval is put back
(second line of defence; only an admin could have moved it), a removed champion is
restored, a champion moved to another approved version is recorded, and the champion's
deploy is requested once, confirmed from the model's ``deployed.version`` tag, and
retried with backoff when the dispatch failed or was never confirmed.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core import files, http
from core.errors import (
    DataError,
    ExternalServiceError,
    ModelyardError,
    PromotionRefused,
    RegistryError,
)
from registry import card, keys, policy
from registry.auth import AuthAPI
from registry.client import CHALLENGER, CHAMPION, Registry, Version
from registry.comparison import BASE, REFERENCE, Comparison, compare_models
from registry.dispatch import Dispatcher
from registry.manifest import DOWNLOAD_META, Manifest, differences
from registry.promotion import DEPLOYED
from registry.store import CHAMPION_EVENTS, REQUESTED, GateStore, StoredApproval
from registry.team import Team

log = logging.getLogger(__name__)

RECORD_TAG = "approval.record"  # the signed fields, canonical JSON
SIGNATURE_TAG = "approval.signature"
MANIFEST_TAG = "manifest.sha256"  # the approved folder's manifest digest (also signed)
# Where the whole audit is (the model card shows a summary of it).
AUDIT_WHERE = "the `gate_audit` table of the gate's database, MODELYARD_GATE_DATABASE_URL"


@dataclass(frozen=True)
class Approval:
    """What the gate signs: which file, from which run, approved by whom, into where."""

    approval_id: str
    candidate_name: str
    candidate_version: str
    production_name: str
    production_version: str
    run_id: str
    onnx_sha256: str
    reviewer: str
    author: str
    comment: str
    at: str
    # The comparison with the champion it replaced, recomputed at approval
    # (registry.comparison.Comparison.record); empty in approvals made before it existed.
    comparison: dict[str, Any] = field(default_factory=dict)
    # Every file of the approved model folder (registry.manifest) and where the gate
    # keeps that copy; empty in approvals made before manifests (model.onnx only).
    manifest: list[dict[str, Any]] = field(default_factory=list)
    artifacts: str = ""
    # The test rows the comparison scored (the candidate's logged reference/ at approval),
    # kept beside the model copy: every file and where. The next candidate is also scored
    # on these rows, which no trainer can choose or change; empty in older approvals.
    reference: list[dict[str, Any]] = field(default_factory=list)
    reference_artifacts: str = ""

    def canonical(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


def sign(key: bytes, record: str) -> str:
    """``<key id>:<HMAC-SHA256>`` with the current key (``key``: a registry.keys.Keyring
    or one plain key)."""
    return keys.sign(key, record)


def signed(key: bytes, record: str, signature: str) -> bool:
    """Whether the current key or a previous one of ``key`` made ``signature``."""
    return keys.check(key, record, signature).ok


@dataclass(frozen=True)
class Promotion:
    """What ``approve`` did."""

    approval: Approval
    previous: str | None
    deploy: str
    gates: list[policy.GateCheck] = field(default_factory=list)
    comparison: Comparison | None = None
    already: bool = False  # approved before: nothing was done again


@dataclass(frozen=True)
class Backoff:
    """When to retry a failed deploy: ``base`` x 2^(attempts-1), at most ``cap``."""

    base: timedelta = timedelta(minutes=1)
    cap: timedelta = timedelta(hours=1)
    # A requested deploy not confirmed (deployed.version) in this time is retried.
    confirm_within: timedelta = timedelta(hours=1)

    def after(self, attempts: int) -> timedelta:
        return min(self.cap, self.base * (2 ** max(0, attempts - 1)))


class Gate:
    def __init__(
        self,
        *,
        registry: Registry,
        team: Team,
        store: GateStore,
        key: bytes,
        rules: policy.Rules,
        dispatcher: Dispatcher,
        backoff: Backoff | None = None,
    ) -> None:
        if len(key) < 16:
            raise ValueError("the gate's key must be at least 16 bytes")
        self.registry, self.team, self.store, self.key = registry, team, store, key
        self.rules, self.dispatcher = rules, dispatcher
        self.backoff = backoff or Backoff()
        self.production = team.models.production
        self._lock = threading.Lock()  # one decision at a time (approve, events, reconcile)

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
                reference = self._reference(candidate, evidence, Path(tmp) / REFERENCE)
                comparison = self.compare(candidate, evidence, previous, reference=reference)
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
                "source.model": name,
                "source.version": version,
                "source.run_id": evidence.run_id,
                "onnx.sha256": evidence.onnx_sha256,
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

    def _reference(self, candidate: Version, evidence: policy.Evidence, dest: Path) -> Path:
        """The candidate's logged test rows (its run's ``reference/``, never a tag's URI):
        at least the base split and its schema, or a refusal."""
        why = ""
        try:
            folder = self.registry.download_artifacts(f"runs:/{evidence.run_id}/{REFERENCE}", dest)
        except RegistryError as exc:
            why = str(exc)
        else:
            missing = [f for f in (f"{BASE}.parquet", "schema.json") if not (folder / f).is_file()]
            if not missing:
                return folder
            why = f"no {', '.join(missing)}"
        raise PromotionRefused(
            f"{candidate.name} v{candidate.version}: run {evidence.run_id} logged no test rows "
            f"to score it on ({REFERENCE}/: {why}); train it with the current pipeline"
        )

    def compare(
        self,
        candidate: Version,
        evidence: policy.Evidence,
        champion: Version | None,
        *,
        reference: Path | None = None,
    ) -> Comparison:
        """The candidate against ``champion`` (the current one), recomputed now: both
        verified model files scored on the rows of the candidate's logged test splits
        (``reference``, else downloaded from its run) and on the rows the gate kept when
        it approved the champion, which the trainer can neither choose nor change (their
        bytes are in the signed approval). Worse on either set is worse. Raises
        PromotionRefused when something it needs is missing or was changed."""
        alpha = self.rules.champion_alpha
        if champion is None:
            return Comparison(None, alpha, notes=["no champion yet: nothing to compare with"])
        label = f"{self.production} v{champion.version}"
        stored = self.store.approval_for(self.production, champion.version)
        if stored is None or not self.approved(champion.version):
            raise PromotionRefused(
                f"the current champion {label} carries no approval signed by this gate, so "
                "it is no baseline: run `modelyard registry reconcile --team team.yaml` first"
            )
        with tempfile.TemporaryDirectory(prefix="modelyard-gate-") as tmp:
            scratch = Path(tmp)
            mine = self._verified_onnx(
                candidate.name, candidate.version, evidence.onnx_sha256 or "", scratch / "c"
            )
            theirs = self._verified_onnx(
                self.production, champion.version, str(stored.record["onnx_sha256"]), scratch / "p"
            )
            if reference is None:
                reference = self._reference(candidate, evidence, scratch / REFERENCE)
            try:
                theirs_rows = compare_models(
                    mine,
                    theirs,
                    reference,
                    champion_label=label,
                    alpha=alpha,
                    min_production_rows=self.rules.min_production_rows,
                    source="the candidate's logged rows",
                )
            except DataError as exc:
                raise PromotionRefused(
                    f"{candidate.name} v{candidate.version}: cannot compare it with {label} on "
                    f"run {evidence.run_id}'s logged test split: {exc}; train it with the "
                    "current pipeline (train logs reference/test.parquet and schema.json)"
                ) from exc
            approval = Approval(**stored.record)
            if not approval.reference:
                return replace(
                    theirs_rows,
                    notes=[
                        *theirs_rows.notes,
                        f"the approval of {label} kept no test rows (made before the gate "
                        "kept them): compared on the candidate's rows only",
                    ],
                )
            kept = self._kept_reference(approval, label, scratch / "kept")
            try:
                gate_rows = compare_models(
                    mine,
                    theirs,
                    kept,
                    champion_label=label,
                    alpha=alpha,
                    min_production_rows=self.rules.min_production_rows,
                    source=f"the rows the gate kept when it approved {label}",
                    prefix="gate:",
                )
            except DataError as exc:
                raise PromotionRefused(
                    f"{candidate.name} v{candidate.version}: cannot score it on the rows the "
                    f"gate kept for {label}: {exc}"
                ) from exc
            return Comparison(
                label,
                alpha,
                [*theirs_rows.splits, *gate_rows.splits],
                [*theirs_rows.notes, *gate_rows.notes],
            )

    def _kept_reference(self, approval: Approval, label: str, dest: Path) -> Path:
        """The rows the gate kept at ``approval``, checked file by file against the signed
        record: a changed, added or missing file is a refusal that names it."""
        try:
            folder = self.registry.download_artifacts(approval.reference_artifacts, dest)
        except RegistryError as exc:
            raise PromotionRefused(
                f"the test rows the gate kept for {label} cannot be read "
                f"({approval.reference_artifacts}): {exc}"
            ) from exc
        found = differences(Manifest.from_record(approval.reference), Manifest.of_folder(folder))
        if found:
            raise PromotionRefused(
                f"the test rows the gate kept for {label} are not the ones it signed: "
                f"{'; '.join(found)}; investigate (only the gate's account may write "
                f"{self.team.approved_experiment})"
            )
        return folder

    def _verified_onnx(self, name: str, version: str, sha256: str, dest: Path) -> Path:
        onnx_file = self.registry.download(name, version, dest) / "model.onnx"
        if not onnx_file.is_file() or files.sha256(onnx_file) != sha256:
            raise PromotionRefused(
                f"{name} v{version}: its model.onnx is not the verified file (sha256 "
                f"{sha256[:12]}): it changed during the approval; investigate, then try again"
            )
        return onnx_file

    # -- the cards ------------------------------------------------------------------------

    def _refresh_cards(
        self,
        champion: str,
        *,
        candidate: Version | None,
        comparison: Comparison | None,
        challenger: bool = True,
    ) -> None:
        """After ``champion`` moved: the production version's description (its comparison
        with the champion it replaced, the gate's audit) and the open challenger's
        comparison, recomputed against the new champion. The champion has moved already:
        a failure here is logged and audited, not raised."""
        try:
            self.describe_production(champion, candidate=candidate, comparison=comparison)
            if challenger:
                self.refresh_challenger()
        except ModelyardError as exc:
            log.error("refreshing the model cards after v%s became champion: %s", champion, exc)
            self.store.audit(
                "card-refresh-failed",
                model=self.production,
                version=champion,
                actor="gate",
                error=str(exc)[:500],
            )

    def describe_production(
        self, version: str, *, candidate: Version | None, comparison: Comparison | None
    ) -> None:
        """The production version's card: the gate's audit summary, its comparison with
        the champion it replaced (when the gate made it), then the candidate's card."""
        versus = None
        if comparison is not None and candidate is not None:
            stored = self.store.approval_for(self.production, version)
            replaced = comparison.champion
            versus = card.comparison_markdown(
                comparison,
                mine=candidate.tags,
                theirs=self._lineage(replaced.rsplit(" v", 1)[1]) if replaced else None,
                at=stored.record["at"] if stored else _now(),
                heading="Against the champion it replaced,",
            )
        # Read under the lock (the gate and a scheduled reconcile both write here): the
        # last writer has read the latest deploy state.
        with self.store.exclusive(f"card {self.production} {version}"):
            text = self.registry.version(self.production, version).description
            if versus is not None:
                text = card.replace_section(text, card.SECTION, versus)
            entries = [e for e in self.store.audit_log(self.production) if e.version == version]
            audit = card.audit_markdown(
                entries, deploy=self.store.deploy(self.production, version), where=AUDIT_WHERE
            )
            self.registry.set_description(
                self.production, version, card.replace_section(text, card.AUDIT, audit)
            )

    def refresh_challenger(self) -> str:
        """Rewrite the open candidate's (``challenger``) comparison against the champion
        of now, recomputed. Returns what it did."""
        with self.store.exclusive(f"card {self.team.models.candidates} {CHALLENGER}"):
            return self._refresh_challenger()

    def _refresh_challenger(self) -> str:
        models = self.team.models
        champ = self.registry.by_alias(self.production, CHAMPION)
        challenger = self.registry.by_alias(models.candidates, CHALLENGER)
        if champ is None or challenger is None:
            return "no champion or no challenger"
        champion = champ.version
        label = f"{models.candidates} v{challenger.version}"
        if champ.tags.get("source.version") == challenger.version:
            note = f"**This version is the champion**: {self.production} v{champion}."
            text = card.replace_section(challenger.description, card.SECTION, note)
            self.registry.set_description(models.candidates, challenger.version, text)
            return f"{label}: champion"
        evidence = self.gather(challenger)
        if not (evidence.run_in_trainer_experiment and evidence.artifact_logged_by_run):
            log.warning("%s was not produced by the trainer: its card is not refreshed", label)
            return f"{label}: not the trainer's"
        if evidence.run_tags.get(policy.RUN_ONNX_SHA256) != evidence.onnx_sha256:
            return f"{label}: not the file its run registered"
        compared = self.compare(challenger, evidence, champ)
        body = card.comparison_markdown(
            compared,
            mine=challenger.tags,
            theirs=self._lineage(champion),
            at=_now(),
            heading="Against the current champion,",
        )
        text = card.replace_section(challenger.description, card.SECTION, body)
        self.registry.set_description(models.candidates, challenger.version, text)
        self.store.audit(
            "card-refreshed",
            model=models.candidates,
            version=challenger.version,
            actor="gate",
            champion=champion,
            comparison=compared.record(),
        )
        return f"{label}: {'worse' if not compared.passed else 'not worse'}"

    def _lineage(self, production_version: str) -> dict[str, str]:
        """The lineage tags a production version was registered with (its candidate's)."""
        tags = self.registry.version(self.production, production_version).tags
        source, number = tags.get("source.model"), tags.get("source.version")
        if not source or not number:
            return tags
        return self.registry.version(source, number).tags

    def gather(self, candidate: Version) -> policy.Evidence:
        """The evidence for ``candidate``, from the run and the artifact (not its tags)."""
        label = f"{candidate.name} v{candidate.version}"
        run = self.registry.run(candidate.run_id) if candidate.run_id else None
        trainer_experiment = self.registry.experiment_id(self.team.experiment)
        origin = (
            self.registry.logged_model_origin(candidate.model_id) if candidate.model_id else None
        )
        return policy.Evidence(
            candidate=label,
            run_id=candidate.run_id,
            run_exists=run is not None,
            run_in_trainer_experiment=run is not None
            and trainer_experiment is not None
            and run.experiment_id == trainer_experiment,
            artifact_logged_by_run=origin is not None
            and origin == (candidate.run_id, trainer_experiment),
            metrics=run.metrics if run else {},
            run_tags=run.tags if run else {},
            onnx_sha256=(
                self.registry.file_sha256(candidate.name, candidate.version) if run else None
            ),
            version_tags=candidate.tags,
        )

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

    def handle(self, event: dict[str, Any]) -> str:
        """A verified webhook delivery: anything touching the production model's aliases
        or version tags is checked against the gate's own records (``reconcile``)."""
        data = event.get("data") or {}
        candidates = self.team.models.candidates
        if data.get("name") == candidates and data.get("alias") == CHAMPION:
            return self.reconcile()  # champion lives on the production model only
        if data.get("name") != self.production:
            return "ignored"
        if event.get("entity") not in {"model_version_alias", "model_version_tag"}:
            return "ignored"
        return self.reconcile()

    def reconcile(self) -> str:
        """Make ``champion`` what the gate approved, record what it finds, and get the
        champion deployed (idempotent). Returns what it did."""
        with self._lock:
            return self._reconcile()

    def _reconcile(self) -> str:
        model = self.production
        identity = self._identity()
        if any(f":{model}" in found for found in identity):
            return ",".join(identity)  # not the production model the gate knows: hands off
        done: list[str] = [*identity, *self._stray_champion()]
        champion = self.registry.by_alias(model, CHAMPION)
        expected = self.store.last_champion(model)
        if champion is None:
            if expected is None:
                return ",".join([*done, "no-champion"])
            self.registry.set_champion(model, expected)
            self.store.audit("alias-restored", model=model, version=expected, actor="gate")
            done.append(f"restored:{expected}")
            current = expected
        elif not self.approved(champion.version):
            if expected is not None and expected != champion.version:
                self.registry.set_champion(model, expected)
            else:
                self.registry.clear_champion(model)
                expected = None
            self.store.audit(
                "alias-reverted",
                model=model,
                version=champion.version,
                actor="gate",
                restored=expected,
                reason="no valid signed approval",
            )
            log.warning("reverted @champion of %s from v%s", model, champion.version)
            done.append(f"reverted:{expected or 'none'}")
            if expected is None:
                return ",".join(done)
            current = expected
        else:
            current = champion.version
            if current != expected:
                self.store.audit(
                    "promote-discovered",
                    model=model,
                    version=current,
                    actor="gate",
                    previous=expected,
                )
                done.append(f"recorded:{current}")
        changed = self._files_changed(current)
        if changed:  # never deploy it; an admin must look (the audit says what changed)
            done.append(f"files-changed:{current}")
            return ",".join(done)
        before = self.store.deploy(model, current)
        done.append(self._ensure_deployed(current))
        after = self.store.deploy(model, current)
        moved = any(d.startswith(("recorded:", "restored:", "reverted:")) for d in done)
        state = (before.state, before.attempts) if before else None
        if moved or state != ((after.state, after.attempts) if after else None):
            # The page shows the champion's deploy as it is now; a new champion gets
            # the open candidate's comparison recomputed against it.
            self._refresh_cards(current, candidate=None, comparison=None, challenger=moved)
        return ",".join(done)

    def _identity(self) -> list[str]:
        """Both registered models are still the ones the gate first saw: by name and
        creation time (a rename keeps the time and frees the name; a model made again
        under the name has another). Recorded the first time; a model gone
        (``model-missing``: deleted or renamed) or replaced (``model-replaced``: someone
        else may own it now) is audited once, logged as an error, and reported."""
        found = []
        for name in (self.production, self.team.models.candidates):
            created, known = self.registry.model_created(name), self.store.model_identity(name)
            if known is None:
                if created is not None:
                    self.store.audit(
                        "model-identity", model=name, version=None, actor="gate", created=created
                    )
                continue
            if created == known:
                continue
            event = "model-missing" if created is None else "model-replaced"
            log.error(
                "%s: the registered model %s is %s (created %s, now %s): an admin must look",
                event,
                name,
                "gone: deleted or renamed" if created is None else "another model",
                known,
                created,
            )
            last = self.store.audit_log(name)[-1:]
            if not last or last[0].event != event or last[0].detail.get("now") != created:
                self.store.audit(
                    event, model=name, version=None, actor="gate", known=known, now=created
                )
            found.append(f"{event}:{name}")
        return found

    def _stray_champion(self) -> list[str]:
        """``champion`` set on the candidates model (which the trainer may update): removed
        and recorded, as any unapproved move. Only the production model's is real."""
        candidates = self.team.models.candidates
        stray = self.registry.by_alias(candidates, CHAMPION)
        if stray is None:
            return []
        self.registry.clear_champion(candidates)
        self.store.audit(
            "alias-reverted",
            model=candidates,
            version=stray.version,
            actor="gate",
            restored=None,
            reason=f"champion lives on {self.production} only (moved by the review gate)",
        )
        log.warning(
            "removed @champion of %s (v%s): not the production model", candidates, stray.version
        )
        return [f"reverted-candidates:{stray.version}"]

    def _files_changed(self, version: str) -> str | None:
        """Why production ``version``'s files are not the approved ones (None: they are).
        Audited once per finding, and logged as an error each time."""
        stored = self.store.approval_for(self.production, version)
        if stored is None:
            return None
        try:
            check_files(
                self.registry,
                Approval(**stored.record),
                self.registry.version(self.production, version),
            )
        except PromotionRefused as exc:
            found = str(exc)
            log.error("%s", found)
            last = [e for e in self.store.audit_log(self.production) if e.version == version]
            if (
                not last
                or last[-1].event != "files-changed"
                or last[-1].detail.get("found") != found
            ):
                self.store.audit(
                    "files-changed",
                    model=self.production,
                    version=version,
                    actor="gate",
                    found=found,
                )
            return found
        return None

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

    def _ensure_deployed(self, version: str) -> str:
        model = self.production
        if self.registry.model_tags(model).get(DEPLOYED) == version:
            self.store.deployed(model, version)
            return "in-sync"
        state = self.store.deploy(model, version)
        if (
            state is not None
            and state.state == REQUESTED
            and not self.store.deploy_stale(model, version, older_than=self.backoff.confirm_within)
        ):
            return "deploy-pending"
        if not self.store.claim_deploy(model, version):
            state = self.store.deploy(model, version)
            due = state.next_attempt_at if state else None
            return f"deploy-retry-at:{due.isoformat() if due else '?'}"
        try:
            how = self.dispatcher.deploy(model, version)
        except ModelyardError as exc:
            attempts = (self.store.deploy(model, version) or state).attempts  # type: ignore[union-attr]
            failed = self.store.deploy_failed(
                model, version, str(exc), retry_in=self.backoff.after(attempts)
            )
            self.store.audit(
                "deploy-failed",
                model=model,
                version=version,
                actor="gate",
                attempts=failed.attempts,
                error=str(exc)[:500],
            )
            log.error("deploy of %s v%s failed (attempt %d): %s", model, version, attempts, exc)
            return "deploy-failed"
        self.store.audit("deploy-triggered", model=model, version=version, actor="gate", via=how)
        return f"deploy:{how}"


# -- what the deploy workflow checks before building ---------------------------------------


def verify_for_deploy(registry: Registry, key: bytes, name: str, version: str) -> Approval:
    """Refuse (PromotionRefused) to deploy ``name`` v``version`` unless it is the champion,
    carries an approval signed with ``key`` (its current key or a previous one, while a
    rotation re-signs) for exactly this version, and its artifact is the signed file
    (sha256 recomputed). Returns the approval."""
    current = registry.by_alias(name, CHAMPION)
    if current is None or current.version != version:
        now = f"v{current.version}" if current else "none"
        raise PromotionRefused(f"{name} v{version} is not the champion (champion: {now})")
    record, signature = current.tags.get(RECORD_TAG), current.tags.get(SIGNATURE_TAG)
    if not record or not signature:
        raise PromotionRefused(
            f"{name} v{version} carries no approval signed by the gate: not deploying it"
        )
    verdict = keys.check(key, record, signature)
    if not verdict.known:
        raise PromotionRefused(f"{name} v{version}: not deploying it: {verdict.reason}")
    if not verdict.ok:
        raise PromotionRefused(
            f"{name} v{version} carries no approval signed by the gate ({verdict.reason}): "
            "not deploying it"
        )
    approval = Approval(**json.loads(record))
    if (approval.production_name, approval.production_version) != (name, version):
        raise PromotionRefused(
            f"{name} v{version}: the signed approval is for {approval.production_name} "
            f"v{approval.production_version}"
        )
    check_files(registry, approval, current)
    return approval


def check_files(registry: Registry, approval: Approval, version: Version) -> None:
    """Refuse (PromotionRefused, naming each file) unless the version's files are the
    ones the signed approval lists, byte for byte, where the gate kept them."""
    label = f"{version.name} v{version.version}"
    if not approval.manifest:  # approved before manifests: only model.onnx was signed
        sha = registry.file_sha256(version.name, version.version) or "none"
        if sha != approval.onnx_sha256:
            raise PromotionRefused(
                f"{label}: model.onnx is {sha[:12]}, the approved file was "
                f"{approval.onnx_sha256[:12]}: not deploying it"
            )
        return
    if version.source != approval.artifacts:
        raise PromotionRefused(
            f"{label}: its files are at {version.source}, not where the gate kept the approved "
            f"copy ({approval.artifacts}): not deploying it"
        )
    with tempfile.TemporaryDirectory(prefix="modelyard-verify-") as tmp:
        folder = registry.download(version.name, version.version, Path(tmp) / "m")
        found = folder_differences(approval, folder)
    if found:
        raise PromotionRefused(
            f"{label}: its files are not the ones approved: {'; '.join(found)}: not deploying it"
        )


def folder_differences(approval: Approval, folder: Path) -> list[str]:
    """What in a downloaded model ``folder`` is not in the approval's signed manifest."""
    return differences(Manifest.from_record(approval.manifest), Manifest.of_folder(folder))


# -- the reviewer's side -------------------------------------------------------------------


def request_approval(
    gate_url: str, credentials: tuple[str, str], name: str, version: str, *, comment: str
) -> dict[str, Any]:
    """Ask the gate to approve (the reviewer's own MLflow login). Returns the gate's
    answer; raises PromotionRefused with its reasons, RegistryError if it failed."""
    body = {"name": name, "version": version, "comment": comment}
    return _ask(gate_url, "approve", credentials, body)


def request_rollback(gate_url: str, credentials: tuple[str, str]) -> dict[str, Any]:
    """Ask the gate to roll ``champion`` back (a reviewer's own login)."""
    return _ask(gate_url, "rollback", credentials, {})


def _ask(
    gate_url: str, action: str, credentials: tuple[str, str], request: dict[str, Any]
) -> dict[str, Any]:
    try:
        status, body = http.request_json(
            "POST",
            f"{gate_url.rstrip('/')}/{action}",
            request,
            auth=credentials,
            accept=frozenset({400, 401, 403, 404}),
            timeout=300,
            attempts=2,
            what="the review gate",
        )
    except ExternalServiceError as exc:
        raise RegistryError(str(exc)) from exc
    if status == 200:
        return dict(body or {})
    message = (body or {}).get("error", f"HTTP {status}")
    raise PromotionRefused(message)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
