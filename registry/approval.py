"""What the gate signs and what everyone checks against it: the approval record, its
signature (``registry.keys``: Ed25519 with key ids and rotation), the tags it is stored in
on the production version, and the deploy side's check (``verify_for_deploy``: champion,
signed for exactly this version, every file the signed manifest lists, byte for byte).
Imports nothing of the gate itself: ``registry.keys`` and the deploy side use it alone."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import PromotionRefused
from core.tagkeys import ApprovalTag
from registry import keys
from registry.client import CHAMPION, Registry, Version
from registry.keys import RECORD_TAG, SIGNATURE_TAG
from registry.manifest import Manifest, differences

MANIFEST_TAG = ApprovalTag.MANIFEST_SHA256  # the approved folder's manifest digest (also signed)


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


def sign(key: keys.Key, record: str) -> str:
    """``ed25519:<key id>:<signature>`` with the gate's private key (a keys.Signer)."""
    return keys.sign(key, record)


def signed(key: keys.Key, record: str, signature: str) -> bool:
    """Whether the current key or a previous one of ``key`` made ``signature``."""
    return keys.check(key, record, signature).ok


def verify_for_deploy(registry: Registry, key: keys.Key, name: str, version: str) -> Approval:
    """Refuse (PromotionRefused) to deploy ``name`` v``version`` unless it is the champion,
    carries an approval signed by the gate (``key``: its current public key or a previous
    one, while a rotation re-signs) for exactly this version, and its artifact is the signed file
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
