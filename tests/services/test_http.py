"""The service as clients (and attackers) meet it: `modelyard serve` (a real `bentoml serve`
of a built Bento) on a free port, spoken to over HTTP and raw sockets."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import select
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings

from services.inference_log import ReadStats, read
from tests.conftest import BIN, Project, copy_of, free_port, kill_tree

pytestmark = pytest.mark.slow

ID_KEY = "prediction-ids-" + "k" * 32
KEYS = ("key-alpha", "key-beta")
MAX_BODY = 2 * 1024 * 1024
HEADER_TIMEOUT = 2  # seconds: MODELYARD_HEADER_TIMEOUT_SECONDS of the test server
BODY_TIMEOUT = 2  # seconds: MODELYARD_BODY_TIMEOUT_SECONDS of the test server


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = KEYS[0],
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    status, payload, _ = call_full(port, method, path, body, key, raw, headers)
    return status, payload


def call_full(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    key: str | None = KEYS[0],
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """Status, body (parsed if JSON) and headers; redirects are not followed."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=sent
    )
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=30) as r:
            payload, status, got = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        payload, status, got = e.read(), e.code, dict(e.headers)
    try:
        return status, json.loads(payload), got
    except ValueError:
        return status, payload.decode(errors="replace"), got


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


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
                [
                    str(BIN / "modelyard"),
                    "serve",
                    "--params",
                    str(self.project.params_path),
                    "--port",
                    str(self.port),
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
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

    def workers(self) -> list[psutil.Process]:
        """BentoML's HTTP worker processes, found in this server's process tree."""
        assert self.proc is not None
        tree = psutil.Process(self.proc.pid).children(recursive=True)
        return [p for p in tree if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]


@pytest.fixture(scope="module")
def server(
    server_tier: None, evaluated_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("serving")
    # The session's trained digits project (tests.conftest.evaluated_template), optimized
    # again: optimize picks int8 (any int8 no slower than twice FP32 ties, and the smaller
    # file wins): the served file is then not the FP32 export, and tests can tell them apart.
    project = copy_of(evaluated_template, base / "project")
    project.set_params(
        optimize={
            "variants": ["fp32", "int8-static"],
            "tie_tolerance": 0.99,
            "accuracy_budget": 5.0,
        },
    )
    project.stages("optimize", "evaluate", "register")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # The server's own temp dir: what the build downloads there must not stay.
    (base / "tmp").mkdir()
    env.update(
        BENTOML_HOME=str(base / "bentoml"),
        MODELYARD_API_KEYS=",".join(KEYS),
        MODELYARD_LOG_DIR=str(base / "log"),
        TMPDIR=str(base / "tmp"),
        MODELYARD_HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        MODELYARD_ID_KEY=ID_KEY,
        MODELYARD_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
    )
    srv = Server(project, env, base / "log")
    srv.start()
    yield srv
    srv.stop()


def rows(project: Project, n: int) -> list[list[float]]:
    test = pd.read_parquet(project.root / "data/prepared/test.parquet")
    return test.drop(columns="label").head(n).to_numpy(dtype=float).tolist()


def test_predict_matches_the_model_it_serves(server: Server, tmp_path: Path) -> None:
    import onnxruntime as ort

    # The file the service serves is the registered version (optimize's choice, which
    # may be int8 or pruned), not the FP32 export: download it from the registry.
    (version,) = server.project.registry().versions("digits-classifier")
    folder = server.project.registry().download(version.name, version.version, tmp_path)
    served = (folder / "model.onnx").read_bytes()
    export = (server.project.root / "data/models/model.onnx").read_bytes()
    assert version.tags["model.variant"] == "int8-static" and served != export, (
        "the fixture should register optimize's int8 choice, not the FP32 export"
    )
    _, meta = call(server.port, "GET", "/v1/metadata")
    assert meta["onnx_sha256"] == hashlib.sha256(served).hexdigest() == version.tags["onnx.sha256"]
    assert meta["variant"] == version.tags["model.variant"]

    batch = rows(server.project, 5)
    status, body = call(server.port, "POST", "/v1/predict", {"inputs": batch})
    assert status == 200, body
    assert body["model"] == "digits-classifier/1"
    sess = ort.InferenceSession(served, providers=["CPUExecutionProvider"])
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


DEEP = 1000  # levels of nesting: Python's json module recursed into a 500 on this


@pytest.mark.parametrize(
    ("kwargs", "status", "field", "needle"),
    [
        ({"body": {"inputs": [[0.0] * 63]}}, 422, "inputs[0]", "expected 64"),
        ({"body": {"inputs": [[99.0] + [0.0] * 63]}}, 422, "inputs[0][0]", "training range"),
        ({"body": {"inputs": [["a"] + [0.0] * 63]}}, 422, "inputs[0][0]", "expected a number"),
        ({"body": {"inputs": [["1"] + [0.0] * 63]}}, 422, "inputs[0][0]", "got '1'"),
        ({"body": {"inputs": [[" 1_0 "] + [0.0] * 63]}}, 422, "inputs[0][0]", "got ' 1_0 '"),
        ({"body": {"rows": [[0.0] * 64]}}, 422, "inputs", "Field required"),
        ({"raw": b"{oops"}, 400, "body", "not valid JSON"),
        ({"body": {"inputs": [[0.0] * 64] * 257}}, 422, "inputs", "at most 256"),
        ({"raw": b"[" * DEEP + b"]" * DEEP}, 422, "body", "valid dictionary"),
        ({"raw": b'{"inputs": ' + b"[" * DEEP + b"]" * DEEP + b"}"}, 422, "inputs[0][0]", "number"),
        ({"raw": b"[" * 5000 + b"]" * 5000}, 400, "body", "nested too deeply"),
        ({"raw": b'{"inputs": [[' + b"9" * 400 + b", 0]]}"}, 400, "body", "number is too large"),
    ],
    ids=[
        "width",
        "range",
        "type",
        "numeric-string",
        "underscored-string",
        "field",
        "json",
        "batch",
        "deep-body",
        "deep-inputs",
        "too-deep",
        "400-digit-int",
    ],
)
def test_bad_requests_get_4xx_with_the_field(
    server: Server, kwargs: dict, status: int, field: str, needle: str
) -> None:
    got, body = call(server.port, "POST", "/v1/predict", **kwargs)
    assert got == status, body
    assert body["error"]["field"] == field and needle in body["error"]["message"], body


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


def _peak_rss(proc: psutil.Process) -> int:
    """The process's peak resident set since the last reset_peak(), in bytes."""
    text = Path(f"/proc/{proc.pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text)[1]) * 1024  # type: ignore[index]


def _reset_peak(proc: psutil.Process) -> None:
    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def test_chunked_body_is_cut_off_at_the_limit(server: Server) -> None:
    """50 MB sent chunked (no Content-Length): a 413 once the limit is passed, before the
    upload ends, and the worker's peak memory hardly moves."""
    workers = server.workers()
    assert workers
    for w in workers:
        _reset_peak(w)
    before = {w.pid: w.memory_info().rss for w in workers}

    total, chunk = 50 * 1024 * 1024, b"[" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {KEYS[0]}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    sent, answered = 0, False
    while sent < total:
        readable, writable, _ = select.select([sock], [sock], [], 30)
        if readable:
            answered = True
            break
        assert writable, "the server neither read nor answered for 30 s"
        try:
            sock.sendall(frame)
        except (BrokenPipeError, ConnectionResetError):
            answered = True  # closed on us: its answer is waiting to be read
            break
        sent += len(chunk)
    response = b""
    with contextlib.suppress(ConnectionResetError):
        while part := sock.recv(65536):
            response += part
    sock.close()

    assert answered and sent < total, f"the server read all {sent} bytes before answering"
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), response[:300]
    assert json.loads(body)["error"]["field"] == "body"
    growth = {w.pid: _peak_rss(w) - before[w.pid] for w in workers}
    assert max(growth.values()) < 20 * 1024 * 1024, f"worker peak RSS grew by {growth} bytes"


def test_wrong_method_and_path_are_json_4xx(server: Server) -> None:
    status, body, headers = call_full(server.port, "GET", "/v1/predict")
    assert (status, body["error"]["field"], headers["allow"]) == (405, "method", "POST")
    status, body, headers = call_full(server.port, "POST", "/livez", key=None)
    assert (status, body["error"]["field"], headers["allow"]) == (405, "method", "GET, HEAD")
    for method, path in [("POST", "/v1/nope"), ("GET", "/"), ("GET", "/static_content/x")]:
        status, body, headers = call_full(server.port, method, path, {"inputs": []})
        assert (status, body["error"]["field"]) == (404, "path"), (method, path, body)
        assert headers["content-type"] == "application/json"


def test_trailing_slash_is_not_redirected_to_the_callers_host(server: Server) -> None:
    for path in ("/v1/predict/", "/livez/", "/v1/metadata/"):
        status, body, headers = call_full(
            server.port, "POST", path, {"inputs": []}, headers={"Host": "evil.example"}
        )
        assert status == 404 and body["error"]["field"] == "path", (path, status, body)
        assert "location" not in {k.lower() for k in headers}
        assert "evil.example" not in json.dumps(body)


def test_slow_headers_are_cut_off(server: Server) -> None:
    """A client that sends its headers a line at a time (slowloris) is disconnected once
    MODELYARD_HEADER_TIMEOUT_SECONDS pass, long before it would have finished."""
    lines = 30 * HEADER_TIMEOUT * 4  # a line every 0.25 s: 30 times the limit
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    sent = 0
    closed = False
    while sent < lines:
        readable, _, _ = select.select([sock], [], [], 0.25)
        if readable:
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1024) == b"", "answered a request whose headers never ended"
            closed = True
            break
        try:
            sock.sendall(b"X-Slow-%d: y\r\n" % sent)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        sent += 1
    sock.close()
    assert closed, f"the server still waited after {sent} header lines"
    assert sent < lines


def test_a_body_that_arrives_too_slowly_is_a_counted_408(server: Server) -> None:
    """Headers at once, then 10 of the 1,000 bytes the body announces, then nothing: a
    408 in the API's JSON error shape after MODELYARD_BODY_TIMEOUT_SECONDS, counted with
    its status (issue 22: BentoML's own 504 after 10 s, uncounted)."""

    def counted() -> float:
        _, text = call(server.port, "GET", "/metrics", key=None)
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("modelyard_http_requests_total{")
            and 'route="/v1/predict"' in line
            and 'status="408"' in line
        )

    before = counted()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(
        b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {KEYS[0]}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        + b'{"inputs":'
    )
    response = b""
    with contextlib.suppress(ConnectionResetError):
        while part := sock.recv(65536):
            response += part
    sock.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), response[:300]
    error = json.loads(body)["error"]
    assert error["field"] == "body"
    assert f"did not arrive within {BODY_TIMEOUT} s" in error["message"]
    assert counted() == before + 1


def test_a_gzip_body_is_a_415_not_read_as_plain(server: Server) -> None:
    import gzip

    body = gzip.compress(json.dumps({"inputs": [[0.0] * 64]}).encode())
    response = httpx.post(
        f"http://127.0.0.1:{server.port}/v1/predict",
        content=body,
        headers={
            "Authorization": f"Bearer {KEYS[0]}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
        timeout=30,
    )
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["field"] == "content-encoding" and "uncompressed" in error["message"]


def test_unknown_paths_do_not_grow_the_metrics(server: Server) -> None:
    def series() -> set[str]:
        _, text = call(server.port, "GET", "/metrics", key=None)
        return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}

    # The first 404 and the first scrape may add their own series (route="other", "/metrics").
    call(server.port, "GET", "/warm-up-404", key=None)
    series()
    before = series()
    rng = random.Random(0)
    paths = [f"/{rng.getrandbits(64):x}/{rng.getrandbits(32):x}" for _ in range(300)]
    for i, path in enumerate(paths):
        method = ("GET", "POST", "DELETE")[i % 3]
        assert call(server.port, method, path, key=None)[0] == 404
    after = series()
    assert after == before, f"new series: {sorted(after - before)[:5]}"
    _, text = call(server.port, "GET", "/metrics", key=None)
    assert not any(path in text for path in paths)


def test_auth(server: Server) -> None:
    payload = {"inputs": rows(server.project, 1)}
    status, body = call(server.port, "POST", "/v1/predict", payload, key=None)
    assert (status, body["error"]["message"]) == (401, "missing API key")
    status, body = call(server.port, "POST", "/v1/predict", payload, key="key-gamma")
    assert (status, body["error"]["message"]) == (401, "invalid API key")
    assert call(server.port, "POST", "/v1/predict", payload, key=KEYS[1])[0] == 200  # rotated key
    assert call(server.port, "GET", "/v1/metadata", key=None)[0] == 401
    for open_path in ("/livez", "/readyz", "/metrics", "/docs.json"):
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
    assert (meta["max_batch"], meta["max_body_bytes"], meta["auth"]) == (256, MAX_BODY, "api-key")


def test_feedback_is_logged(server: Server) -> None:
    _, body = call(server.port, "POST", "/v1/predict", {"inputs": rows(server.project, 1)})
    pid = body["predictions"][0]["id"]
    status, fb = call(server.port, "POST", "/v1/feedback", {"id": pid, "label": 7})
    assert status == 200 and fb == {"id": pid, "label": 7, "recorded": True, "verified": True}
    feedback = [r for r in read(server.log_dir) if r.get("type") == "feedback"]
    logged = [{"id": r["id"], "label": r["label"], "verified": r["verified"]} for r in feedback]
    assert {"id": pid, "label": 7, "verified": True} in logged


def test_feedback_for_an_id_the_service_never_issued_is_a_404_and_not_logged(
    server: Server,
) -> None:
    """Issue 22: with MODELYARD_ID_KEY the service recognises its own ids (an HMAC tag
    in the id): a made-up or altered id is a JSON 404, counted, and nothing is logged."""
    _, body = call(server.port, "POST", "/v1/predict", {"inputs": rows(server.project, 1)})
    real = body["predictions"][0]["id"]
    altered = real[:20] + ("0" if real[20] != "0" else "1") + real[21:]
    _, before = call(server.port, "GET", "/metrics", key=None)
    for made_up in (altered, "0" * 32 + "-0", "anything"):
        status, err = call(server.port, "POST", "/v1/feedback", {"id": made_up, "label": 7})
        assert status == 404, (made_up, err)
        assert err["error"]["field"] == "id" and "never issued" in err["error"]["message"]
    _, after = call(server.port, "GET", "/metrics", key=None)
    rejected = ("modelyard_rejected_requests", "reason", "404")
    assert counter(after, *rejected) - counter(before, *rejected) == 3
    ids_logged = {r["id"] for r in read(server.log_dir) if r.get("type") == "feedback"}
    assert not {altered, "0" * 32 + "-0", "anything"} & ids_logged


def counter(metrics: str, name: str, label: str, value: str) -> float:
    """One Prometheus counter's value in a /metrics text (0 when it is not there yet)."""
    found = re.search(rf'^{name}_total\{{{label}="{value}"\}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("label", [12, False, True, 3.0, "7", None], ids=repr)
def test_feedback_label_must_be_a_class_of_the_same_type(server: Server, label: Any) -> None:
    """`false` is not class 0, `3.0` not class 3, "7" not class 7: 422, nothing logged."""
    pid = f"strict-{label!r}"
    status, body = call(server.port, "POST", "/v1/feedback", {"id": pid, "label": label})
    assert status == 422 and body["error"]["field"] == "label", body
    assert not [r for r in read(server.log_dir) if r.get("id") == pid]


def _samples(port: int, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples named ``name`` on /metrics: their sorted labels -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    _, text = call(port, "GET", "/metrics", key=None)
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_metrics_count_predictions_per_class(server: Server) -> None:
    predictions, rejected = "modelyard_predictions_total", "modelyard_rejected_requests_total"
    before = _samples(server.port, predictions)
    refused_before = _samples(server.port, rejected).get((("reason", "401"),), 0.0)
    served_before = sum(_samples(server.port, "modelyard_predict_seconds_count").values())

    _, body = call(server.port, "POST", "/v1/predict", {"inputs": rows(server.project, 20)})
    assert (
        call(server.port, "POST", "/v1/predict", {"inputs": rows(server.project, 1)}, key=None)[0]
        == 401
    )

    after = _samples(server.port, predictions)
    expected: dict[tuple[tuple[str, str], ...], float] = {}
    for pred in body["predictions"]:
        key = (("label", str(pred["label"])), ("model", "digits-classifier/1"))
        expected[key] = expected.get(key, 0) + 1
    grown = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert grown == expected  # one count per predicted row, under its class
    assert _samples(server.port, rejected)[(("reason", "401"),)] == refused_before + 1
    served = sum(_samples(server.port, "modelyard_predict_seconds_count").values())
    assert served == served_before + 1  # one timed request (the refused one is not)


def test_docs_json_describes_the_api(server: Server) -> None:
    status, doc = call(server.port, "GET", "/docs.json", key=None)
    assert status == 200 and doc["openapi"].startswith("3.1")
    assert {"/v1/predict", "/v1/feedback", "/v1/metadata"} <= set(doc["paths"])
    _, meta = call(server.port, "GET", "/v1/metadata")
    schemas = doc["components"]["schemas"]
    row = schemas["Row"]
    assert [f["title"] for f in row["prefixItems"]] == meta["features"]
    assert all((f["minimum"], f["maximum"]) == (0, 16) for f in row["prefixItems"])
    assert row["items"] is False and row["minItems"] == 64
    assert schemas["PredictRequest"]["properties"]["inputs"]["maxItems"] == 256
    assert schemas["FeedbackRequest"]["properties"]["label"]["enum"] == meta["classes"]
    predict = doc["paths"]["/v1/predict"]["post"]
    assert {"200", "400", "401", "413", "422"} <= set(predict["responses"])
    assert predict["security"] == [{"bearer": []}, {"apiKey": []}]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert str(MAX_BODY) in doc["info"]["description"]


def test_the_service_keeps_to_its_openapi_document(server: Server) -> None:
    """Schemathesis reads /docs.json and sends every operation it describes generated
    requests, valid and invalid (300 in all): no 5xx, and every answer is one the
    document allows (status, content type, body schema, Allow header on 405)."""
    from schemathesis import GenerationMode

    base = f"http://127.0.0.1:{server.port}"
    schema = schemathesis.openapi.from_url(f"{base}/docs.json")
    exercised: set[str] = set()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @settings(
            max_examples=150,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=schema.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            exercised.add(f"{case.method} {case.path}")
            case.call_and_validate(
                base_url=base, headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=30
            )

        check()
    assert {"POST /v1/predict", "POST /v1/feedback", "GET /v1/metadata"} <= exercised


def test_inference_log_is_private_and_downloads_are_removed(server: Server) -> None:
    status, _ = call(server.port, "POST", "/v1/predict", {"inputs": rows(server.project, 1)})
    assert status == 200  # a log file of its own, whichever tests ran before
    assert stat.S_IMODE(server.log_dir.stat().st_mode) == 0o700
    files = list(server.log_dir.glob("*.jsonl"))
    assert files and {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}
    # `modelyard serve` built the Bento: it downloaded the model to its temp dir.
    assert not list(Path(server.env["TMPDIR"]).glob("modelyard-model-*"))


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


# -- the gateway: named keys, limits, load shedding (issue 22, section 3) ------------------


def keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "modelyard"), "keys", *args], capture_output=True, text=True, timeout=60
    )


def create_key(file: Path, name: str, *options: str) -> str:
    made = keys_cli("create", name, "--file", str(file), *options)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def slow_request(port: int, key: str, body: bytes) -> socket.socket:
    """A predict whose headers and first half of the body are sent; the rest is not yet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[: len(body) // 2])
    return sock


def test_named_keys_limits_and_shedding_over_http(server: Server, tmp_path: Path) -> None:
    """`modelyard keys` makes the file the running service reads: scopes (403), a rate
    (429 + Retry-After), a daily quota (429), a revocation seen without a restart (401),
    MODELYARD_API_KEYS still working, counts by key name, and past MODELYARD_MAX_INFLIGHT
    a 503 at once with /readyz not ready until the worker has caught up."""
    file = tmp_path / "api-keys.json"
    limited = create_key(
        file, "http-limited", "--scope", "predict", "--rate", "1/min", "--burst", "2"
    )
    reader = create_key(file, "http-reader", "--scope", "metadata", "--quota", "2/day")
    leaving = create_key(file, "http-leaving")
    assert all(k not in file.read_text() for k in (limited, reader, leaving))
    server.stop()
    server.env.update(MODELYARD_API_KEY_FILE=str(file), MODELYARD_MAX_INFLIGHT="1")
    payload = {"inputs": rows(server.project, 1)}
    try:
        server.start()
        assert call(server.port, "POST", "/v1/predict", payload)[0] == 200  # MODELYARD_API_KEYS
        assert [call(server.port, "GET", "/v1/metadata", key=reader)[0] for _ in "ab"] == [200] * 2
        status, body, headers = call_full(server.port, "GET", "/v1/metadata", key=reader)
        assert (status, body["error"]["field"]) == (429, "quota"), body
        assert int(headers["retry-after"]) >= 1
        status, body = call(server.port, "POST", "/v1/predict", payload, key=reader)
        assert status == 403 and "may not call predict" in body["error"]["message"], body
        statuses = [
            call(server.port, "POST", "/v1/predict", payload, key=limited)[0] for _ in "abc"
        ]
        assert statuses == [200, 200, 429]
        status, body, headers = call_full(server.port, "POST", "/v1/predict", payload, key=limited)
        assert (status, body["error"]["field"]) == (429, "rate") and int(headers["retry-after"]) > 1

        assert call(server.port, "POST", "/v1/predict", payload, key=leaving)[0] == 200
        assert keys_cli("revoke", "http-leaving", "--file", str(file)).returncode == 0
        deadline = time.monotonic() + 10  # a bound, not a measurement: re-read within ~1 s
        while call(server.port, "POST", "/v1/predict", payload, key=leaving)[0] != 401:
            assert time.monotonic() < deadline, "the revoked key is still accepted"
            time.sleep(0.2)

        # One request in flight (its body half sent) is the bound: the next is shed.
        body_bytes = json.dumps(payload).encode()
        with slow_request(server.port, KEYS[0], body_bytes) as pending:
            time.sleep(0.3)  # the service has read the headers and waits for the body
            status, body, headers = call_full(server.port, "POST", "/v1/predict", payload)
            assert (status, body["error"]["field"], headers["retry-after"]) == (503, "load", "1")
            assert call(server.port, "GET", "/readyz", key=None)[0] == 503
            pending.sendall(body_bytes[len(body_bytes) // 2 :])
            assert pending.recv(4096).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 10
        while call(server.port, "GET", "/readyz", key=None)[0] != 200:
            assert time.monotonic() < deadline, "/readyz stays not ready after the load is gone"
            time.sleep(0.2)

        counts = _samples(server.port, "modelyard_api_key_requests_total")
        assert counts[(("key", "http-limited"), ("outcome", "accepted"))] == 2
        assert counts[(("key", "http-limited"), ("outcome", "rate"))] == 2
        assert counts[(("key", "http-reader"), ("outcome", "quota"))] == 1
        assert counts[(("key", "http-reader"), ("outcome", "scope"))] == 1
        assert counts[(("key", "env-1"), ("outcome", "accepted"))] >= 2
        shed = _samples(server.port, "modelyard_rejected_requests_total")[(("reason", "503"),)]
        assert shed == 1
        _, text = call(server.port, "GET", "/metrics", key=None)
        assert not [k for k in (limited, reader, leaving, *KEYS) if k in text]
    finally:
        server.stop()  # the next test starts it as it needs it
        del server.env["MODELYARD_API_KEY_FILE"], server.env["MODELYARD_MAX_INFLIGHT"]


def test_an_unreadable_key_file_refuses_to_start(server: Server, tmp_path: Path) -> None:
    server.stop()
    server.env["MODELYARD_API_KEY_FILE"] = str(tmp_path / "nowhere.json")
    try:
        out = refused(server)
    finally:
        del server.env["MODELYARD_API_KEY_FILE"]
    assert "MODELYARD_API_KEY_FILE" in out and "create one with `modelyard keys create" in out


# -- starts that must be refused, and the one that is open -----------------------------------


def refused(server: Server) -> str:
    """Start the server, expect `modelyard serve` to give up by itself: its output."""
    server.start(wait=False)
    assert server.proc is not None
    try:
        code = server.proc.wait(timeout=180)  # a bound, not a measurement: it must not hang
    except subprocess.TimeoutExpired:
        server.stop()
        raise AssertionError(
            f"`modelyard serve` kept running a service that refused to start:\n{server.output()}"
        ) from None
    out = server.output()
    assert code == 1, out
    home = server.env["BENTOML_HOME"]
    assert not [p.pid for p in psutil.process_iter() if _environ(p).get("BENTOML_HOME") == home]
    return " ".join(out.split())


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return {}


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "512k") -> Iterator[Path]:
    """A tmpfs of ``size`` at ``folder``: a real file system that fills up (root only)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Write a file until the file system refuses (ENOSPC); the file, to free it later."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    with contextlib.suppress(OSError), open(filler, "ab", buffering=0) as out:
        while True:  # the last partial block too: not even one byte fits
            out.write(b"\0")
    return filler


def log_errors(port: int) -> float:
    _, text = call(port, "GET", "/metrics", key=None)
    return counter(text, "modelyard_inference_log_errors", "kind", "ENOSPC")


def test_a_full_log_disk_costs_no_prediction_and_refuses_feedback_until_it_has_room(
    server: Server,
) -> None:
    """The inference log on a file system that fills up: predictions are still answered
    (200, the same answer), counted as log errors and shown in /v1/metadata; a feedback
    label that cannot be kept is a 503 with Retry-After, never `recorded: true`. Once
    there is room again, both are logged as before."""
    server.stop()
    saved = server.env["MODELYARD_LOG_DIR"], server.log_dir
    full = server.log_dir.parent / "full-disk"
    try:
        with small_disk(full):
            server.env["MODELYARD_LOG_DIR"], server.log_dir = str(full), full
            server.start()
            payload = {"inputs": rows(server.project, 3)}
            status, before = call(server.port, "POST", "/v1/predict", payload)
            assert status == 200
            filler = fill(full)

            # The log file's last page may still hold a record or two: a few requests,
            # every one answered, until the log has failed one.
            for _ in range(5):
                status, answered = call(server.port, "POST", "/v1/predict", payload)
                assert status == 200, answered
                labels = [p["label"] for p in answered["predictions"]]
                assert labels == [p["label"] for p in before["predictions"]]
                if log_errors(server.port) >= 1:
                    break
            assert log_errors(server.port) >= 1
            _, meta = call(server.port, "GET", "/v1/metadata")
            degraded = meta["inference_log"]
            assert degraded["status"] == "degraded" and "ENOSPC" in degraded["last_error"]
            pid = answered["predictions"][0]["id"]
            status, body, headers = call_full(
                server.port, "POST", "/v1/feedback", {"id": pid, "label": labels[0]}
            )
            assert status == 503 and body["error"]["field"] == "log", body
            assert "send it again" in body["error"]["message"]
            assert headers.get("retry-after") == "30"
            labels_kept = {r["id"] for r in read(full) if r.get("type") == "feedback"}
            assert pid not in labels_kept  # not kept, and not claimed to be

            filler.unlink()  # room again
            status, again = call(server.port, "POST", "/v1/predict", payload)
            assert status == 200
            status, fb = call(server.port, "POST", "/v1/feedback", {"id": pid, "label": 1})
            assert status == 200 and fb["recorded"] is True
            assert "inference_log" not in call(server.port, "GET", "/v1/metadata")[1]
            records = list(read(full, stats := ReadStats()))
            assert again["predictions"][0]["id"] in {r["id"] for r in records}
            assert pid in {r["id"] for r in records if r.get("type") == "feedback"}
            assert "inference log: a write failed" in server.output()
            server.stop()
    finally:
        server.stop()
        server.env["MODELYARD_LOG_DIR"], server.log_dir = saved
    print(f"\nfull disk: {stats.records} records read back, {stats.malformed} malformed")


def test_api_keys_unset_means_open_with_a_warning(server: Server) -> None:
    server.stop()
    saved = server.env.pop("MODELYARD_API_KEYS")
    try:
        server.start()
        payload = {"inputs": rows(server.project, 1)}
        assert call(server.port, "POST", "/v1/predict", payload, key=None)[0] == 200
        assert call(server.port, "GET", "/v1/metadata", key=None)[1]["auth"] == "disabled"
        assert "neither MODELYARD_API_KEYS nor MODELYARD_API_KEY_FILE is set" in server.output()
    finally:
        server.stop()
        server.env["MODELYARD_API_KEYS"] = saved


@pytest.mark.parametrize("keys", [" , ", ""], ids=["blanks-and-commas", "empty"])
def test_api_keys_set_but_empty_refuse_to_start(server: Server, keys: str) -> None:
    server.stop()
    saved, server.env["MODELYARD_API_KEYS"] = server.env["MODELYARD_API_KEYS"], keys
    try:
        out = refused(server)
    finally:
        server.env["MODELYARD_API_KEYS"] = saved
    assert "the service refused to start: MODELYARD_API_KEYS is set but holds no key" in out
    assert "is not set" not in out


def test_a_model_rewritten_with_its_contract_refuses_to_start(server: Server) -> None:
    """An attacker who can write the model's folder replaces model.onnx with another valid
    model and rewrites every hash beside it (contract.json, the model store's record).
    The Bento's own label still holds the registry's sha256: no start, exit 1 at once."""
    import onnx

    server.stop()
    store = Path(server.env["BENTOML_HOME"]) / "models" / "digits-classifier"
    (model_file,) = store.glob("*/model.onnx")
    model = onnx.load(str(model_file))
    model.doc_string = "not the registered model"
    onnx.save(model, str(model_file))
    forged = hashlib.sha256(model_file.read_bytes()).hexdigest()
    contract_file = model_file.with_name("contract.json")
    contract = json.loads(contract_file.read_text())
    registered, contract["onnx_sha256"] = contract["onnx_sha256"], forged
    contract_file.write_text(json.dumps(contract))
    manifest_file = model_file.with_name("model.yaml")
    manifest = yaml.safe_load(manifest_file.read_text())
    manifest["metadata"]["onnx_sha256"] = forged
    manifest["labels"]["onnx_sha256"] = forged
    manifest_file.write_text(yaml.safe_dump(manifest))

    out = refused(server)
    assert "the service refused to start" in out and f"has sha256 {forged}" in out
    assert f"records {registered}" in out and "the Bento digits-classifier:v1-" in out
