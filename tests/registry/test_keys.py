"""Rotating the review gate's signing key: key ids on signatures, previous keys that still
verify, `modelyard registry resign`, and what an unknown or forged key gets.

The pure parts on plain values; one rotation end to end on the real team server
(PostgreSQL + `mlflow server --app-name basic-auth`) with the gate in-process, the gate's
own database, `registry verify`'s check and the `registry resign` command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core import settings
from core.errors import ConfigError, PromotionRefused
from registry import keys
from registry.approval import sign, signed, verify_for_deploy
from registry.keys import RECORD_TAG, SIGNATURE_TAG
from tests.conftest import BIN, REPO, record_exit
from tests.registry.conftest import (
    EXPERIMENT,
    RULES,
    TeamServer,
    as_user,
    log_candidate,
    password,
    team_yaml,
)

A = b"gate-key-A-0123456789abcdef"
B = b"gate-key-B-0123456789abcdef"
C = b"gate-key-C-0123456789abcdef"
RECORD = json.dumps({"production_version": "1", "reviewer": "rui"}, sort_keys=True)


# -- the pure parts -------------------------------------------------------------------------


def test_a_signature_names_its_key_and_a_previous_key_still_verifies() -> None:
    old = sign(A, RECORD)
    assert old.startswith(keys.key_id(A) + ":")
    assert keys.key_id(A) != keys.key_id(B) and A.hex() not in old

    rotated = keys.Keyring(B, [A])
    assert signed(rotated, RECORD, old)
    verdict = keys.check(rotated, RECORD, old)
    assert verdict.ok and verdict.key_id == keys.key_id(A) and not verdict.current
    assert sign(rotated, RECORD).startswith(keys.key_id(B) + ":")  # new ones: the new key
    assert keys.check(rotated, RECORD, sign(rotated, RECORD)).current

    assert not signed(B, RECORD, old)  # the old key dropped: refused
    assert not signed(rotated, RECORD.replace("rui", "dana"), old)


def test_an_unknown_key_is_refused_with_what_to_do() -> None:
    verdict = keys.check(keys.Keyring(B, [A]), RECORD, sign(C, RECORD))
    assert not verdict.ok and not verdict.known and verdict.key_id == keys.key_id(C)
    assert "MODELYARD_GATE_PREVIOUS_KEYS" in verdict.reason
    assert "modelyard registry resign" in verdict.reason


def test_a_forged_signature_under_a_known_key_id_is_refused() -> None:
    forged = f"{keys.key_id(B)}:{sign(C, RECORD).split(':', 1)[1]}"
    verdict = keys.check(keys.Keyring(B, [A]), RECORD, forged)
    assert not verdict.ok and verdict.known and "does not match" in verdict.reason
    assert not signed(B, RECORD, "not-a-signature")


def test_a_signature_from_before_key_ids_verifies_with_any_known_key() -> None:
    legacy = sign(A, RECORD).split(":", 1)[1]  # what the gate wrote before key ids
    assert keys.check(keys.Keyring(B, [A]), RECORD, legacy).ok
    assert not keys.check(keys.Keyring(B), RECORD, legacy).ok


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_GATE_KEY", B.decode())
    monkeypatch.setenv("MODELYARD_GATE_PREVIOUS_KEYS", f" {A.decode()} ,{C.decode()},")
    ring = keys.from_settings(settings.current())
    assert ring == B and set(ring.previous) == {keys.key_id(A), keys.key_id(C)}
    assert B.decode() not in repr(ring) and A.decode() not in repr(ring)
    monkeypatch.setenv("MODELYARD_GATE_PREVIOUS_KEYS", "short")
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        keys.from_settings(settings.current())
    monkeypatch.delenv("MODELYARD_GATE_KEY")
    assert keys.from_settings(settings.current()) is None


# -- a rotation on the real team server -------------------------------------------------------

# The rotation test's own models and experiment, so no other test's champion is in its way.
CANDIDATES = "keys-candidates"
PRODUCTION = "keys-production"


@pytest.fixture(scope="module")
def own_team(team_server: TeamServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "team.yaml"
    team = team_yaml()
    team["experiment"] = f"{EXPERIMENT}-keys"
    team["models"] = {"candidates": CANDIDATES, "production": PRODUCTION}
    path.write_text(yaml.safe_dump(team))
    applied = team_server.apply(path)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    return path


def resign(server: TeamServer, team_file: Path, **env: str) -> subprocess.CompletedProcess[str]:
    params = team_file.parent / "params.yaml"
    if not params.exists():
        shutil.copy(REPO / "params.yaml", params)
    args = ["registry", "resign", "--team", str(team_file), "--params", str(params)]
    done = subprocess.run(
        [str(BIN / "modelyard"), *args],
        env=server.env("gate", COLUMNS="200", **env),
        capture_output=True,
        text=True,
        cwd=team_file.parent,
    )
    record_exit(args, done.returncode)
    return done


@pytest.mark.slow
def test_a_key_rotation_keeps_approvals_valid_and_resign_moves_them_to_the_new_key(
    team_server: TeamServer, own_team: Path, tmp_path: Path
) -> None:
    from registry import team
    from registry.client import Registry
    from registry.gate import Gate
    from registry.store import GateStore

    class Recorder:
        def deploy(self, name: str, version: str) -> str:
            return "recorded"

    store = GateStore(team_server.gate_database_url)
    registry = Registry(team_server.uri)
    gate_env = {"MODELYARD_GATE_DATABASE_URL": team_server.gate_database_url}

    def gate(key: bytes) -> Gate:
        return Gate(
            registry=registry,
            team=team.load(own_team),
            store=store,
            key=key,
            rules=RULES,
            dispatcher=Recorder(),
        )

    # An approval under key A (the gate as it ran before the rotation).
    run_id, uri, sha = log_candidate(
        team_server, tmp_path, seed=41, experiment=f"{EXPERIMENT}-keys"
    )
    with as_user(team_server, "ci"):
        lineage = {"onnx.sha256": sha, "gates.passed": "True"}
        candidate = registry.register(CANDIDATES, uri, run_id, lineage).version
    with as_user(team_server, "gate"):
        done = gate(keys.Keyring(A)).approve(("rui", password("rui")), CANDIDATES, candidate, "ok")
        version = done.approval.production_version
        assert verify_for_deploy(registry, keys.Keyring(A), PRODUCTION, version)

        # Rotated to B with A as previous: deploy's check and reconcile still accept it.
        rotated = keys.Keyring(B, [A])
        assert verify_for_deploy(registry, rotated, PRODUCTION, version).approval_id
        assert "reverted" not in gate(rotated).reconcile()
        assert registry.by_alias(PRODUCTION, "champion").version == version  # type: ignore[union-attr]

        # B alone does not know A: refused, saying what to do.
        with pytest.raises(PromotionRefused, match="MODELYARD_GATE_PREVIOUS_KEYS") as refused:
            verify_for_deploy(registry, keys.Keyring(B), PRODUCTION, version)
        assert keys.key_id(A) in str(refused.value)

    # `registry resign` as the gate, with B and A as previous: re-signed, audited, once.
    first = resign(
        team_server,
        own_team,
        MODELYARD_GATE_KEY=B.decode(),
        MODELYARD_GATE_PREVIOUS_KEYS=A.decode(),
        **gate_env,
    )
    said = " ".join(first.stdout.split())
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"re-signed {PRODUCTION} v{version}: key {keys.key_id(A)} -> {keys.key_id(B)}" in said
    resigned = [e for e in store.audit_log(PRODUCTION) if e.event == "approval-resigned"]
    assert [(e.version, e.detail["old_key"], e.detail["new_key"]) for e in resigned] == [
        (version, keys.key_id(A), keys.key_id(B))
    ]
    again = resign(team_server, own_team, MODELYARD_GATE_KEY=B.decode(), **gate_env)
    assert again.returncode == 0 and f"already signed with key {keys.key_id(B)}: v{version}" in (
        " ".join(again.stdout.split())
    ), again.stdout + again.stderr

    with as_user(team_server, "gate"):
        # Only B now: the re-signed approval verifies (tags and the gate's table).
        only_b = keys.Keyring(B)
        assert verify_for_deploy(registry, only_b, PRODUCTION, version)
        assert gate(only_b).approved(version)
        assert not gate(keys.Keyring(A)).approved(version)
        tags = registry.version(PRODUCTION, version).tags
        assert tags[SIGNATURE_TAG].startswith(keys.key_id(B) + ":")
        record = tags[RECORD_TAG]

    # Forged on the version by someone who may edit production (an admin): a signature
    # by a key the gate never had, and one that borrows B's key id, are both refused.
    for forged, says in (
        (sign(C, record), "which this gate does not have"),
        (f"{keys.key_id(B)}:{sign(C, record).split(':', 1)[1]}", "no approval signed by"),
    ):
        with as_user(team_server, None):
            registry.set_version_tags(PRODUCTION, version, {SIGNATURE_TAG: forged})
        with as_user(team_server, "gate"), pytest.raises(PromotionRefused, match=says):
            verify_for_deploy(registry, only_b, PRODUCTION, version)

    # A gate whose key signed none of the stored approvals re-signs nothing: exit 1.
    unknown = resign(team_server, own_team, MODELYARD_GATE_KEY=C.decode(), **gate_env)
    assert unknown.returncode == 1, unknown.stdout + unknown.stderr
    assert f"{PRODUCTION} v{version} not re-signed" in " ".join(unknown.stderr.split())
    assert "MODELYARD_GATE_PREVIOUS_KEYS" in " ".join(unknown.stderr.split())
    store.close()


def test_resign_without_the_gate_key_is_2(e2e_tier: None, tmp_path: Path) -> None:
    team_file = tmp_path / "team.yaml"
    team_file.write_text(yaml.safe_dump(team_yaml()))
    args = ["registry", "resign", "--team", str(team_file), "--params", str(REPO / "params.yaml")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELYARD_GATE")}
    env.update(
        MLFLOW_TRACKING_URI="http://127.0.0.1:9",
        MLFLOW_TRACKING_USERNAME="gate",
        MLFLOW_TRACKING_PASSWORD=password("gate"),
        MODELYARD_GATE_DATABASE_URL="sqlite:///unused.db",
        COLUMNS="200",
    )
    done = subprocess.run(
        [str(BIN / "modelyard"), *args], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    record_exit(args, done.returncode)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the gate needs: MODELYARD_GATE_KEY" in " ".join(done.stderr.split())
    assert not (tmp_path / "unused.db").exists()
