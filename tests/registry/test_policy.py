"""The review gate as a pure function: tags in, decision out."""

from __future__ import annotations

import pytest

from registry.policy import decide

GOOD = {
    "onnx.sha256": "ab" * 32, "gates.passed": "True", "validation.success": "True",
    "git.author": "dana@example.com", "git.commit": "0123456789abcdef",
    "approval.reviewer": "rui@example.com",
}  # fmt: skip


def test_approved_version_passes() -> None:
    assert decide(GOOD).ok


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            {"gates.passed": "False", "gate.min_accuracy": "fail"},
            "gates did not pass: min_accuracy",
        ),
        ({"validation.success": "False"}, "data validation did not pass"),
        ({"approval.reviewer": ""}, "no approval"),
        (
            {"approval.reviewer": "DANA@example.com"},
            "four eyes: reviewer DANA@example.com is the author",
        ),
        ({"approval.reviewer": "dana"}, "four eyes"),
        # the author's git name (`git log --format=%an`), not only the email's local part
        ({"git.author_name": "Dana Scully", "approval.reviewer": "dana scully"}, "four eyes"),
        ({"git.author": "unknown"}, "author is unknown"),
        ({"onnx.sha256": None}, "not registered by the modelyard pipeline"),
    ],
)
def test_each_rule_refuses_with_its_reason(change: dict, reason: str) -> None:
    tags = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    decision = decide(tags)
    assert not decision.ok
    assert any(reason in r for r in decision.reasons), decision.reasons


def test_all_reasons_are_reported_at_once() -> None:
    decision = decide({"git.author": "dana@example.com"})
    assert len(decision.reasons) == 4  # not registered, gates, validation, no approval
