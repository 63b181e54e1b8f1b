"""The review gate on a shared registry: a real `mlflow server` with webhooks, the
`modelyard registry listen` receiver, and a local HTTP server standing in for GitHub."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.client import Registry
from registry.webhooks import Rejected, Verifier, sign
from tests.conftest import BIN, FakeGitHub, Project, free_port, kill_tree, modelyard, new_project

NAME = "digits-classifier"
SECRET = "s3cret-for-tests"


# -- signature checks (pure) ---------------------------------------------------------------------


def headers(
    body: bytes, delivery: str = "d1", stamp: int | None = None, secret: str = SECRET
) -> dict[str, str]:
    ts = str(stamp if stamp is not None else int(time.time()))
    return {"X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": sign(secret.encode(), delivery, ts, body).decode()}  # fmt: skip


def test_verifier_accepts_signed_and_rejects_the_rest() -> None:
    body = b'{"entity": "model_version_alias"}'
    v = Verifier(SECRET)
    v.verify(headers(body), body)
    with pytest.raises(Rejected, match="invalid signature"):
        v.verify(headers(body, "d2", secret="forged"), body)
    with pytest.raises(Rejected, match="invalid signature"):
        v.verify(headers(body, "d3"), body + b" ")  # body changed after signing
    with pytest.raises(Rejected, match="replay window"):
        v.verify(headers(body, "d4", stamp=int(time.time()) - 3600), body)
    with pytest.raises(Rejected, match="replay"):
        v.verify(headers(body, "d1"), body)  # same delivery id again
    with pytest.raises(Rejected, match="missing"):
        v.verify({}, body)


# -- the whole loop over HTTP ---------------------------------------------------------------------


def wait_for(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, urllib.error.URLError):
            result = None
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=3) as r:
        return int(r.status)


class Loop:
    def __init__(self, base: Path) -> None:
        from cryptography.fernet import Fernet

        self.base = base
        self.github = FakeGitHub()
        self.mlflow_port, self.listen_port = free_port(), free_port()
        self.uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        self.env.update(
            MLFLOW_TRACKING_URI=self.uri, MODELYARD_WEBHOOK_SECRET=SECRET,
            GITHUB_REPOSITORY="acme/models", GITHUB_TOKEN="gh-test-token", GITHUB_API_URL=self.github.url,
            MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https", MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
            MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=Fernet.generate_key().decode(),
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        )  # fmt: skip
        self.mlflow = self._spawn("mlflow.out",
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{base}/server.db",
             "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.mlflow_port), "--workers", "1"],
        )  # fmt: skip
        wait_for(lambda: get(f"{self.uri}/health") == 200, 90, "mlflow server")
        self.project: Project = new_project(base / "project")
        self.listener: subprocess.Popen[Any] | None = None
        self.start_listener()
        modelyard(self.project.root, "registry", "webhook", "install", "--url",
                  f"http://127.0.0.1:{self.listen_port}/webhook", "--params", str(self.project.params_path),
                  env=self.env)  # fmt: skip
        self.registry = Registry(self.uri)

    def start_listener(self) -> None:
        self.listener = self._spawn(
            f"listen-{time.time_ns()}.out",
            [str(BIN / "modelyard"), "registry", "listen", "--port", str(self.listen_port),
             "--params", str(self.project.params_path)],
        )  # fmt: skip
        wait_for(lambda: get(f"http://127.0.0.1:{self.listen_port}/health") == 200, 60, "listener")

    def _spawn(self, out: str, cmd: list[str]) -> subprocess.Popen[Any]:
        # Output to a file (the child keeps its own handle), never an unread pipe.
        with open(self.base / out, "w") as fh:
            return subprocess.Popen(cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT)

    def stop_listener(self) -> None:
        if self.listener is not None:
            kill_tree(self.listener.pid)
            self.listener = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return modelyard(
            self.project.root,
            *args,
            "--params",
            str(self.project.params_path),
            env=self.env,
            check=check,
        )

    def register(self, name: str, **over: str) -> str:
        tags = {
            "onnx.sha256": "ab" * 32,
            "gates.passed": "True",
            "validation.success": "True",
            "git.author": "dana@example.com",
            "git.commit": "0123456789ab",
            **over,
        }
        # a remote-looking source: the server refuses local paths; nothing downloads it here
        return self.registry.register(
            name, "s3://modelyard-test/model", run_id="", tags=tags
        ).version

    def champion(self, name: str) -> str | None:
        found = self.registry.by_alias(name, "champion")
        return found.version if found else None

    def promote(self, name: str, version: str) -> None:
        """Promote through the review gate and wait for the listener's deploy dispatch."""
        self.cli("promote", name, version, "--reviewer", "rui@example.com")
        wait_for(lambda: (name, version) in self.github.dispatched(), 60, f"deploy of v{version}")

    def close(self) -> None:
        self.stop_listener()
        kill_tree(self.mlflow.pid)
        self.github.server.shutdown()


@pytest.fixture(scope="module")
def loop(server_tier: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    """One MLflow server, listener and stand-in GitHub for the module. Each test works on a
    registered model of its own (``name``), so none depends on what another did before."""
    lp = Loop(tmp_path_factory.mktemp("webhooks"))
    try:
        yield lp
    finally:
        lp.close()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return f"{NAME}-{request.node.name.removeprefix('test_')[:40]}"


@pytest.mark.slow
def test_promotion_dispatches_the_deploy(loop: Loop, name: str) -> None:
    v1, v2 = loop.register(name), loop.register(name)
    assert (v1, v2) == ("1", "2")
    loop.cli("promote", name, v1, "--reviewer", "rui@example.com")
    wait_for(lambda: (name, v1) in loop.github.dispatched(), 60, "the deploy dispatch")
    (request,) = [
        r
        for r in loop.github.requests
        if (r["body"] or {}).get("client_payload", {}).get("name") == name
    ]
    assert request["path"] == "/repos/acme/models/dispatches"
    assert request["auth"] == "Bearer gh-test-token"
    assert request["body"] == {
        "event_type": "model-promoted",
        "client_payload": {"name": name, "version": v1},
    }


@pytest.mark.slow
def test_forged_signature_is_rejected_and_triggers_nothing(loop: Loop, name: str) -> None:
    v1, v2 = loop.register(name), loop.register(name)
    loop.promote(name, v1)
    body = json.dumps(
        {
            "entity": "model_version_alias",
            "action": "created",
            "data": {"name": name, "alias": "champion", "version": v2},
        }
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{loop.listen_port}/webhook",
        data=body,
        method="POST",
        headers=headers(body, f"forged-{name}", secret="not-the-secret"),
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 401
    time.sleep(2)
    assert loop.github.dispatched().count((name, v2)) == 0
    assert loop.champion(name) == v1


@pytest.mark.slow
def test_unapproved_alias_move_is_reverted(loop: Loop, name: str) -> None:
    v1, v2 = loop.register(name), loop.register(name)
    loop.promote(name, v1)
    loop.registry.client.set_registered_model_alias(name, "champion", v2)  # what the UI does
    wait_for(lambda: loop.champion(name) == v1, 60, "the revert")
    assert "no approval" in loop.registry.version(name, v2).tags["promotion.refused"]
    time.sleep(1)
    assert (name, v2) not in loop.github.dispatched()


@pytest.mark.slow
def test_reconciler_catches_a_dropped_delivery(loop: Loop, name: str) -> None:
    v1 = loop.register(name)
    loop.stop_listener()  # deliveries now go nowhere
    try:
        loop.cli("promote", name, v1, "--reviewer", "rui@example.com")
        assert loop.champion(name) == v1
        assert (name, v1) not in loop.github.dispatched()

        first = loop.cli("registry", "reconcile", name)
        assert "deploy:github:model-promoted" in first.stdout
        assert loop.github.dispatched().count((name, v1)) == 1
        again = loop.cli("registry", "reconcile", name)
        assert "deploy-pending" in again.stdout
        assert loop.github.dispatched().count((name, v1)) == 1  # idempotent
    finally:
        loop.start_listener()


@pytest.mark.slow
def test_rollback_restores_the_previous_champion(loop: Loop, name: str) -> None:
    v1, v2 = loop.register(name), loop.register(name)
    loop.promote(name, v1)
    loop.promote(name, v2)
    result = loop.cli("rollback", name, "--actor", "oncall")
    assert f"v{v2} -> v{v1}" in result.stdout
    assert loop.champion(name) == v1
    # the listener sees an approved champion and triggers its deploy
    wait_for(lambda: loop.github.dispatched().count((name, v1)) == 2, 60, "the rollback deploy")


@pytest.mark.slow
def test_a_late_delivery_for_an_old_move_deploys_nothing(loop: Loop, name: str) -> None:
    """MLflow retries deliveries; one that arrives after champion moved on is stale."""
    from registry.webhooks import handle

    v1, v2 = loop.register(name), loop.register(name)
    loop.promote(name, v1)
    loop.promote(name, v2)
    loop.cli("rollback", name, "--actor", "oncall")
    assert loop.champion(name) == v1
    sent: list[tuple[str, str]] = []

    class Recorder:
        def deploy(self, name: str, version: str) -> str:
            sent.append((name, version))
            return "recorded"

    late = {
        "entity": "model_version_alias",
        "action": "created",
        "data": {"name": name, "alias": "champion", "version": v2},
    }
    assert handle(late, loop.registry, Recorder()) == "stale"
    assert sent == [] and loop.champion(name) == v1
