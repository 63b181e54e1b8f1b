"""The service as clients meet it: `modelyard serve` (a real `bentoml serve` of a built
Bento) on a free port, spoken to over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from services.inference_log import ReadStats, read
from tests.conftest import BIN, FAST_TRAIN, Project, free_port, kill_tree, new_project

pytestmark = pytest.mark.slow

KEYS = ("key-alpha", "key-beta")


def call(port: int, method: str, path: str, body: Any = None, key: str | None = KEYS[0],
         raw: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            payload = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        payload, status = e.read(), e.code
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode(errors="replace")


@dataclass
class Server:
    project: Project
    env: dict[str, str]
    log_dir: Path
    port: int = 0
    proc: subprocess.Popen[str] | None = None
    out_path: Path = Path("/dev/null")

    def start(self, wait: bool = True) -> None:
        self.port = free_port()
        # A file, not a pipe: an unread pipe fills up with access logs and stalls the server.
        self.out_path = self.log_dir.parent / f"server-{self.port}.out"
        with open(self.out_path, "w") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "modelyard"), "serve", "--params", str(self.project.params_path),
                 "--port", str(self.port)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited:\n{self.output()}")
            with contextlib.suppress(OSError):  # not listening yet
                if call(self.port, "GET", "/readyz", key=None)[0] == 200:
                    return
            time.sleep(0.3)
        raise AssertionError("server not ready in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            kill_tree(self.proc.pid, sig)
            self.proc.wait(timeout=20)

    def output(self) -> str:
        return self.out_path.read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("serving")
    project = new_project(base / "project")
    project.set_params(train=FAST_TRAIN)
    project.stages(
        "ingest", "prepare", "validate", "train", "export", "optimize", "evaluate", "register"
    )
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(BENTOML_HOME=str(base / "bentoml"), MODELYARD_API_KEYS=",".join(KEYS),
               MODELYARD_LOG_DIR=str(base / "log"))  # fmt: skip
    srv = Server(project, env, base / "log")
    srv.start()
    yield srv
    srv.stop()


def rows(project: Project, n: int) -> list[list[float]]:
    test = pd.read_parquet(project.root / "data/prepared/test.parquet")
    return test.drop(columns="label").head(n).to_numpy(dtype=float).tolist()


def test_predict_matches_the_registered_model(server: Server) -> None:
    import onnxruntime as ort

    batch = rows(server.project, 5)
    status, body = call(server.port, "POST", "/v1/predict", {"inputs": batch})
    assert status == 200, body
    assert body["model"] == "digits-classifier/1"
    sess = ort.InferenceSession(str(server.project.root / "data/models/model.onnx"))
    (probs,) = sess.run(["probabilities"], {"features": np.array(batch, np.float32)})
    assert [p["label"] for p in body["predictions"]] == probs.argmax(1).tolist()
    for pred, expected in zip(body["predictions"], probs, strict=True):
        assert np.allclose(pred["probabilities"], expected, atol=1e-5)
        assert pred["id"].startswith(body["request_id"])
    # Each row is in the inference log with everything monitoring needs.
    logged = {r["id"]: r for r in read(server.log_dir) if r.get("request_id") == body["request_id"]}
    assert len(logged) == 5
    first = logged[body["predictions"][0]["id"]]
    assert (
        first["model"] == "digits-classifier/1"
        and first["prediction"] == body["predictions"][0]["label"]
    )
    assert np.allclose(first["features"], batch[0]) and len(first["probabilities"]) == 10
    assert abs(first["ts"] - time.time()) < 60


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"body": {"inputs": [[0.0] * 63]}}, 422, "inputs[0]"),
        ({"body": {"inputs": [[99.0] + [0.0] * 63]}}, 422, "inputs[0][0]"),
        ({"body": {"inputs": [["a"] + [0.0] * 63]}}, 422, "inputs[0][0]"),
        ({"body": {"rows": [[0.0] * 64]}}, 422, "inputs"),
        ({"raw": b"{oops"}, 400, "body"),
        ({"body": {"inputs": [[0.0] * 64] * 257}}, 413, "inputs"),
    ],
    ids=["width", "range", "type", "field", "json", "batch"],
)
def test_bad_requests_get_4xx_with_the_field(
    server: Server, kwargs: dict, status: int, field: str
) -> None:
    got, body = call(server.port, "POST", "/v1/predict", **kwargs)
    assert got == status, body
    assert body["error"]["field"] == field and body["error"]["message"]


def test_oversized_body_is_refused_before_it_is_read(server: Server) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/predict")
    conn.putheader("Authorization", f"Bearer {KEYS[0]}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(50 * 1024 * 1024))  # 50 MB announced
    conn.endheaders()
    conn.send(b'{"inputs": [')  # ...and only the start of it sent
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 413 and body["error"]["field"] == "body"
    conn.close()


def test_wrong_method_and_path_are_4xx(server: Server) -> None:
    assert call(server.port, "GET", "/v1/predict")[0] == 405
    assert call(server.port, "POST", "/v1/nope", {"inputs": []})[0] == 404


def test_auth(server: Server) -> None:
    payload = {"inputs": rows(server.project, 1)}
    status, body = call(server.port, "POST", "/v1/predict", payload, key=None)
    assert (status, body["error"]["message"]) == (401, "missing API key")
    status, body = call(server.port, "POST", "/v1/predict", payload, key="key-gamma")
    assert (status, body["error"]["message"]) == (401, "invalid API key")
    assert call(server.port, "POST", "/v1/predict", payload, key=KEYS[1])[0] == 200  # rotated key
    assert call(server.port, "GET", "/v1/metadata", key=None)[0] == 401
    for open_path in ("/livez", "/readyz", "/metrics"):
        assert call(server.port, "GET", open_path, key=None)[0] == 200


def test_metadata_names_the_version(server: Server) -> None:
    status, meta = call(server.port, "GET", "/v1/metadata")
    assert status == 200
    (version,) = server.project.registry().versions("digits-classifier")
    assert (meta["name"], meta["version"]) == ("digits-classifier", version.version)
    assert meta["git_commit"] == version.tags["git.commit"]
    assert meta["data_md5"] == version.tags["dvc.data_md5"]
    assert meta["onnx_sha256"] == version.tags["onnx.sha256"]
    assert meta["variant"] == version.tags["model.variant"] and meta["metrics"]["accuracy"] > 0.5
    assert len(meta["features"]) == 64 and meta["classes"] == list(range(10))


def test_feedback_is_logged(server: Server) -> None:
    _, body = call(server.port, "POST", "/v1/predict", {"inputs": rows(server.project, 1)})
    pid = body["predictions"][0]["id"]
    status, fb = call(server.port, "POST", "/v1/feedback", {"id": pid, "label": 7})
    assert status == 200 and fb["recorded"] is True
    assert call(server.port, "POST", "/v1/feedback", {"id": pid, "label": 12})[0] == 422
    feedback = [r for r in read(server.log_dir) if r.get("type") == "feedback"]
    assert {"id": pid, "label": 7} in [{"id": r["id"], "label": r["label"]} for r in feedback]


def test_metrics_count_predictions_per_class(server: Server) -> None:
    call(server.port, "POST", "/v1/predict", {"inputs": rows(server.project, 3)})
    _, text = call(server.port, "GET", "/metrics", key=None)
    assert 'modelyard_predictions_total{label="' in text
    assert "modelyard_predict_seconds_bucket" in text
    assert 'modelyard_rejected_requests_total{reason="401"}' in text


def test_concurrent_requests_all_logged_then_kill_9_and_restart(server: Server) -> None:
    sample = rows(server.project, 20)

    def one(i: int) -> str:
        status, body = call(server.port, "POST", "/v1/predict", {"inputs": [sample[i % 20]]})
        assert status == 200, body
        return str(body["predictions"][0]["id"])

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(one, range(400)))
    logged = {r["id"] for r in read(server.log_dir) if r.get("type") == "prediction"}
    assert set(ids) <= logged

    server.stop(signal.SIGKILL)  # the whole tree, no chance to flush or close
    stats = ReadStats()
    after_crash = {r["id"] for r in read(server.log_dir, stats) if r.get("type") == "prediction"}
    assert set(ids) <= after_crash and stats.malformed == 0

    server.start()
    _, body = call(server.port, "POST", "/v1/predict", {"inputs": [sample[0]]})
    stats = ReadStats()
    final = {r["id"] for r in read(server.log_dir, stats) if r.get("type") == "prediction"}
    assert set(ids) | {body["predictions"][0]["id"]} <= final
    assert stats.malformed == 0


def test_tampered_model_refuses_to_start(server: Server) -> None:
    server.stop()
    store = Path(server.env["BENTOML_HOME"]) / "models" / "digits-classifier"
    (model_file,) = [p for p in store.glob("*/model.onnx")]
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    server.start(wait=False)
    assert server.proc is not None
    deadline = time.monotonic() + 60
    while server.proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # not listening is what we expect
            assert call(server.port, "GET", "/readyz", key=None)[0] != 200, (
                "served a tampered model"
            )
        time.sleep(0.5)
    if server.proc.poll() is None:
        server.stop()
    assert "refusing to start" in server.output()
