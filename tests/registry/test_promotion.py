"""`modelyard promote` and `modelyard rollback` on a real (SQLite) MLflow registry."""

from __future__ import annotations

from typing import Any

import pytest

from registry.client import Registry
from registry.promotion import audit_log
from tests.conftest import Project

NAME = "digits-classifier"


def register(registry: Registry, tmp: Any, **over: str) -> str:
    tags = {"onnx.sha256": "ab" * 32, "gates.passed": "True", "validation.success": "True",
            "git.author": "dana@example.com", "git.commit": "0123456789ab", **over}  # fmt: skip
    return registry.register(NAME, (tmp / "m").as_uri(), run_id="", tags=tags).version


@pytest.fixture
def setup(project: Project, tmp_path: Any) -> tuple[Project, Registry]:
    (project.root / ".modelyard").mkdir()
    return project, project.registry()


def test_promote_refuses_without_approval_then_promotes(
    setup: tuple[Project, Registry], tmp_path: Any
) -> None:
    project, registry = setup
    v1 = register(registry, tmp_path)

    refused = project.cli("promote", NAME, v1)
    assert refused.exit_code == 1
    assert "no approval" in " ".join(refused.output.split())
    assert registry.by_alias(NAME, "champion") is None

    self_review = project.cli("promote", NAME, v1, "--reviewer", "dana@example.com")
    assert self_review.exit_code == 1 and "four eyes" in self_review.output
    assert registry.by_alias(NAME, "champion") is None

    ok = project.cli(
        "promote", NAME, v1, "--reviewer", "rui@example.com", "--comment", "looks good"
    )
    assert ok.exit_code == 0, ok.output
    champion = registry.by_alias(NAME, "champion")
    assert champion is not None and champion.version == v1
    assert champion.tags["approval.reviewer"] == "rui@example.com"
    assert champion.tags["approval.comment"] == "looks good"
    events = [e["event"] for e in audit_log(registry, NAME)]
    assert events == ["promotion-refused", "promotion-refused", "promote"]


def test_failed_gates_are_never_promoted(setup: tuple[Project, Registry], tmp_path: Any) -> None:
    project, registry = setup
    bad = register(registry, tmp_path, **{"gates.passed": "False", "gate.max_p99_ms": "fail"})
    result = project.cli("promote", NAME, bad, "--reviewer", "rui@example.com")
    assert result.exit_code == 1 and "gates did not pass: max_p99_ms" in " ".join(
        result.output.split()
    )
    assert registry.by_alias(NAME, "champion") is None
    assert "gates did not pass" in registry.version(NAME, bad).tags["promotion.refused"]


def test_rollback_restores_the_previous_champion(
    setup: tuple[Project, Registry], tmp_path: Any
) -> None:
    project, registry = setup
    v1, v2 = register(registry, tmp_path), register(registry, tmp_path)
    assert project.cli("rollback", NAME).exit_code == 1  # nothing to roll back yet
    for v in (v1, v2):
        assert project.cli("promote", NAME, v, "--reviewer", "rui@example.com").exit_code == 0
    assert registry.by_alias(NAME, "champion").version == v2

    result = project.cli("rollback", NAME, "--actor", "oncall")
    assert result.exit_code == 0, result.output
    assert f"v{v2} -> v{v1}" in result.output
    assert registry.by_alias(NAME, "champion").version == v1
    last = audit_log(registry, NAME)[-1]
    assert last["event"] == "rollback" and last["previous"] == v2 and last["by"] == "oncall"


def test_a_refusal_that_no_longer_applies_is_cleared(
    setup: tuple[Project, Registry], tmp_path: Any
) -> None:
    project, registry = setup
    v1 = register(registry, tmp_path)
    assert project.cli("promote", NAME, v1).exit_code == 1
    assert "no approval" in registry.version(NAME, v1).tags["promotion.refused"]
    assert project.cli("promote", NAME, v1, "--reviewer", "rui@example.com").exit_code == 0
    assert "promotion.refused" not in registry.version(NAME, v1).tags


def test_a_promotion_found_by_reconcile_is_recorded_and_reverts_go_back_to_it(
    setup: tuple[Project, Registry], tmp_path: Any
) -> None:
    """v2 approved and moved to champion with no delivery (the receiver was down): the
    reconciler records it, so refusing v3 later restores v2, not v1."""
    from registry.webhooks import handle, reconcile

    project, registry = setup
    v1, v2, v3 = (register(registry, tmp_path) for _ in range(3))
    assert project.cli("promote", NAME, v1, "--reviewer", "rui@example.com").exit_code == 0
    registry.set_version_tags(NAME, v2, {"approval.reviewer": "rui@example.com"})
    registry.client.set_registered_model_alias(NAME, "champion", v2)  # no delivery

    sent: list[tuple[str, str]] = []

    class Recorder:
        def deploy(self, name: str, version: str) -> str:
            sent.append((name, version))
            return "recorded"

    assert reconcile(registry, NAME, Recorder()) == "deploy:recorded"
    assert sent == [(NAME, v2)]
    assert [(e["event"], e["version"]) for e in audit_log(registry, NAME)][-2:] == [
        ("promote", v2),
        ("deploy-triggered", v2),
    ]
    registry.client.set_registered_model_alias(NAME, "champion", v3)  # unapproved
    data = {"name": NAME, "alias": "champion", "version": v3}
    event = {"entity": "model_version_alias", "action": "created", "data": data}
    assert handle(event, registry, Recorder()) == f"reverted:{v2}"
    champion = registry.by_alias(NAME, "champion")
    assert champion is not None and champion.version == v2
