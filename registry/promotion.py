"""The review gate, applied: approve + promote, and roll back, with an audit trail.

Approvals live on the version as tags (``approval.reviewer``, ``approval.at``,
``approval.comment``), so a reviewer can give one in the MLflow UI or with
``modelyard promote``. Every move of ``champion`` (and every refusal) appends an entry
to the registered model's ``audit.<ns>`` tags. MLflow OSS has no user accounts, so
"who" is what the reviewer states; the gate checks that it is not the commit's author.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from core.errors import PromotionRefused, RegistryError
from core.tagkeys import DeployTag
from registry import policy
from registry.client import CHAMPION, Registry, Version

PROMOTED_AT = "promotion.at"
PROMOTED_BY = "promotion.by"
REFUSED = "promotion.refused"
# On the registered model: what the deploy workflow shipped (the reconciler compares).
DEPLOY_REQUESTED = DeployTag.REQUESTED
DEPLOYED = DeployTag.VERSION
DEPLOYED_IMAGE = DeployTag.IMAGE
DEPLOYED_AT = DeployTag.AT
DEPLOYED_TARGET = DeployTag.TARGET


def promote(
    registry: Registry, name: str, version: str, reviewer: str | None = None, comment: str = ""
) -> tuple[Version, Version | None]:
    """Record the approval (if a reviewer is given), check the gate, move champion.

    Returns (new champion, previous champion). Raises PromotionRefused with the reasons.
    """
    if reviewer:
        registry.set_version_tags(
            name,
            version,
            {
                policy.APPROVAL_REVIEWER: reviewer,
                policy.APPROVAL_AT: _now(),
                policy.APPROVAL_COMMENT: comment,
            },
        )
    candidate = registry.version(name, version)
    decision = policy.decide(candidate.tags)
    if not decision.ok:
        registry.set_version_tags(name, version, {REFUSED: "; ".join(decision.reasons)})
        audit(
            registry,
            name,
            "promotion-refused",
            version=version,
            by=reviewer,
            reasons=decision.reasons,
        )
        raise PromotionRefused(f"{name} v{version}: {decision}")
    previous = registry.by_alias(name, CHAMPION)
    # The promotion is written before the alias moves: the receiver, woken by the move,
    # then finds it recorded instead of recording it a second time.
    registry.set_version_tags(
        name, version, {PROMOTED_AT: _now(), PROMOTED_BY: candidate.tags[policy.APPROVAL_REVIEWER]}
    )
    if REFUSED in candidate.tags:  # a refusal that no longer applies
        registry.delete_version_tag(name, version, REFUSED)
    registry.set_champion(name, version)
    audit(
        registry,
        name,
        "promote",
        version=version,
        previous=previous.version if previous else None,
        by=candidate.tags[policy.APPROVAL_REVIEWER],
    )
    return registry.version(name, version), previous


def rollback(registry: Registry, name: str, actor: str) -> tuple[Version, Version]:
    """Move champion back to the most recently promoted other version that still passes
    the gate. Returns (new champion, the one rolled back from)."""
    current = registry.by_alias(name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back from")
    earlier = [
        v
        for v in registry.versions(name)
        if v.version != current.version and PROMOTED_AT in v.tags and policy.decide(v.tags).ok
    ]
    if not earlier:
        raise RegistryError(f"{name}: no earlier approved champion to roll back to")
    target = max(earlier, key=lambda v: v.tags[PROMOTED_AT])
    registry.set_champion(name, target.version)
    registry.set_version_tags(
        name, target.version, {PROMOTED_AT: _now(), PROMOTED_BY: f"rollback by {actor}"}
    )
    audit(registry, name, "rollback", version=target.version, previous=current.version, by=actor)
    return registry.version(name, target.version), current


def record_deployment(
    registry: Registry, name: str, version: str, image: str, target: str, by: str
) -> Version:
    """The deploy workflow's last step: write down what now runs where, with an audit
    entry. Refuses a version that does not exist; a version that is no longer champion
    is recorded as it is (it is what runs) and the reconciler will deploy the champion."""
    deployed = registry.version(name, version)
    registry.set_model_tag(name, DEPLOYED, version)
    registry.set_model_tag(name, DEPLOYED_IMAGE, image)
    registry.set_model_tag(name, DEPLOYED_AT, _now())
    registry.set_model_tag(name, DEPLOYED_TARGET, target)
    registry.set_version_tags(
        name, version, {DeployTag.IMAGE_REQUESTED: image, DeployTag.IMAGE_AT: _now()}
    )
    audit(registry, name, "deployed", version=version, image=image, target=target, by=by)
    return deployed


def audit(registry: Registry, name: str, event: str, **fields: Any) -> None:
    entry = json.dumps({"event": event, "at": _now(), **fields}, default=str)
    registry.set_model_tag(name, f"audit.{time.time_ns()}", entry)  # ns: ordered, no collisions


def audit_log(registry: Registry, name: str) -> list[dict[str, Any]]:
    tags = registry.model_tags(name)
    keys = sorted((k for k in tags if k.startswith("audit.")), key=lambda k: int(k.split(".")[1]))
    return [json.loads(tags[k]) for k in keys]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
