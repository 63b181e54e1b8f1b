"""The team's review gate on a real team server: `modelyard registry listen --team` (the
gate's own MLflow account, its own PostgreSQL database), `modelyard approve` with each
reviewer's own login, webhooks from the server, and a stand-in GitHub."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from registry import keys
from registry.approval import signed
from registry.client import Registry
from registry.keys import RECORD_TAG, SIGNATURE_TAG
from registry.store import GateStore
from registry.webhooks import sign as sign_delivery
from tests.conftest import BIN, FakeGitHub, free_port, kill_tree, new_project, record_exit
from tests.registry.conftest import (
    CANDIDATES,
    GOOD_METRICS,
    PRODUCTION,
    RULES,
    TeamServer,
    as_user,
    log_candidate,
    password,
    register_candidate,
    train_candidate,
)

pytestmark = pytest.mark.slow

KEY = "9a" * 32  # the gate's Ed25519 private key (64 hex digits: `registry keygen`)
PUBLIC_KEY = keys.Signer.of_hex(KEY).verifier.public_hex  # what everyone else verifies with
SECRET = "webhook-secret-for-tests"


class RecordingGitHub(FakeGitHub):
    """FakeGitHub that can refuse the next dispatches (HTTP 500) and notes when each
    request arrived."""

    def __init__(self) -> None:
        self.fail_dispatches = 0
        self.arrived: list[float] = []
        super().__init__()

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.arrived.append(time.monotonic())
        if path.endswith("/dispatches") and self.fail_dispatches > 0:
            self.fail_dispatches -= 1
            self.requests.pop()  # a refused dispatch started nothing
            return 500, {"message": "Server Error"}
        return super()._route(method, path, body)


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


class Gate:
    """The gate process, its database, and the commands people run against it."""

    def __init__(self, server: TeamServer, team_file: Path, base: Path) -> None:
        self.server, self.team_file, self.base = server, team_file, base
        self.github = RecordingGitHub()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.project = new_project(base / "project")
        self.process: subprocess.Popen[Any] | None = None
        self.store = GateStore(server.gate_database_url)
        self.github_env = {
            "GITHUB_REPOSITORY": "acme/models",
            "GITHUB_TOKEN": "gh-test-token",
            "GITHUB_API_URL": self.github.url,
        }

    def env(self, user: str | None, **extra: str) -> dict[str, str]:
        # The private key is the gate's alone; everyone else holds the public key.
        key = {"MODELYARD_GATE_KEY": KEY} if user == "gate" else {}
        gate = {
            **key,
            "MODELYARD_GATE_PUBLIC_KEY": PUBLIC_KEY,
            "MODELYARD_GATE_DATABASE_URL": self.server.gate_database_url,
            "MODELYARD_WEBHOOK_SECRET": SECRET,
            "MODELYARD_GATE_URL": self.url,
            "COLUMNS": "200",
        }
        return self.server.env(user, **{**gate, **self.github_env, **extra})

    def start(self) -> None:
        cmd = ["registry", "listen", "--team", str(self.team_file), "--port", str(self.port)]
        with open(self.base / f"gate-{time.time_ns()}.out", "w") as out:
            self.process = subprocess.Popen(
                [str(BIN / "modelyard"), *cmd, "--retry-base", "0", *self.params],
                env=self.env("gate"),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._healthy, 90, "the gate")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            kill_tree(self.process.pid)
            self.process = None

    @property
    def params(self) -> list[str]:
        return ["--params", str(self.project.params_path)]

    def run(self, user: str | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(BIN / "modelyard"), *args],
            env=self.env(user, **env),
            capture_output=True,
            text=True,
            cwd=self.project.root,
        )
        record_exit(args, done.returncode)
        return done

    def approve(self, user: str, version: str, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            user, "approve", CANDIDATES, version, "--comment", f"reviewed by {user}", **env
        )

    def reconcile(self) -> str:
        args = ["registry", "reconcile", "--team", str(self.team_file), "--retry-base", "0"]
        result = self.run("gate", *args, *self.params)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def pending(self) -> int:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5) as reply:
            return int(json.load(reply)["pending"])

    def champion(self) -> str | None:
        with as_user(self.server, "dana"):
            found = Registry(self.server.uri).by_alias(PRODUCTION, "champion")
        return found.version if found else None

    def events(self, since: int = 0) -> list[tuple[str, str | None]]:
        """The production model's audit since ``since``, less the one-off record of its
        identity (``model-identity``, written the first time the gate sees it)."""
        return [
            (e.event, e.version)
            for e in self.store.audit_log(PRODUCTION)
            if e.id > since and e.event != "model-identity"
        ]

    def last_id(self) -> int:
        log = self.store.audit_log()
        return log[-1].id if log else 0


@pytest.fixture(scope="module")
def gate(
    team_server: TeamServer, team_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gate]:
    g = Gate(team_server, team_file, tmp_path_factory.mktemp("gate"))
    g.start()
    installed = g.run(
        None, "registry", "webhook", "install", "--url", f"{g.url}/webhook", *g.params
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    try:
        yield g
    finally:
        g.stop()
        g.store.close()
        g.github.close()


def test_a_reviewer_approves_and_the_gate_moves_champion(gate: Gate, tmp_path: Path) -> None:
    candidate = train_candidate(gate.server, tmp_path, seed=1)
    since = gate.last_id()
    started = time.monotonic()
    result = gate.approve("rui", candidate)
    assert result.returncode == 0, result.stdout + result.stderr
    champion = gate.champion()
    assert champion is not None
    assert f"{PRODUCTION} v{champion} is now @champion" in result.stdout
    # the gate dispatched the deploy of exactly that version, once
    assert gate.github.dispatched().count((PRODUCTION, champion)) == 1
    dispatched_after = gate.github.arrived[-1] - started
    print(f"\napprove command start -> deploy dispatch received: {dispatched_after:.2f} s")
    # the approval was written before champion moved, then the deploy requested
    assert gate.events(since) == [
        ("approved", champion),
        ("promote", champion),
        ("deploy-triggered", champion),
    ]
    # the production version carries the gate's signed record of who approved what
    with as_user(gate.server, "dana"):
        version = Registry(gate.server.uri).version(PRODUCTION, champion)
    record = json.loads(version.tags[RECORD_TAG])
    assert record["reviewer"] == "rui" and record["author"] == "dana-gh"
    assert (record["candidate_name"], record["candidate_version"]) == (CANDIDATES, candidate)
    assert signed(
        keys.Verifier.of(bytes.fromhex(PUBLIC_KEY)),
        version.tags[RECORD_TAG],
        version.tags[SIGNATURE_TAG],
    )
    # the deploy workflow's re-check passes for it
    verified = gate.run("dana", "registry", "verify", PRODUCTION, champion)
    assert verified.returncode == 0, verified.stderr
    assert "approved by rui" in verified.stdout


def test_the_forged_tags_attack_fails_at_every_step(gate: Gate, tmp_path: Path) -> None:
    """The issue's attack: a 1-epoch model (accuracy 0.83), a good version's tags copied,
    onnx.sha256 fixed, an approval tag written, champion moved."""
    from mlflow.exceptions import MlflowException

    good = train_candidate(gate.server, tmp_path, seed=2)
    before, since = gate.champion(), gate.last_id()
    with as_user(gate.server, "ci"):
        good_tags = Registry(gate.server.uri).version(CANDIDATES, good).tags
    weak = {**GOOD_METRICS, "test.accuracy": 0.83, "test.macro_f1": 0.82}
    # 1. dana's own account: the server refuses each write (403).
    logged = log_candidate(
        gate.server, tmp_path, user="dana", experiment="dana-scratch", seed=3, metrics=weak
    )
    with as_user(gate.server, "dana"):
        client = Registry(gate.server.uri).client
        attempts: list[Callable[[], Any]] = [
            lambda: client.create_model_version(CANDIDATES, logged[1], run_id=logged[0]),
            lambda: client.set_model_version_tag(CANDIDATES, good, "approval.reviewer", "bob"),
            lambda: client.set_registered_model_alias(PRODUCTION, "champion", "1"),
        ]
        for attempt in attempts:
            with pytest.raises(MlflowException) as refused:
                attempt()
            assert refused.value.get_http_status_code() == 403

    # 2. Even someone who can register candidates (here: the trainer's rights, misused)
    # cannot get it past the gate: its own run, the good version's tags copied and the
    # sha256 tag "fixed" to its own file.
    run_id, uri, sha = logged  # dana's own run and file, in her own experiment
    forged_tags = {**good_tags, "onnx.sha256": sha, "approval.reviewer": "bob@example.com"}
    forged = register_candidate(gate.server, run_id, uri, sha, **forged_tags)
    result = gate.approve("rui", forged)
    assert result.returncode == 1
    said = " ".join(result.stderr.split())
    assert "not in the trainer's experiment" in said
    assert "min_accuracy 0.83 (needs >= 0.95)" in said

    # 3. The trainer's good run, but another file registered from it: the artifact is not
    # the one the run logged, and its sha256 is not the one the run registered.
    _, uri2, _ = log_candidate(gate.server, tmp_path, seed=4, metrics=weak)
    with as_user(gate.server, "ci"):
        good_run_id = Registry(gate.server.uri).version(CANDIDATES, good).run_id
    swapped = register_candidate(gate.server, good_run_id or "", uri2, sha, **good_tags)
    result = gate.approve("rui", swapped)
    assert result.returncode == 1
    said = " ".join(result.stderr.split())
    assert f"the registered artifact was not logged by run {good_run_id}" in said
    assert "is not the file run" in said
    assert "does not match the artifact" in said  # its onnx.sha256 tag is the good file's

    # Nothing moved, nothing was deployed, every refusal is in the gate's audit.
    assert gate.champion() == before
    assert (PRODUCTION, forged) not in gate.github.dispatched()
    assert gate.events(since) == []  # the production model saw nothing
    refusals = [e for e in gate.store.audit_log(CANDIDATES) if e.id > since]
    assert [(e.event, e.version, e.actor) for e in refusals] == [
        ("approval-refused", forged, "rui"),
        ("approval-refused", swapped, "rui"),
    ]


def test_four_eyes_uses_the_authenticated_login_not_a_typed_name(
    gate: Gate, tmp_path: Path
) -> None:
    own = train_candidate(gate.server, tmp_path, seed=5, author="rui-gh")
    before = gate.champion()

    self_review = gate.approve("rui", own)
    assert self_review.returncode == 1
    assert "four eyes: rui is rui-gh, who authored run" in " ".join(self_review.stderr.split())

    not_a_reviewer = gate.approve("dana", own)
    assert not_a_reviewer.returncode == 1
    assert "dana may not approve: role data_scientist" in not_a_reviewer.stderr

    # rui's name typed with another password is not rui
    wrong = gate.approve("rui", own, MLFLOW_TRACKING_PASSWORD="not-ruis-password")
    assert wrong.returncode == 1
    assert "did not accept the credentials of 'rui'" in " ".join(wrong.stderr.split())

    unknown_author = train_candidate(gate.server, tmp_path, seed=6, author=None)
    result = gate.approve("lee", unknown_author)
    assert result.returncode == 1 and "records no verified author" in result.stderr
    assert gate.champion() == before

    ok = gate.approve("lee", own)
    assert ok.returncode == 0, ok.stderr
    assert gate.champion() != before


def test_a_replayed_delivery_is_refused_after_a_restart(gate: Gate) -> None:
    event = {"name": PRODUCTION, "alias": "champion", "version": "1"}
    body = json.dumps(
        {"entity": "model_version_alias", "action": "created", "data": event}
    ).encode()
    stamp = str(int(time.time()))

    def deliver(delivery: str) -> int:
        headers = {
            "X-MLflow-Delivery-Id": delivery,
            "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": sign_delivery(SECRET.encode(), delivery, stamp, body).decode(),
        }
        req = urllib.request.Request(f"{gate.url}/webhook", body, headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as err:
            return err.code

    assert deliver(f"captured-{stamp}") == 200
    gate.stop()
    gate.start()
    assert deliver(f"captured-{stamp}") == 401  # the same delivery, replayed: refused
    assert deliver(f"fresh-{stamp}") == 200


def test_reconcile_restores_reverts_and_records_what_it_finds(gate: Gate, tmp_path: Path) -> None:
    """With the gate down (deliveries dropped), an admin moves champion around; the
    scheduled reconcile puts it right once and records it."""
    first = train_candidate(gate.server, tmp_path, seed=7)
    assert gate.approve("rui", first).returncode == 0
    approved_earlier = gate.champion()
    second = train_candidate(gate.server, tmp_path, seed=8)
    assert gate.approve("rui", second).returncode == 0
    champion = gate.champion()
    assert champion is not None and approved_earlier is not None
    gate.stop()
    try:
        since = gate.last_id()
        admin = Registry(gate.server.uri)
        with as_user(gate.server, None):
            # an unapproved version made champion: reverted to the gate's champion
            stray = admin.client.create_model_version(
                PRODUCTION, source=f"models:/{CANDIDATES}/{second}"
            ).version
            admin.set_champion(PRODUCTION, str(stray))
        assert gate.reconcile().startswith(f"reconcile {PRODUCTION}: reverted:{champion}")
        assert gate.champion() == champion
        # champion removed: restored
        with as_user(gate.server, None):
            admin.clear_champion(PRODUCTION)
        assert "restored:" in gate.reconcile()
        assert gate.champion() == champion
        # moved to an earlier approved version: recorded, deployed once, then pending
        with as_user(gate.server, None):
            admin.set_champion(PRODUCTION, approved_earlier)
        dispatched = gate.github.dispatched().count((PRODUCTION, approved_earlier))
        out = gate.reconcile()
        assert f"recorded:{approved_earlier}" in out and "deploy:github:model-promoted" in out
        assert "deploy-pending" in gate.reconcile()
        assert gate.github.dispatched().count((PRODUCTION, approved_earlier)) == dispatched + 1
        assert gate.events(since) == [
            ("alias-reverted", str(stray)),
            ("alias-restored", champion),
            ("promote-discovered", approved_earlier),
            ("deploy-triggered", approved_earlier),
        ]
    finally:
        gate.start()


def test_a_failed_deploy_is_retried(gate: Gate, tmp_path: Path) -> None:
    candidate = train_candidate(gate.server, tmp_path, seed=9)
    since = gate.last_id()
    gate.github.fail_dispatches = 10**6  # GitHub refuses every dispatch for now
    result = gate.approve("lee", candidate)
    assert result.returncode == 0, result.stderr  # champion moved; the deploy failed
    assert "deploy-failed" in result.stdout
    champion = gate.champion()
    assert champion is not None
    gate.github.fail_dispatches = 0  # GitHub is back
    # The next reconcile (or a webhook event the gate is still handling: both retry
    # with --retry-base 0) dispatches it, once.
    assert "deploy-failed" not in gate.reconcile()
    assert gate.github.dispatched().count((PRODUCTION, champion)) == 1
    assert "deploy-pending" in gate.reconcile()
    assert gate.github.dispatched().count((PRODUCTION, champion)) == 1
    state = gate.store.deploy(PRODUCTION, champion)
    assert state is not None and state.state == "requested" and state.attempts >= 2
    # the model page shows the deploy as the gate has it now, not as it was at approval
    with as_user(gate.server, "dana"):
        page = Registry(gate.server.uri).version(PRODUCTION, champion).description
    assert f"**deploy: requested** (attempts {state.attempts}," in page
    assert "deploy-failed by gate" in page and "deploy-triggered by gate" in page
    events = [event for event, version in gate.events(since) if version == champion]
    assert events[:3] == ["approved", "promote", "deploy-failed"]
    assert events[-1] == "deploy-triggered" and events.count("deploy-triggered") == 1


def test_the_champion_alias_deleted_is_restored_by_the_webhook(gate: Gate) -> None:
    champion = gate.champion()
    assert champion is not None
    wait_for(lambda: gate.pending() == 0, 60, "the gate to handle earlier deliveries")
    with as_user(gate.server, None):
        Registry(gate.server.uri).clear_champion(PRODUCTION)
    wait_for(lambda: gate.champion() == champion, 60, "the gate to restore champion")


def test_the_audit_is_append_only(gate: Gate) -> None:
    """Even for the tables' owner (the server's admin) the audit is append-only; the
    gate's own role may not even try (tests/registry/test_team.py)."""
    owner = sa.create_engine(gate.server.database_url("modelyard_gate", admin=True))
    with owner.connect() as conn:
        statements = ("UPDATE gate_audit SET actor = 'x'", "DELETE FROM gate_audit")
        for statement in (*statements, "TRUNCATE gate_audit"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                conn.execute(sa.text(statement))
            conn.rollback()
    owner.dispose()
    assert gate.store.audit_log()


def test_deploy_verify_refuses_what_the_gate_did_not_approve(gate: Gate) -> None:
    champion = gate.champion()
    assert champion is not None
    with as_user(gate.server, None):
        unapproved = (
            Registry(gate.server.uri)
            .client.create_model_version(PRODUCTION, source=f"models:/{PRODUCTION}/{champion}")
            .version
        )
    refused = gate.run("dana", "registry", "verify", PRODUCTION, str(unapproved))
    assert refused.returncode == 1 and "is not the champion" in refused.stderr
    other_key = gate.run(
        "dana", "registry", "verify", PRODUCTION, champion, MODELYARD_GATE_PUBLIC_KEY="5c" * 32
    )
    assert other_key.returncode == 1  # signed with another key (registry.keys says which)
    assert "not deploying it: it is signed with key" in " ".join(other_key.stderr.split())


def test_a_reviewer_rolls_back_through_the_gate(gate: Gate, tmp_path: Path) -> None:
    first = train_candidate(gate.server, tmp_path, seed=30)
    assert gate.approve("rui", first).returncode == 0
    earlier = gate.champion()
    second = train_candidate(gate.server, tmp_path, seed=31)
    assert gate.approve("rui", second).returncode == 0
    current = gate.champion()
    since = gate.last_id()

    refused = gate.run("dana", "rollback", PRODUCTION, *gate.params)
    assert refused.returncode == 1 and "dana may not roll back" in refused.stderr
    assert gate.champion() == current

    done = gate.run("lee", "rollback", PRODUCTION, *gate.params)
    assert done.returncode == 0, done.stderr
    assert f"@champion v{current} -> v{earlier}" in done.stdout
    assert gate.champion() == earlier
    assert ("rollback", earlier) in gate.events(since)


def test_the_approval_is_written_before_champion_moves(
    team_server: TeamServer, team_file: Path, tmp_path: Path
) -> None:
    """The gate in-process, on the same server and database, watched at the moment it
    moves the alias: its signed approval is already stored and on the version."""
    from registry import team
    from registry.gate import Gate as GateService

    store = GateStore(team_server.gate_database_url)
    at_move: list[tuple[bool, bool]] = []

    class Watched(Registry):
        def set_champion(self, name: str, version: str) -> None:
            stored = store.approval_for(name, version) is not None
            at_move.append((stored, SIGNATURE_TAG in self.version(name, version).tags))
            super().set_champion(name, version)

    class Recorder:
        def deploy(self, name: str, version: str) -> str:
            return "recorded"

    candidate = train_candidate(team_server, tmp_path, seed=20)
    with as_user(team_server, "gate"):
        service = GateService(
            registry=Watched(team_server.uri),
            team=team.load(team_file),
            store=store,
            key=keys.Signer.of_hex(KEY),
            rules=RULES,
            dispatcher=Recorder(),
        )
        started = time.monotonic()
        done = service.approve(("rui", password("rui")), CANDIDATES, candidate, "ok")
        took = time.monotonic() - started
    store.close()
    print(f"\ngate.approve in-process (login, evidence, copy, sign, alias, deploy): {took:.2f} s")
    assert at_move == [(True, True)]
    assert done.approval.reviewer == "rui" and done.approval.candidate_version == candidate


def put_file(uri: str, local: Path) -> None:
    """Write ``local`` into the artifact folder ``uri`` as the current MLflow user does."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(uri).log_artifact(str(local))


def test_files_changed_after_approval_are_refused_by_verify_build_and_reconcile(
    gate: Gate, tmp_path: Path
) -> None:
    """Issue 21's first attack: the class list in MLmodel rewritten after approval. The
    production version points at the gate's own copy, which the trainer cannot write;
    whoever can (an admin, the storage) is caught by every check, naming the file."""
    from mlflow.tracking import MlflowClient

    candidate = train_candidate(gate.server, tmp_path, seed=41)
    assert gate.approve("rui", candidate).returncode == 0
    champion = gate.champion()
    assert champion is not None
    with as_user(gate.server, "dana"):
        registry = Registry(gate.server.uri)
        production = registry.version(PRODUCTION, champion)
        theirs = MlflowClient().get_model_version_download_uri(CANDIDATES, candidate)
        mine = MlflowClient().get_model_version_download_uri(PRODUCTION, champion)
        original = registry.download(PRODUCTION, champion, tmp_path / "original") / "MLmodel"
    record = json.loads(production.tags[RECORD_TAG])
    assert {e["path"] for e in record["manifest"]} >= {"MLmodel", "model.onnx"}
    assert production.source == record["artifacts"] and mine.startswith("mlflow-artifacts:"), mine
    assert "-approved" not in theirs and theirs != mine  # the gate's copy, not the trainer's
    rotated = tmp_path / "rotated" / "MLmodel"
    rotated.parent.mkdir()
    rotated.write_text(original.read_text() + "# classes rotated by one\n")

    # 1. The trainer rewrites the candidate's files (its own experiment: it may), then the
    # gate's copy (refused): production still serves the approved bytes.
    with as_user(gate.server, "ci"):
        put_file(theirs, rotated)
        with pytest.raises(Exception) as refused:
            put_file(mine, rotated)
    assert "403" in str(refused.value) or "PERMISSION_DENIED" in str(refused.value), refused
    verified = gate.run("dana", "registry", "verify", PRODUCTION, champion)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # 2. Whoever can write there (here the admin) is caught by verify, build and reconcile.
    since = gate.last_id()
    with as_user(gate.server, None):
        put_file(mine, rotated)
    try:
        verified = gate.run("dana", "registry", "verify", PRODUCTION, champion)
        said = " ".join(verified.stderr.split())
        assert verified.returncode == 1, verified.stdout + verified.stderr
        assert "its files are not the ones approved: MLmodel changed" in said, said
        built = gate.run(
            "dana", "build", "--model", f"{PRODUCTION}/{champion}", *gate.params,
            BENTOML_HOME=str(tmp_path / "bentoml"),
        )  # fmt: skip
        said = " ".join(built.stderr.split())
        assert built.returncode == 1, built.stdout + built.stderr
        assert "MLmodel changed" in said and "not building it" in said, said
        args = ["registry", "reconcile", "--team", str(gate.team_file), "--retry-base", "0"]
        reconciled = gate.run("gate", *args, *gate.params)
        assert reconciled.returncode == 1, reconciled.stdout + reconciled.stderr
        assert f"files-changed:{champion}" in reconciled.stdout
        found = [e for e in gate.store.audit_log(PRODUCTION) if e.id > since]
        assert [(e.event, e.version) for e in found] == [("files-changed", champion)]
        assert "MLmodel changed" in found[0].detail["found"]
        again = gate.run("gate", *args, *gate.params)  # recorded once, refused each time
        assert again.returncode == 1 and len(gate.events(since)) == 1
    finally:
        with as_user(gate.server, None):
            put_file(mine, original)
    assert gate.reconcile()  # the approved bytes back: in sync again (exit 0)


def test_champion_set_on_the_candidates_model_is_removed_and_recorded(
    gate: Gate, tmp_path: Path
) -> None:
    """Issue 21, item 4: the trainer may move aliases on the candidates model, so a
    `champion` there would look like production to anyone reading it. The webhook (then
    reconcile) removes it and records it, as any unapproved move."""
    version = train_candidate(gate.server, tmp_path, seed=51)
    with as_user(gate.server, "ci"):
        Registry(gate.server.uri).client.set_registered_model_alias(CANDIDATES, "champion", version)

    def removed() -> bool:
        with as_user(gate.server, "dana"):
            return Registry(gate.server.uri).by_alias(CANDIDATES, "champion") is None

    wait_for(removed, 60, "the webhook to remove champion from the candidates model")
    found = [e for e in gate.store.audit_log(CANDIDATES) if e.event == "alias-reverted"]
    assert [(e.version, e.actor) for e in found][-1:] == [(version, "gate")]
    assert "champion lives on" in found[-1].detail["reason"]


def test_rows_the_candidate_chose_do_not_decide_the_comparison(gate: Gate, tmp_path: Path) -> None:
    """Issue 21 item 2: the trainer logs a random model and, as its test split, only rows
    it gets right (labelled by itself). On those rows it beats the champion; the gate also
    scores both on the rows it kept when it approved the champion, where the random model
    is far worse: refused, nothing moves. The kept rows are the signed ones."""
    decent = train_candidate(gate.server, tmp_path, seed=60)
    assert gate.approve("rui", decent).returncode == 0
    champion = gate.champion()
    chosen = train_candidate(gate.server, tmp_path, seed=3, model="random", labelled_by=3)
    since, dispatched = gate.last_id(), len(gate.github.dispatched())
    refused = gate.approve("lee", chosen)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 1, refused.stdout + said
    assert f"{CANDIDATES} v{chosen} is worse than the current champion" in said
    own = said.split("vs champion")[1]  # its own rows first: it wins there
    assert "(the candidate's logged rows, sha256" in own and "accuracy 1.0000 vs" in own
    assert "(not worse," in own
    kept = said.split("vs champion")[2]
    assert f"(the rows the gate kept when it approved {PRODUCTION} v{champion}" in kept
    assert "(WORSE," in kept
    assert gate.champion() == champion and gate.events(since) == []
    assert len(gate.github.dispatched()) == dispatched
    # The kept rows are the bytes the approval signed.
    with as_user(gate.server, "dana"):
        record = json.loads(
            Registry(gate.server.uri).version(PRODUCTION, champion).tags[RECORD_TAG]
        )
    assert {f["path"] for f in record["reference"]} == {"schema.json", "test.parquet"}
    assert record["reference_artifacts"].endswith("/reference")


def test_a_renamed_deleted_or_remade_model_is_caught_by_reconcile(gate: Gate) -> None:
    """Issue 21 item 4: the gate knows each model by name and creation time. The
    production model renamed away (its name free) is ``model-missing``; a new model under
    the old name is ``model-replaced``: reconcile exits 1, audits each once and deploys
    nothing; with the model back, all is as before."""
    gate.reconcile()  # both models seen: their identity is in the audit
    champion = gate.champion()
    args = ["registry", "reconcile", "--team", str(gate.team_file), "--retry-base", "0"]
    admin = Registry(gate.server.uri)
    moved = f"{PRODUCTION}-moved"

    def reconcile() -> tuple[int, str]:
        done = gate.run("gate", *args, *gate.params)
        return done.returncode, " ".join((done.stdout + done.stderr).split())

    with as_user(gate.server, None):
        admin.client.rename_registered_model(PRODUCTION, moved)
    try:
        for _ in range(2):
            code, said = reconcile()
            assert code == 1 and f"model-missing:{PRODUCTION}" in said, said
        assert "is gone (deleted or renamed)" in said and "nothing deployed" in said
        with as_user(gate.server, None):
            admin.client.create_registered_model(PRODUCTION)  # someone takes the name
        try:
            code, said = reconcile()
            assert code == 1 and f"model-replaced:{PRODUCTION}" in said, said
        finally:
            with as_user(gate.server, None):
                admin.client.delete_registered_model(PRODUCTION)
    finally:
        with as_user(gate.server, None):
            admin.client.rename_registered_model(moved, PRODUCTION)
    events = [e.event for e in gate.store.audit_log(PRODUCTION)]
    assert events.count("model-missing") == 1 and events.count("model-replaced") == 1
    assert events.count("model-identity") == 1  # recorded once, never overwritten
    code, said = reconcile()
    assert code == 0 and "model-" not in said, said
    assert gate.champion() == champion


def test_the_comparison_with_the_current_champion_is_recomputed_at_approval(
    gate: Gate, tmp_path: Path
) -> None:
    """Issue 11 item 4: a candidate whose own gates pass but which is worse than the
    current champion on its test rows is refused; a better one is approved with the
    recomputed numbers (on its rows and on the rows the gate kept) signed, audited and on
    the model cards; approving it again changes nothing. Last in this module: its better
    candidate (``model="truth"``) leaves a champion no decent candidate is as good as."""
    first = train_candidate(gate.server, tmp_path, seed=40)  # decent: 50 of 60 rows
    assert gate.approve("rui", first).returncode == 0
    champion = gate.champion()
    worse = train_candidate(gate.server, tmp_path, seed=2, model="random")  # 18 of 60
    since = gate.last_id()
    refused = gate.approve("rui", worse)
    assert refused.returncode == 1, refused.stdout
    said = " ".join(refused.stderr.split())
    assert f"{CANDIDATES} v{worse} is worse than the current champion" in said
    assert f"vs champion {PRODUCTION} v{champion} on the same 60 test rows" in said
    assert "accuracy 0.3000 vs 0.8333" in said and "McNemar p = " in said and "WORSE" in said
    assert gate.champion() == champion and gate.events(since) == []

    # The open candidate (@challenger) is the worse one while a better one is approved.
    with as_user(gate.server, "ci"):
        Registry(gate.server.uri).set_alias(CANDIDATES, "challenger", worse)
    better = train_candidate(gate.server, tmp_path, seed=42, model="truth")  # right on all
    dispatched = len(gate.github.dispatched())
    approved = gate.approve("lee", better)
    assert approved.returncode == 0, approved.stderr
    now = gate.champion()
    assert now != champion
    shown = " ".join(approved.stdout.split())
    assert f"recomputed by the gate: vs champion {PRODUCTION} v{champion}" in shown
    assert "accuracy 1.0000 vs" in shown and "not worse" in shown
    entry = next(
        e for e in gate.store.audit_log(PRODUCTION) if e.event == "approved" and e.version == now
    )
    splits = {s["split"]: s for s in entry.detail["comparison"]["splits"]}
    assert set(splits) == {"test", "gate:test"}  # its own rows, and the ones the gate kept
    assert entry.detail["comparison"]["champion"] == f"{PRODUCTION} v{champion}"
    assert (
        splits["gate:test"]["source"]
        == f"the rows the gate kept when it approved {PRODUCTION} v{champion}"
    )
    for split in splits.values():
        assert split["challenger"]["accuracy"] == 1.0 and split["champion"]["accuracy"] < 1.0
        assert split["test"]["p_value"] < 0.05
        assert set(split["challenger"]["recall"]) == {"0", "1", "2"}
    with as_user(gate.server, "dana"):
        registry = Registry(gate.server.uri)
        production = registry.version(PRODUCTION, str(now))
        challenger = registry.version(CANDIDATES, worse)
    # the signed record carries the comparison
    assert json.loads(production.tags[RECORD_TAG])["comparison"] == entry.detail["comparison"]
    # the production card: the gate's audit and the comparison with the champion it replaced
    card = production.description
    assert f"Against the champion it replaced, {PRODUCTION} v{champion}**" in card
    assert f"approved by lee**: {CANDIDATES} v{better}" in card
    assert "deploy-triggered by gate" in card and "gate_audit" in card
    assert "**deploy: requested** (attempts 1" in card
    # the open candidate's card, recomputed against the new champion
    assert f"Against the current champion, {PRODUCTION} v{now}**" in challenger.description
    assert "**WORSE than the champion**" in challenger.description

    # Approved twice: the same answer, nothing moved or dispatched again.
    again = gate.approve("rui", better)
    assert again.returncode == 0, again.stderr
    assert "was already approved by lee" in again.stdout and "nothing changed" in again.stdout
    assert gate.champion() == now
    assert len(gate.github.dispatched()) == dispatched + 1
    with as_user(gate.server, "dana"):
        assert Registry(gate.server.uri).versions(PRODUCTION)[-1].version == now
    old = gate.approve("rui", first)  # no longer the champion: refused, not re-promoted
    assert old.returncode == 1 and "was approved before" in " ".join(old.stderr.split())
    assert gate.champion() == now
    # The team server is the session's: leave a decent champion for the tests after this.
    assert gate.run("lee", "rollback", PRODUCTION, *gate.params).returncode == 0
    assert gate.champion() == champion
