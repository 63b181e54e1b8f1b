"""The gate's pure parts and its database, without a server: the evidence verdict
(registry.policy.judge), the approval signature, the team file, and the store's
guarantees on SQLite (replays, one dispatch per claim, an append-only audit)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from core.errors import ConfigError
from registry import keys, policy, team
from registry.approval import Approval, sign, signed
from registry.gate_base import Backoff
from registry.store import GateStore
from tests.registry.conftest import RULES

SHA = "ab" * 32
GOOD = policy.Evidence(
    candidate="digits-classifier v3",
    run_id="run1",
    run_exists=True,
    run_in_trainer_experiment=True,
    artifact_logged_by_run=True,
    metrics={
        "test.accuracy": 0.97,
        "test.macro_f1": 0.96,
        "test.latency.batch_1.cpu_p99_ms": 0.5,
        "test.min_class_recall": 0.9,
        "test.noise_invariance": 0.99,
    },
    run_tags={
        "modelyard.author": "dana-gh",
        "git.author": "dana@example.com",
        "validation.success": "True",
        "registered.onnx_sha256": SHA,
    },
    onnx_sha256=SHA,
    version_tags={"onnx.sha256": SHA},
)


# team.yaml's people: each name (login, GitHub login, commit email) -> the person
PEOPLE = {
    **dict.fromkeys(("rui", "rui-gh", "rui@example.com"), "rui"),
    **dict.fromkeys(("dana", "dana-gh", "dana@example.com"), "dana"),
    "lee": "lee",
}


def judge(evidence: policy.Evidence, reviewer: str = "rui") -> policy.Verdict:
    return policy.judge(evidence, RULES, reviewer=reviewer, people=PEOPLE)


def test_good_evidence_passes_with_every_gate_recomputed() -> None:
    verdict = judge(GOOD, "rui")
    assert verdict.decision.ok, verdict.decision
    assert [g.name for g in verdict.gates] == list(policy.METRIC_OF_GATE)
    assert all(g.passed for g in verdict.gates) and verdict.author == "dana-gh"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"run_exists": False}, "its source run run1 does not exist"),
        ({"run_in_trainer_experiment": False}, "not in the trainer's experiment"),
        ({"artifact_logged_by_run": False}, "the registered artifact was not logged by run run1"),
        ({"onnx_sha256": "cd" * 32}, "is not the file run run1 registered"),
        ({"onnx_sha256": None}, "holds no model.onnx"),
        ({"version_tags": {"onnx.sha256": "ef" * 32}}, "the tags were edited"),
        ({"metrics": {**GOOD.metrics, "test.accuracy": 0.83}}, "min_accuracy 0.83 (needs >= 0.95)"),
        ({"metrics": {}}, "min_accuracy not logged"),
        ({"metrics": {**GOOD.metrics, "test.latency.batch_1.cpu_p99_ms": 9.0}}, "max_p99_ms 9"),
        ({"run_tags": {**GOOD.run_tags, "validation.success": "False"}}, "data validation"),
        ({"run_tags": {**GOOD.run_tags, "modelyard.author": "unknown"}}, "no verified author"),
        ({"run_tags": {**GOOD.run_tags, "modelyard.author": "RUI-GH"}}, "four eyes: rui is RUI-GH"),
        # one person, many names: the commit's email is rui's, approved by the login rui
        ({"run_tags": {**GOOD.run_tags, "git.author": "Rui@Example.com"}},
         "four eyes: rui is Rui@Example.com, author of the commit of run run1"),
        ({"run_tags": {**GOOD.run_tags, "modelyard.author": "mallory-gh"}},
         "unknown author: mallory-gh (who authored run run1) is nobody in team.yaml"),
        ({"run_tags": {**GOOD.run_tags, "git.author": "someone@example.com"}},
         "unknown author: someone@example.com (author of the commit of run run1)"),
        ({"run_tags": {k: v for k, v in GOOD.run_tags.items() if k != "git.author"}},
         "records no commit author (git.author)"),
    ],
)  # fmt: skip
def test_each_missing_piece_of_evidence_refuses(change: dict[str, object], reason: str) -> None:
    verdict = judge(dataclasses.replace(GOOD, **change), "rui")  # type: ignore[arg-type]
    assert not verdict.decision.ok
    assert reason in str(verdict.decision)


def test_tags_are_not_evidence() -> None:
    """Tags saying everything passed change nothing when the run's metrics fail."""
    forged = dataclasses.replace(
        GOOD,
        metrics={**GOOD.metrics, "test.accuracy": 0.83},
        version_tags={"onnx.sha256": SHA, "gates.passed": "True", "approval.reviewer": "bob"},
    )
    assert not judge(forged).decision.ok


def test_the_signature_covers_every_field() -> None:
    approval = Approval("id1", "c", "3", "p", "2", "run1", SHA, "rui", "dana-gh", "ok", "t")
    record = approval.canonical()
    gate, other = keys.Signer.of_hex("6b" * 32), keys.Signer.of_hex("78" * 32)
    signature = sign(gate, record)
    assert signed(gate.verifier, record, signature)
    assert not signed(other.verifier, record, signature)
    for field in dataclasses.fields(Approval):
        change: dict[str, Any] = {field.name: "changed"}
        changed = dataclasses.replace(approval, **change).canonical()
        assert not signed(gate.verifier, changed, signature), field.name


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=timedelta(minutes=1), cap=timedelta(minutes=5))
    assert [backoff.after(n).seconds // 60 for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 5, 5]


# -- team.yaml ---------------------------------------------------------------------------------


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


TEAM = {
    "experiment": "e",
    "models": {"candidates": "c", "production": "p"},
    "users": {
        "dana": {"role": "data_scientist", "github": "Dana-GH", "emails": ["Dana@example.com"]},
        "ci-trainer": {"role": "trainer"},
        "gate": {"role": "gate"},
    },
}


def test_team_file_roles_identities_and_passwords(tmp_path: Path) -> None:
    loaded = team.load(write(tmp_path, TEAM))
    assert loaded.role("dana") == "data_scientist" and loaded.role("eve") is None
    assert loaded.identities("dana") == {"dana", "dana-gh", "dana@example.com"}
    assert loaded.people()["dana@example.com"] == "dana"
    assert loaded.password_env("dana") == "MODELYARD_PASSWORD_DANA"
    assert loaded.approved_experiment == "e-approved"
    grants = team.grants_for(loaded, "7", "8")
    assert {(g.resource_type, g.resource_id, g.permission) for g in grants["gate"]} == {
        ("experiment", "7", "READ"),
        ("experiment", "8", "EDIT"),  # its copies of what it approved: only it writes
        ("registered_model", "c", "MANAGE"),  # its cards; it removes a champion set there
        ("registered_model", "p", "MANAGE"),
    }
    assert all(g.permission == "READ" for g in grants["dana"])
    assert ("experiment", "8", "READ") in {
        (g.resource_type, g.resource_id, g.permission) for g in grants["ci-trainer"]
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"users": {"dana": {"role": "admin"}, "gate": {"role": "gate"}}}, "role"),
        ({"users": {"dana": {"role": "data_scientist"}}}, "no user has role gate"),
        ({"models": {"candidates": "c", "production": "c"}}, "must differ"),
        ({"extra": 1}, "extra"),
        (
            {
                "users": {
                    "dana": {"role": "data_scientist"},
                    "gate": {"role": "gate", "github": "dana"},
                }
            },
            "'dana' names both dana and gate",
        ),
    ],
)
def test_a_bad_team_file_says_what_is_wrong(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        team.load(write(tmp_path, {**TEAM, **change}))


# -- the gate's database -----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> GateStore:
    return GateStore(f"sqlite:///{tmp_path}/gate.db")


def test_a_delivery_is_accepted_once_even_by_a_new_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/gate.db"
    assert GateStore(url).remember_delivery("d1")
    assert not GateStore(url).remember_delivery("d1")  # "after a restart"
    assert GateStore(url).remember_delivery("d2")


def test_a_deploy_is_claimed_once_retried_when_due_and_superseded(store: GateStore) -> None:
    assert store.claim_deploy("p", "1")
    assert not store.claim_deploy("p", "1")  # requested: nobody else dispatches it
    store.deploy_failed("p", "1", "GitHub said 500", retry_in=timedelta(hours=1))
    assert not store.claim_deploy("p", "1")  # not due yet
    store.deploy_failed("p", "1", "GitHub said 500", retry_in=timedelta(0))
    assert store.claim_deploy("p", "1")  # due: retried
    assert store.claim_deploy("p", "2")  # another version: v1's request is superseded
    assert store.claim_deploy("p", "1")  # champion again: requested again
    state = store.deploy("p", "1")
    assert state is not None and (state.state, state.attempts) == ("requested", 3)


def test_the_audit_cannot_be_changed(store: GateStore) -> None:
    store.audit("promote", model="p", version="1", actor="rui")
    with store.engine.connect() as conn:
        for statement in ("UPDATE gate_audit SET actor = 'x'", "DELETE FROM gate_audit"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                conn.execute(sa.text(statement))
            conn.rollback()
    assert [(e.event, e.actor) for e in store.audit_log("p")] == [("promote", "rui")]
    assert store.last_champion("p") == "1"


# -- the comparison with the current champion (registry.comparison) ---------------------------


def compare(tmp_path: Path, challenger: int, champion: int, labelled_by: int, **kw: int) -> Any:
    """Two tiny real ONNX models (seeds) on a reference folder labelled by a third."""
    from registry.comparison import compare_models
    from tests.registry.conftest import tiny_onnx, write_reference

    reference = write_reference(
        tmp_path / f"ref-{labelled_by}-{kw}", tmp_path, labelled_by=labelled_by, **kw
    )
    return compare_models(
        tiny_onnx(tmp_path / f"a-{challenger}.onnx", challenger),
        tiny_onnx(tmp_path / f"b-{champion}.onnx", champion),
        reference,
        champion_label="prod v1",
        alpha=RULES.champion_alpha,
        min_production_rows=RULES.min_production_rows,
    )


def test_a_candidate_worse_than_the_champion_on_its_own_test_rows_fails(tmp_path: Path) -> None:
    worse = compare(tmp_path, challenger=2, champion=1, labelled_by=1)  # the champion's labels
    assert not worse.passed
    (split,) = worse.splits
    assert split.split == "test" and split.rows == 60
    assert split.champion.accuracy == 1.0 and split.challenger.accuracy < 0.7
    assert split.test.only_challenger_right == 0 and split.test.p_value < 1e-6
    assert set(split.challenger.recall) == {"0", "1", "2"}
    assert "accuracy" in worse.summary() and "WORSE" in worse.summary()

    better = compare(tmp_path, challenger=1, champion=2, labelled_by=1)
    assert better.passed and better.splits[0].challenger.accuracy == 1.0
    same = compare(tmp_path, challenger=1, champion=1, labelled_by=2)
    assert same.passed and same.splits[0].test.p_value == 1.0  # no discordant rows
    assert same.record()["passed"] and "McNemar p = 1" in same.record()["summary"]


def test_the_production_split_counts_only_with_enough_rows(tmp_path: Path) -> None:
    few = compare(tmp_path, challenger=2, champion=1, labelled_by=2, production_rows=10)
    assert [s.split for s in few.splits] == ["test"]
    assert few.notes == ["test_production: 10 rows, fewer than 30: not compared"]
    enough = compare(tmp_path, challenger=2, champion=1, labelled_by=2, production_rows=40)
    assert [s.split for s in enough.splits] == ["test", "test_production"]
    assert enough.passed


def test_no_logged_test_split_is_an_error(tmp_path: Path) -> None:
    from core.errors import DataError
    from registry.comparison import compare_models
    from tests.registry.conftest import tiny_onnx

    model = tiny_onnx(tmp_path / "m.onnx", 1)
    with pytest.raises(DataError, match=r"reference/test\.parquet was not logged"):
        compare_models(
            model, model, tmp_path, champion_label="p v1", alpha=0.05, min_production_rows=30
        )


def test_the_gate_reads_every_rule_from_the_evaluate_section() -> None:
    from pipelines.config import Evaluate

    rules = policy.Rules.of(Evaluate(champion_alpha=0.01, min_production_rows=50))
    assert (rules.champion_alpha, rules.min_production_rows, rules.min_accuracy) == (0.01, 50, 0.95)
