"""The model cards the gate writes: on the production version (the comparison with the
champion it replaced, a summary of its audit) and on the open candidate (the comparison
recomputed against the new champion)."""

import logging

from core.errors import (
    ModelyardError,
)
from core.tagkeys import CopyTag
from registry import card, policy
from registry.client import CHALLENGER, CHAMPION, Version
from registry.comparison import Comparison
from registry.gate_base import AUDIT_WHERE, now
from registry.gate_compare import Comparing

log = logging.getLogger(__name__)


class Cards(Comparing):
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
                at=stored.record["at"] if stored else now(),
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
        if champ.tags.get(CopyTag.SOURCE_VERSION) == challenger.version:
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
            at=now(),
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
        source, number = tags.get(CopyTag.SOURCE_MODEL), tags.get(CopyTag.SOURCE_VERSION)
        if not source or not number:
            return tags
        return self.registry.version(source, number).tags
