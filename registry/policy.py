"""Promotion rules, pure: a version's tags and an approval in, a decision out.

A version may become ``champion`` only if

- modelyard registered it (it carries ``onnx.sha256``) and every gate passed;
- its data validation passed;
- a reviewer approved it (``approval.reviewer`` on the version), and
- the reviewer is not the author of the commit that trained it (four eyes).

No I/O here: ``registry.promotion`` reads the registry, calls ``decide`` and applies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

APPROVAL_REVIEWER = "approval.reviewer"
APPROVAL_AT = "approval.at"
APPROVAL_COMMENT = "approval.comment"


@dataclass(frozen=True)
class Decision:
    ok: bool
    reasons: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "approved" if self.ok else "refused: " + "; ".join(self.reasons)


def decide(tags: Mapping[str, str]) -> Decision:
    """Whether the version with these tags may become champion, and why not."""
    reasons: list[str] = []
    if "onnx.sha256" not in tags:
        reasons.append("not registered by the modelyard pipeline (no onnx.sha256 tag)")
    if tags.get("gates.passed") != "True":
        failed = sorted(
            k.removeprefix("gate.")
            for k, v in tags.items()
            if k.startswith("gate.") and v == "fail"
        )
        reasons.append("gates did not pass" + (f": {', '.join(failed)}" if failed else ""))
    if tags.get("validation.success") != "True":
        reasons.append("data validation did not pass")
    reviewer = tags.get(APPROVAL_REVIEWER, "").strip()
    if not reviewer:
        reasons.append(f"no approval: a reviewer must set the version tag {APPROVAL_REVIEWER}")
    else:
        author = tags.get("git.author", "").strip()
        if not author or author == "unknown":
            reasons.append(
                "the training commit's author is unknown, so four eyes cannot be checked"
            )
        elif _same_person(reviewer, author):
            reasons.append(
                f"four eyes: reviewer {reviewer} is the author of commit {tags.get('git.commit', '?')[:12]}"
            )
    return Decision(not reasons, reasons)


def _same_person(reviewer: str, author: str) -> bool:
    """Emails compare case-insensitively; a bare name matches the email's local part."""
    r, a = reviewer.lower(), author.lower()
    return r == a or ("@" not in r and r == a.split("@")[0])
