"""Shadow evidence (``modelyard serve --shadow``): the challenger beside the champion on
the same live requests, written onto the challenger's version as ``shadow.*`` tags and a
section of its model card."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from core.errors import (
    ModelyardError,
    MonitoringError,
)
from monitoring import logscan
from monitoring.verdict import FAILED, TAGGED, Outcome, ShadowEvidence, Summary, Window
from registry.client import Registry

log = logging.getLogger(__name__)


SHADOW_CARD = "**Shadow evidence**"  # the model card's section, replaced by each run


def shadow_evidence(
    records: Sequence[logscan.Shadow], feedback: dict[str, Any]
) -> tuple[ShadowEvidence, ...]:
    """Agreement, errors and (where ``feedback`` labels a request) each model's accuracy,
    per challenger/champion pair, most shadowed requests first. Answers and labels are
    compared as text (the log may hold 3 or "3")."""
    pairs: dict[tuple[str, str], list[logscan.Shadow]] = {}
    for record in records:
        pairs.setdefault((record.model, record.champion), []).append(record)
    out = []
    for (challenger, champion), group in pairs.items():
        answered = [r for r in group if r.error is None and r.prediction is not None]
        agree = sum(str(r.prediction) == str(r.champion_prediction) for r in answered)
        labelled = [r for r in group if r.id in feedback]
        right = sum(r.error is None and str(r.prediction) == str(feedback[r.id]) for r in labelled)
        champion_right = sum(str(r.champion_prediction) == str(feedback[r.id]) for r in labelled)
        out.append(
            ShadowEvidence(
                challenger=challenger,
                champion=champion,
                rows=len(group),
                errors=len(group) - len(answered),
                agreement=agree / len(answered) if answered else None,
                labelled=len(labelled),
                accuracy=right / len(labelled) if labelled else None,
                champion_accuracy=champion_right / len(labelled) if labelled else None,
            )
        )
    return tuple(sorted(out, key=lambda e: (-e.rows, e.challenger)))


def tag_shadow(registry: Registry, summary: Summary) -> Outcome:
    """Write each challenger's shadow evidence onto its version: the ``shadow.*`` tags and
    a section of its model card (the description the reviewer reads). A registry that
    fails is recorded as ``failed`` (the job exits 2), never ignored."""
    done = []
    for evidence in summary.shadow:
        name, _, version = evidence.challenger.rpartition("/")
        try:
            if not name or not version.isdigit():
                raise MonitoringError(
                    f"the shadow records name the challenger {evidence.challenger!r}, "
                    "expected NAME/VERSION"
                )
            registry.set_version_tags(name, version, evidence.tags(summary.window))
            card = registry.version(name, version).description
            registry.set_description(
                name, version, card_with_shadow(card, evidence, summary.window)
            )
        except ModelyardError as exc:
            log.error("the shadow evidence was not written: %s", exc)
            return Outcome(
                FAILED,
                f"the shadow evidence of {evidence.challenger} was not written onto it: {exc}",
            )
        done.append(f"{name} v{version}")
    return Outcome(TAGGED, f"shadow.* tags and the model card of {', '.join(done)} updated")


def card_with_shadow(card: str, evidence: ShadowEvidence, window: Window) -> str:
    """The model card with its shadow section (appended; replaced if there was one)."""

    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    head = card.split(SHADOW_CARD, 1)[0].rstrip()
    section = [
        f"{SHADOW_CARD} (live traffic, `modelyard serve --shadow`): window {window.since} .. "
        f"{window.until}, beside the champion {evidence.champion}.",
        "",
        "| on live requests | this version | champion |",
        "|---|---|---|",
        f"| accuracy on {evidence.labelled} labelled | {share(evidence.accuracy)} | "
        f"{share(evidence.champion_accuracy)} |",
        f"| agreement with the champion | {share(evidence.agreement)} | |",
        f"| requests / failed | {evidence.rows} / {evidence.errors} | |",
    ]
    return (head + "\n\n" if head else "") + "\n".join(section) + "\n"
