"""Rotating the review gate's signing key: key ids on signatures, previous keys that still
verify, `modelyard registry resign`, and what an unknown or forged key gets.

The pure parts on plain values; one rotation end to end on the real team server
(PostgreSQL + `mlflow server --app-name basic-auth`) with the gate in-process, the gate's
own database, `registry verify`'s check and the `registry resign` command."""

from __future__ import annotations

import base64
import hmac
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
    apply_own_team,
    as_user,
    log_candidate,
    password,
    team_yaml,
)

# Private keys (Ed25519 seeds, as `registry keygen` prints them) and the gates they make.
A_HEX, B_HEX, C_HEX = "a1" * 32, "b2" * 32, "c3" * 32
A, B, C = (keys.Signer.of_hex(h) for h in (A_HEX, B_HEX, C_HEX))
RECORD = json.dumps({"production_version": "1", "reviewer": "rui"}, sort_keys=True)
OLD_SECRET = "the-hmac-gate-key-0123456789"  # what MODELYARD_GATE_KEY was before Ed25519


def rotated(new: str, *old: keys.Signer, legacy: tuple[str, ...] = ()) -> keys.Signer:
    """The gate after a rotation: the new private key, the old public keys."""
    return keys.Signer.of_hex(new, [o.verifier.public_hex for o in old], legacy)


def hmac_signature(secret: str, record: str, *, with_id: bool = True) -> str:
    """An approval's signature as the HMAC gate wrote it (written out here, not imported,
    so this checks the old format itself)."""
    mac = base64.b64encode(hmac.new(secret.encode(), record.encode(), "sha256").digest())
    kid = hmac.new(secret.encode(), b"modelyard gate key id", "sha256").hexdigest()[:16]
    return f"{kid}:{mac.decode()}" if with_id else mac.decode()


# -- the pure parts -------------------------------------------------------------------------


def test_a_signature_names_its_key_and_a_previous_public_key_still_verifies() -> None:
    old = sign(A, RECORD)
    assert old.startswith(f"ed25519:{A.key_id}:") and A_HEX not in old
    assert A.key_id != B.key_id

    after = rotated(B_HEX, A)
    assert signed(after, RECORD, old) and signed(after.verifier, RECORD, old)
    verdict = keys.check(after.verifier, RECORD, old)
    assert verdict.ok and verdict.key_id == A.key_id and not verdict.current
    assert sign(after, RECORD).startswith(f"ed25519:{B.key_id}:")  # new ones: the new key
    assert keys.check(after.verifier, RECORD, sign(after, RECORD)).current

    assert not signed(B.verifier, RECORD, old)  # the old key dropped: refused
    assert not signed(after, RECORD.replace("rui", "dana"), old)


def test_what_verifies_cannot_sign() -> None:
    """The deploy side holds the public key only: it has nothing to sign with."""
    public = keys.Verifier.of(bytes.fromhex(A.verifier.public_hex))
    assert keys.check(public, RECORD, sign(A, RECORD)).ok
    with pytest.raises(ConfigError, match="only the gate's public key"):
        sign(public, RECORD)
    assert A_HEX not in repr(A) and not hasattr(public, "_private")


def test_an_unknown_key_is_refused_with_what_to_do() -> None:
    verdict = keys.check(rotated(B_HEX, A).verifier, RECORD, sign(C, RECORD))
    assert not verdict.ok and not verdict.known and verdict.key_id == C.key_id
    assert "MODELYARD_GATE_PREVIOUS_KEYS" in verdict.reason
    assert "modelyard registry resign" in verdict.reason


def test_a_forged_signature_under_a_known_key_id_is_refused() -> None:
    forged = f"ed25519:{B.key_id}:{sign(C, RECORD).rsplit(':', 1)[1]}"
    verdict = keys.check(rotated(B_HEX, A).verifier, RECORD, forged)
    assert not verdict.ok and verdict.known and "does not match" in verdict.reason
    assert not signed(B, RECORD, f"ed25519:{B.key_id}:not base64!")
    assert not signed(B, RECORD, "not-a-signature")


def test_an_hmac_approval_from_before_verifies_at_the_gate_only() -> None:
    """The gate keeps (and can re-sign) what the HMAC gate signed; the deploy side,
    which holds no secret any more, refuses it and says what to do."""
    gate = keys.Signer.of_hex(B_HEX, legacy=[OLD_SECRET])
    for old in (
        hmac_signature(OLD_SECRET, RECORD),
        hmac_signature(OLD_SECRET, RECORD, with_id=False),
    ):
        verdict = keys.check(gate, RECORD, old)
        assert verdict.ok and not verdict.current, old
        refused = keys.check(gate.verifier, RECORD, old)
        assert not refused.ok and "registry resign" in refused.reason
    assert not keys.check(gate, RECORD, hmac_signature("another-old-secret-0123", RECORD)).ok
    assert not keys.check(
        gate, RECORD.replace("rui", "dana"), hmac_signature(OLD_SECRET, RECORD)
    ).ok


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_GATE_KEY", B_HEX)
    monkeypatch.setenv(
        "MODELYARD_GATE_PREVIOUS_KEYS", f" {A.verifier.public_hex} ,{C.verifier.public_hex},"
    )
    gate = keys.from_settings(settings.current())
    assert gate is not None and gate.key_id == B.key_id
    assert set(gate.verifier.previous) == {A.key_id, C.key_id}
    assert B_HEX not in repr(gate) and B_HEX not in repr(gate.verifier)
    # The gate's own key text verifies what the HMAC gate signed with it (an upgrade).
    assert keys.check(gate, RECORD, hmac_signature(B_HEX, RECORD)).ok

    monkeypatch.setenv("MODELYARD_GATE_PUBLIC_KEY", B.verifier.public_hex)
    assert keys.verifier_from_settings(settings.current()) == gate.verifier
    monkeypatch.setenv("MODELYARD_GATE_PUBLIC_KEY", A.verifier.public_hex)
    with pytest.raises(ConfigError, match="not the public key of MODELYARD_GATE_KEY"):
        keys.verifier_from_settings(settings.current())
    monkeypatch.delenv("MODELYARD_GATE_KEY")  # a verifier: the public key alone
    public = keys.verifier_from_settings(settings.current())
    assert public is not None and public.key_id == A.key_id
    assert keys.from_settings(settings.current()) is None

    monkeypatch.setenv("MODELYARD_GATE_PREVIOUS_KEYS", "short")
    with pytest.raises(ConfigError, match="64 hex digits"):
        keys.verifier_from_settings(settings.current())
    monkeypatch.setenv("MODELYARD_GATE_KEY", "gate-signing-key-for-tests-0123456789")
    with pytest.raises(ConfigError, match="MODELYARD_GATE_KEY is not an Ed25519 key"):
        keys.from_settings(settings.current())
    monkeypatch.delenv("MODELYARD_GATE_PUBLIC_KEY")
    monkeypatch.delenv("MODELYARD_GATE_PREVIOUS_KEYS")
    monkeypatch.delenv("MODELYARD_GATE_KEY")
    assert keys.verifier_from_settings(settings.current()) is None


def test_keygen_prints_a_pair_that_signs_and_verifies() -> None:
    """`registry keygen` as a user runs it (in process): the private line signs, the public
    line verifies; --from-env prints the public key of the key in the environment; a key
    that is not Ed25519 is a 2 saying how to make one."""
    from typer.testing import CliRunner

    from modelyard.app import app

    def keygen(*args: str, **env: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            app, ["registry", "keygen", *args], env={"COLUMNS": "200", **env}
        )
        record_exit(["registry", "keygen", *args], result.exit_code)
        return result.exit_code, result.output

    code, out = keygen()
    assert code == 0, out
    lines = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    gate = keys.Signer.of_hex(lines["MODELYARD_GATE_KEY"])
    public = keys.Verifier.of(bytes.fromhex(lines["MODELYARD_GATE_PUBLIC_KEY"]))
    assert keys.check(public, RECORD, sign(gate, RECORD)).ok
    assert f"key id {public.key_id}" in out
    code, again = keygen()
    assert again != out  # a new pair each time

    code, out = keygen("--from-env", MODELYARD_GATE_KEY=lines["MODELYARD_GATE_KEY"])
    assert code == 0 and f"MODELYARD_GATE_PUBLIC_KEY={public.public_hex}" in out, out
    assert lines["MODELYARD_GATE_KEY"] not in out
    code, out = keygen("--from-env", MODELYARD_GATE_KEY="gate-signing-key-for-tests-0123")
    assert code == 2 and "not an Ed25519 key" in " ".join(out.split()), out


# -- a rotation on the real team server -------------------------------------------------------

# The rotation test's own models and experiment, so no other test's champion is in its way.
CANDIDATES = "keys-candidates"
PRODUCTION = "keys-production"


@pytest.fixture(scope="module")
def own_team(team_server: TeamServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return apply_own_team(
        team_server,
        tmp_path_factory.mktemp("keys"),
        experiment=f"{EXPERIMENT}-keys",
        candidates=CANDIDATES,
        production=PRODUCTION,
    )


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

    def gate(key: keys.Key) -> Gate:
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
        done = gate(A).approve(("rui", password("rui")), CANDIDATES, candidate, "ok")
        version = done.approval.production_version
        assert verify_for_deploy(registry, A.verifier, PRODUCTION, version)

        # Rotated to B with A's public key as previous: deploy's check (public keys only)
        # and reconcile (the gate, verifying only) still accept it.
        after = rotated(B_HEX, A)
        assert verify_for_deploy(registry, after.verifier, PRODUCTION, version).approval_id
        assert "reverted" not in gate(after.verifier).reconcile()
        assert registry.by_alias(PRODUCTION, "champion").version == version  # type: ignore[union-attr]

        # B alone does not know A: refused, saying what to do.
        with pytest.raises(PromotionRefused, match="MODELYARD_GATE_PREVIOUS_KEYS") as refused:
            verify_for_deploy(registry, B.verifier, PRODUCTION, version)
        assert A.key_id in str(refused.value)

    # `registry resign` as the gate, with B and A as previous: re-signed, audited, once.
    first = resign(
        team_server,
        own_team,
        MODELYARD_GATE_KEY=B_HEX,
        MODELYARD_GATE_PREVIOUS_KEYS=A.verifier.public_hex,
        **gate_env,
    )
    said = " ".join(first.stdout.split())
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"re-signed {PRODUCTION} v{version}: key {A.key_id} -> {B.key_id}" in said
    resigned = [e for e in store.audit_log(PRODUCTION) if e.event == "approval-resigned"]
    assert [(e.version, e.detail["old_key"], e.detail["new_key"]) for e in resigned] == [
        (version, A.key_id, B.key_id)
    ]
    again = resign(team_server, own_team, MODELYARD_GATE_KEY=B_HEX, **gate_env)
    assert again.returncode == 0 and f"already signed with key {B.key_id}: v{version}" in (
        " ".join(again.stdout.split())
    ), again.stdout + again.stderr

    with as_user(team_server, "gate"):
        # Only B now: the re-signed approval verifies (tags and the gate's table).
        only_b = B.verifier
        assert verify_for_deploy(registry, only_b, PRODUCTION, version)
        assert gate(only_b).approved(version)
        assert not gate(A).approved(version)
        tags = registry.version(PRODUCTION, version).tags
        assert tags[SIGNATURE_TAG].startswith(f"ed25519:{B.key_id}:")
        record = tags[RECORD_TAG]

    # Forged on the version by someone who may edit production (an admin): a signature
    # by a key the gate never had, and one that borrows B's key id, are both refused.
    for forged, says in (
        (sign(C, record), "which this gate does not have"),
        (f"ed25519:{B.key_id}:{sign(C, record).rsplit(':', 1)[1]}", "no approval signed by"),
        (hmac_signature(B_HEX, record), "old shared HMAC key"),  # the key's text as HMAC
    ):
        with as_user(team_server, None):
            registry.set_version_tags(PRODUCTION, version, {SIGNATURE_TAG: forged})
        with as_user(team_server, "gate"), pytest.raises(PromotionRefused, match=says):
            verify_for_deploy(registry, only_b, PRODUCTION, version)

    # An approval the HMAC gate signed (before Ed25519), in the gate's table and on the
    # version: the deploy side refuses it, the gate keeps it (reconcile does not revert
    # it), and `registry resign` with the old secret moves it to Ed25519.
    from registry.store import StoredApproval

    legacy = hmac_signature(OLD_SECRET, record)
    store.add_approval(StoredApproval("legacy-1", PRODUCTION, version, json.loads(record), legacy))
    with as_user(team_server, "gate"):
        registry.set_version_tags(PRODUCTION, version, {SIGNATURE_TAG: legacy})
        with pytest.raises(PromotionRefused, match="registry resign"):
            verify_for_deploy(registry, only_b, PRODUCTION, version)
        assert "reverted" not in gate(rotated(B_HEX, legacy=(OLD_SECRET,))).reconcile()
    moved = resign(
        team_server,
        own_team,
        MODELYARD_GATE_KEY=B_HEX,
        MODELYARD_GATE_LEGACY_HMAC_KEYS=OLD_SECRET,
        **gate_env,
    )
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert f"re-signed {PRODUCTION} v{version}: key" in " ".join(moved.stdout.split())
    with as_user(team_server, "gate"):
        assert verify_for_deploy(registry, only_b, PRODUCTION, version)

    # A gate whose key signed none of the stored approvals re-signs nothing: exit 1.
    unknown = resign(team_server, own_team, MODELYARD_GATE_KEY=C_HEX, **gate_env)
    assert unknown.returncode == 1, unknown.stdout + unknown.stderr
    assert f"{PRODUCTION} v{version} not re-signed" in " ".join(unknown.stderr.split())
    assert "MODELYARD_GATE_PREVIOUS_KEYS" in " ".join(unknown.stderr.split())
    store.close()


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({}, "the gate needs: MODELYARD_GATE_KEY"),
        ({"MODELYARD_GATE_KEY": "a1" * 32, "MODELYARD_GATE_REPO": "."},
         "MODELYARD_GATE_REPO and MODELYARD_GATE_DVC_REMOTE: set both"),
    ],
    ids=["no key", "repo without remote"],
)  # fmt: skip
def test_resign_without_the_gate_key_is_2(
    e2e_tier: None, tmp_path: Path, extra: dict[str, str], says: str
) -> None:
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
        **extra,
    )
    done = subprocess.run(
        [str(BIN / "modelyard"), *args], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    record_exit(args, done.returncode)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in " ".join(done.stderr.split())
    assert not (tmp_path / "unused.db").exists()
