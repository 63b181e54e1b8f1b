"""The gate's keys in the workflows: nothing in CI can sign an approval, and a key
rotation reaches every workflow that checks signatures.

Only the gate holds the private key (MODELYARD_GATE_KEY); the workflows verify with the
public key. During a rotation (docs/team.md, "Rotating the gate's key") approvals signed with the
old key stay valid only where MODELYARD_GATE_PREVIOUS_KEYS is set: a job with the current
public key but not the previous ones would refuse every approval not yet re-signed
(`registry verify` stops the deploy, the scheduled reconcile reverts the champion).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.workflows.test_workflows import WORKFLOWS, load


def _envs(doc: dict[Any, Any]) -> list[tuple[str, dict[str, str]]]:
    """Each job's environment (workflow level merged in), and each step's on top of it."""
    top = doc.get("env") or {}
    found = []
    for name, job in doc["jobs"].items():
        job_env = {**top, **(job.get("env") or {})}
        found.append((name, job_env))
        for step in job.get("steps", []):
            found.append(
                (
                    f"{name}: {step.get('name', step.get('run', '?'))}",
                    {**job_env, **(step.get("env") or {})},
                )
            )
    return found


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_workflow_holds_the_private_key(path: Any) -> None:
    text = path.read_text()
    assert "MODELYARD_GATE_KEY" not in text, f"{path.name} can sign approvals"
    assert "secrets.MODELYARD_GATE_PUBLIC_KEY" not in text  # public: a variable


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_where_the_public_key_goes_the_previous_keys_go_too(path: Any) -> None:
    missing = [
        where
        for where, env in _envs(load(path))
        if "MODELYARD_GATE_PUBLIC_KEY" in env and "MODELYARD_GATE_PREVIOUS_KEYS" not in env
    ]
    assert not missing, f"{path.name}: MODELYARD_GATE_PREVIOUS_KEYS missing in {missing}"


def test_the_public_key_is_used_by_deploy_and_reconcile() -> None:
    """The checks above are not vacuous: both workflows that verify signatures carry it."""
    using = {
        p.name
        for p in WORKFLOWS
        if any("MODELYARD_GATE_PUBLIC_KEY" in env for _, env in _envs(load(p)))
    }
    assert {"deploy.yml", "reconcile.yml"} <= using
