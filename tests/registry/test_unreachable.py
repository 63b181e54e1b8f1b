"""A registry that fails is an error, never "not there".

Only MLflow's RESOURCE_DOES_NOT_EXIST means absent. A closed port, a 5xx, an auth
refusal: ``Registry`` raises RegistryError, and the commands built on it (`champion`,
`build`, `promote`, `registry reconcile`, the webhook receiver) stop with a message
instead of reporting "no champion", falling back to @challenger, or calling an event stale.
The failing registries are real: a port nobody listens on, and a local HTTP server that
answers every request with the given status.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from core.errors import RegistryError
from registry.client import Registry
from registry.webhooks import Receiver, Verifier, handle, sign
from tests.conftest import Project, free_port

NAME = "digits-classifier"
SECRET = "s3cret-for-tests"


class Answering:
    """A local HTTP server answering every request with one status and body."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        outer = self
        self.hits = 0

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.hits += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _json(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": message}).encode()


# What a registry in trouble answers: (status, body, content type).
FAILURES = {
    "503-proxy": (503, b"<html>Service Unavailable</html>", "text/html"),
    "500-mlflow": (500, _json("INTERNAL_ERROR", "database is locked"), "application/json"),
    "401-auth": (401, b"You are not authenticated.", "text/plain"),
    "403-mlflow": (403, _json("PERMISSION_DENIED", "no READ on model"), "application/json"),
}


@pytest.fixture(autouse=True)
def _no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow retries a failed request 7 times with backoff (minutes); fail at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


@pytest.fixture(params=["closed-port", *FAILURES])
def failing_uri(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "closed-port":
        yield f"http://127.0.0.1:{free_port()}"
        return
    server = Answering(*FAILURES[request.param])
    try:
        yield server.uri
    finally:
        server.close()


READS: dict[str, Callable[[Registry], Any]] = {
    "by_alias": lambda r: r.by_alias(NAME, "champion"),
    "default_ref": lambda r: r.default_ref(NAME),
    "find_by_tag": lambda r: r.find_by_tag(NAME, "onnx.sha256", "ab" * 32),
    "versions": lambda r: r.versions(NAME),
    "version": lambda r: r.version(NAME, "1"),
    "model_tags": lambda r: r.model_tags(NAME),
}


@pytest.mark.parametrize("read", READS)
def test_a_failing_registry_raises_instead_of_reading_as_absent(
    failing_uri: str, read: str
) -> None:
    with pytest.raises(RegistryError) as err:
        READS[read](Registry(failing_uri))
    message = str(err.value)
    assert f"the MLflow registry at {failing_uri}" in message
    assert "has no version" not in message  # an outage is not "no such version"


def test_only_resource_does_not_exist_means_absent() -> None:
    """The same client over REST: MLflow's own "not found" answer is absence."""
    server = Answering(404, _json("RESOURCE_DOES_NOT_EXIST", "no such model"), "application/json")
    try:
        registry = Registry(server.uri)
        assert registry.by_alias(NAME, "champion") is None
        assert registry.default_ref(NAME) == (f"{NAME}@challenger", True)
        assert registry.find_by_tag(NAME, "onnx.sha256", "x") is None
        with pytest.raises(RegistryError, match="has no version 1"):
            registry.version(NAME, "1")
    finally:
        server.close()


def test_a_404_that_is_not_mlflow_is_an_error_too() -> None:
    """A wrong URL (a proxy's HTML 404 page) is not "no such model"."""
    server = Answering(404, b"<html>Not Found</html>", "text/html")
    try:
        with pytest.raises(RegistryError, match="ENDPOINT_NOT_FOUND"):
            Registry(server.uri).by_alias(NAME, "champion")
    finally:
        server.close()


# -- the commands ------------------------------------------------------------------------------


def cli(project: Project, uri: str, *args: str) -> Any:
    from modelyard.app import app

    return CliRunner().invoke(
        app, [*args, "--params", str(project.params_path)], env={"MLFLOW_TRACKING_URI": uri}
    )


@pytest.fixture
def down() -> Iterator[str]:
    """A registry that answers 503 to everything."""
    server = Answering(*FAILURES["503-proxy"])
    try:
        yield server.uri
    finally:
        server.close()


def test_champion_command_stops_and_keeps_the_pointer(project: Project, down: str) -> None:
    pointer = project.root / "data/reports/champion.json"
    pointer.parent.mkdir(parents=True)
    before = json.dumps({"model": NAME, "version": "3", "onnx_sha256": "ab" * 32})
    pointer.write_text(before)

    result = cli(project, down, "champion")

    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "champion failed: cannot read the registered model 'digits-classifier'" in out
    assert f"the MLflow registry at {down}" in out
    assert "none yet" not in out
    assert pointer.read_text() == before  # not rewritten to "no champion"


def test_build_stops_instead_of_falling_back_to_challenger(project: Project, down: str) -> None:
    result = cli(project, down, "build")

    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "build failed: cannot read the registered model 'digits-classifier'" in out
    assert "no @champion yet" not in out and "has no version with alias" not in out


@pytest.mark.parametrize(
    "args",
    [
        ("promote", NAME, "1", "--reviewer", "rui@example.com"),
        ("rollback", NAME, "--actor", "oncall"),
        ("registry", "reconcile", NAME),
    ],
    ids=["promote", "rollback", "reconcile"],
)
def test_review_gate_commands_stop_with_a_message(
    project: Project, down: str, args: tuple[str, ...]
) -> None:
    result = cli(project, down, *args)

    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    out = " ".join(result.output.split())
    assert f"the MLflow registry at {down}" in out
    assert "no champion" not in out


# -- the webhook receiver ----------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def deploy(self, name: str, version: str) -> str:
        self.sent.append((name, version))
        return "recorded"


EVENT = {
    "entity": "model_version_alias",
    "action": "created",
    "data": {"name": NAME, "alias": "champion", "version": "2"},
}


def test_handle_raises_rather_than_calling_the_event_stale(down: str) -> None:
    dispatcher = Recorder()
    with pytest.raises(RegistryError, match="cannot read the registered model"):
        handle(EVENT, Registry(down), dispatcher)
    assert dispatcher.sent == []


def test_receiver_reports_an_error_not_stale(down: str) -> None:
    dispatcher = Recorder()
    receiver = Receiver(Verifier(SECRET), lambda e: handle(e, Registry(down), dispatcher))
    server = receiver.serve("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body = json.dumps(EVENT).encode()
        stamp = str(int(time.time()))
        headers = {
            "X-MLflow-Delivery-Id": "d-outage",
            "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": sign(SECRET.encode(), "d-outage", stamp, body).decode(),
        }
        url = f"http://127.0.0.1:{server.server_address[1]}/webhook"
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as reply:
            assert reply.status == 200  # acknowledged; handled on the worker thread

        deadline = time.monotonic() + 60
        while not receiver.outcomes and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.shutdown()
        server.server_close()

    (outcome,) = receiver.outcomes
    assert outcome.startswith("error:RegistryError: cannot read the registered model"), outcome
    assert dispatcher.sent == []


def test_unreachable_port_is_an_error_for_the_champion_command(project: Project) -> None:
    """A stopped server: nothing listens on the port."""
    uri = f"http://127.0.0.1:{free_port()}"
    result = cli(project, uri, "champion")
    assert result.exit_code == 1, result.output
    assert "Connection refused" in result.output or "NewConnectionError" in result.output
    assert not (project.root / "data/reports/champion.json").exists()
