"""The gate's evidence: what it gathers about a candidate (never its editable tags as
truth) and the comparison with the current champion, both verified model files scored on
the candidate's logged test rows and on the rows the champion's approval kept."""

import logging
import tempfile
from dataclasses import replace
from pathlib import Path

from core import files
from core.errors import (
    DataError,
    PromotionRefused,
    RegistryError,
)
from core.tagkeys import LineageTag
from registry import evidence as evidence_mod
from registry import policy
from registry.approval import (
    Approval,
)
from registry.client import Version
from registry.comparison import (
    BASE,
    REFERENCE,
    Comparison,
    compare_models,
    load_split,
    predict,
    scores,
)
from registry.gate_base import GateBase
from registry.manifest import Manifest, differences

log = logging.getLogger(__name__)


CANDIDATE_ROWS = "the candidate's logged rows"


class Comparing(GateBase):
    def _reference(
        self, candidate: Version, evidence: policy.Evidence, dest: Path
    ) -> tuple[Path, str]:
        """The rows to score the candidate on, and whose they are: with a committed source
        (registry.evidence) the test rows its reviewed commit's dvc.lock names, fetched by
        hash; else the candidate's logged test rows (its run's ``reference/``, never a
        tag's URI): at least the base split and its schema, or a refusal."""
        if self.committed is not None:
            label = f"{candidate.name} v{candidate.version}"
            if str(candidate.tags.get(LineageTag.GIT_DIRTY, "")).lower() == "true":
                raise PromotionRefused(
                    f"{label} was trained from uncommitted changes (git.dirty): the gate "
                    "scores only what a reviewed commit's dvc.lock names"
                )
            try:
                rows = evidence_mod.committed_rows(
                    self.committed, str(candidate.tags.get(LineageTag.GIT_COMMIT, "")), dest
                )
            except PromotionRefused as exc:
                raise PromotionRefused(f"{label}: {exc}") from exc
            return rows.folder, rows.label
        why = ""
        try:
            folder = self.registry.download_artifacts(f"runs:/{evidence.run_id}/{REFERENCE}", dest)
        except RegistryError as exc:
            why = str(exc)
        else:
            missing = [f for f in (f"{BASE}.parquet", "schema.json") if not (folder / f).is_file()]
            if not missing:
                return folder, CANDIDATE_ROWS
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
        source: str = CANDIDATE_ROWS,
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
                reference, source = self._reference(candidate, evidence, scratch / REFERENCE)
            try:
                theirs_rows = compare_models(
                    mine,
                    theirs,
                    reference,
                    champion_label=label,
                    alpha=alpha,
                    min_production_rows=self.rules.min_production_rows,
                    source=source,
                )
            except DataError as exc:
                raise PromotionRefused(
                    f"{candidate.name} v{candidate.version}: cannot compare it with {label} on "
                    f"{source}: {exc}; train it with the current pipeline (train logs "
                    "reference/test.parquet and schema.json)"
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

    def check_floor(
        self, candidate: Version, evidence: policy.Evidence, reference: Path, source: str
    ) -> str:
        """The candidate's accuracy recomputed on ``reference`` (rows it did not choose):
        refused below the gate's ``min_accuracy`` whatever its run's metrics say. Returns
        the line the approval prints."""
        label = f"{candidate.name} v{candidate.version}"
        with tempfile.TemporaryDirectory(prefix="modelyard-floor-") as tmp:
            mine = self._verified_onnx(
                candidate.name, candidate.version, evidence.onnx_sha256 or "", Path(tmp) / "c"
            )
            try:
                rows = load_split(reference / f"{BASE}.parquet", reference / "schema.json")
                got = scores(rows.y, predict(mine, rows.x), rows.classes).accuracy
            except DataError as exc:
                raise PromotionRefused(f"{label}: cannot score it on {source}: {exc}") from exc
        claimed = evidence.metrics.get("test.accuracy")
        said = f"; its run says {claimed:.4f}" if claimed is not None else ""
        line = f"accuracy recomputed by the gate on {source}: {got:.4f} on {len(rows.y)} rows{said}"
        if got < self.rules.min_accuracy:
            raise PromotionRefused(
                f"{label}: {line}, below the gate's minimum {self.rules.min_accuracy:g}"
            )
        return line

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
