"""Shadow evaluation (`modelyard serve --shadow`): the challenger scores what the champion
answered, off the response path, and its answers go to the inference log only.

In process: ``ShadowScorer`` with real ONNX Runtime sessions of small models made here
and a real InferenceLog (a full queue drops and counts, ``close`` scores what is left, a
challenger that raises is recorded, counted and logged once).

End to end: one registered project, three real `modelyard serve` on free ports, started
together: no shadow; shadow = the same model registered again (v2); shadow = v3, a model
registered with the contract's 64 features whose input is 32 wide, so ONNX Runtime
raises on every call. All three get the same requests, valid and invalid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from services.inference_log import InferenceLog, read
from tests.conftest import Project
from tests.services.live import API_KEY, Proc, api_server, registered

NAME = "digits-classifier"
CLASSES = list(range(10))


# -- small real ONNX models ----------------------------------------------------------------


def tiny_onnx(width: int, classes: int, *, slow_steps: int = 0) -> tuple[bytes, np.ndarray]:
    """A linear classifier (input ``features`` [N, width] -> ``probabilities``) and its
    weights. ``slow_steps`` adds a branch that costs about the same whatever N (64 x 1024
    matrix products, each ~1 ms here) and adds 0 to the probabilities: a slow challenger
    with the same answers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(width, classes)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    out = "raw" if slow_steps else "probabilities"
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [out], axis=1),
    ]
    if slow_steps:
        hidden = 1024
        inits += [
            numpy_helper.from_array(np.array([64, 1], np.int64), "rows"),
            numpy_helper.from_array(rng.normal(size=(1, hidden)).astype(np.float32), "a"),
            numpy_helper.from_array(
                (rng.normal(size=(hidden, hidden)) / np.sqrt(hidden)).astype(np.float32), "b"
            ),
            numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero"),
        ]
        nodes += [
            helper.make_node("ReduceSum", ["features"], ["s"], keepdims=1),
            helper.make_node("Expand", ["s", "rows"], ["tiled"]),
            helper.make_node("MatMul", ["tiled", "a"], ["h0"]),
        ]
        for i in range(slow_steps):
            nodes.append(helper.make_node("MatMul", [f"h{i}", "b"], [f"m{i}"]))
            nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
        nodes += [
            helper.make_node("ReduceSum", [f"h{slow_steps}"], ["z"], keepdims=1),
            helper.make_node("Mul", ["z", "zero"], ["nothing"]),
            helper.make_node("Add", ["raw", "nothing"], ["probabilities"]),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model.SerializeToString(), w


def scorer(model: bytes, log_dir: Path, *, name: str, queue_size: int) -> Any:
    import onnxruntime as ort

    from services.shadow import ShadowScorer

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return ShadowScorer(
        session,
        model=name,
        champion=f"{NAME}/1",
        classes=CLASSES,
        log=InferenceLog(log_dir),
        queue_size=queue_size,
    )


def counter(name: str, **labels: str) -> float:
    """A counter's value in this process's Prometheus registry (0 before its first use)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def shadows(log_dir: Path) -> list[dict[str, Any]]:
    return [r for r in read(log_dir) if r.get("type") == "shadow"]


# -- in process: the queue, the drain, a challenger that raises ------------------------------


def test_a_full_queue_drops_and_counts_and_close_scores_the_rest(tmp_path: Path) -> None:
    """Queue of 1 and a challenger that takes ~20 ms a call: of 30 requests submitted at
    once, most are dropped (counted, never waited for); close() then scores every
    accepted one before it returns, with the challenger's own labels."""
    model, w = tiny_onnx(64, 10, slow_steps=20)
    shadow = scorer(model, tmp_path / "log", name=f"{NAME}/slow", queue_size=1)
    dropped_before = counter("modelyard_shadow_dropped_total", model=f"{NAME}/slow")
    rng = np.random.default_rng(1)
    sent: dict[str, tuple[int, str]] = {}  # id -> (challenger's label, champion's label)
    for i in range(30):
        x = rng.uniform(0, 16, (2, 64)).astype(np.float32)
        ids = [f"r{i}-0", f"r{i}-1"]
        champion = ["a", "b"]  # what the champion said; the shadow record repeats it
        shadow.submit(x, ids, champion, 1000.0 + i)
        for pid, label, said in zip(ids, (x @ w).argmax(1).tolist(), champion, strict=True):
            sent[pid] = (label, said)
    shadow.close(timeout=120)

    records = shadows(tmp_path / "log")
    dropped = counter("modelyard_shadow_dropped_total", model=f"{NAME}/slow") - dropped_before
    assert dropped > 0, "a queue of 1 took 30 requests while the challenger was busy"
    assert records, "close() returned before the accepted requests were scored"
    assert len(records) + dropped == len(sent)
    for r in records:
        label, said = sent[r["id"]]
        row = int(r["id"].split("-")[0][1:])
        assert r == {
            "type": "shadow",
            "id": r["id"],
            "ts": 1000.0 + row,
            "model": f"{NAME}/slow",
            "champion": f"{NAME}/1",
            "prediction": label,
            "champion_prediction": said,
            "error": None,
        }
    # Closed: a late request is dropped and counted, not queued behind the end.
    shadow.submit(np.zeros((1, 64), np.float32), ["late-0"], ["a"], 2000.0)
    assert counter("modelyard_shadow_dropped_total", model=f"{NAME}/slow") == (
        dropped_before + dropped + 1
    )
    assert len(shadows(tmp_path / "log")) == len(records)


@pytest.mark.parametrize(
    ("width", "classes", "kind", "needle"),
    [
        (32, 10, "InvalidArgument", "Got invalid dimensions for input: features"),
        (64, 3, "ValueError", "probabilities of shape (2, 3) for 2 rows; expected (2, 10)"),
    ],
    ids=["input-width", "output-shape"],
)
def test_a_challenger_that_fails_is_recorded_counted_and_logged_once(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    width: int,
    classes: int,
    kind: str,
    needle: str,
) -> None:
    model, _ = tiny_onnx(width, classes)
    name = f"{NAME}/bad-{width}-{classes}"
    shadow = scorer(model, tmp_path / "log", name=name, queue_size=100)
    before = counter("modelyard_shadow_errors_total", model=name, kind=kind)
    with caplog.at_level(logging.WARNING, logger="modelyard.service"):
        for i in range(5):
            shadow.submit(np.ones((2, 64), np.float32), [f"q{i}-0", f"q{i}-1"], [3, 4], 1.0)
        shadow.close(timeout=60)
        shadow.submit(np.ones((2, 64), np.float32), ["after-0", "after-1"], [3, 4], 1.0)

    records = shadows(tmp_path / "log")
    assert sorted(r["id"] for r in records) == sorted(f"q{i}-{j}" for i in range(5) for j in (0, 1))
    for r in records:
        assert r["prediction"] is None and r["champion_prediction"] in (3, 4)
        assert r["error"].startswith(f"{kind}: ") and needle in r["error"], r["error"]
    assert counter("modelyard_shadow_errors_total", model=name, kind=kind) == before + 10
    warned = [m for m in caplog.messages if m.startswith(f"shadow: {name} failed")]
    assert len(warned) == 1 and needle in warned[0], caplog.messages


# -- end to end: three real services -------------------------------------------------------


@dataclass
class Served:
    project: Project
    base: Path
    servers: dict[str, Proc]  # "off" (no shadow), "on" (v2), "broken" (v3)

    def log_dir(self, label: str) -> Path:
        return self.base / label / "log"


def register_narrow(project: Project, metadata: dict[str, Any] | None = None) -> str:
    """Register a version whose MLmodel carries v1's feature schema (64 features; or
    ``metadata``) but whose ONNX input is 32 wide: it passes every build check and fails
    on every call."""
    import mlflow
    import onnx

    from pipelines import tracking

    registry = project.registry()
    metadata = metadata or registry.model_metadata(NAME, "1")
    model, _ = tiny_onnx(32, 10)
    mlflow.set_tracking_uri(tracking.tracking_uri(project.root))
    try:
        with mlflow.start_run() as run:
            info = mlflow.onnx.log_model(
                onnx.load_from_string(model),
                name="model",
                metadata=metadata,
                save_as_external_data=False,
                onnx_execution_providers=["CPUExecutionProvider"],
            )
        version = registry.register(NAME, info.model_uri, run.info.run_id, tags={})
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    sha = registry.file_sha256(NAME, version.version)
    registry.set_version_tags(NAME, version.version, {"onnx.sha256": sha, "model.variant": "fp32"})
    return version.version


@pytest.fixture(scope="module")
def served(
    server_tier: None, trained_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("shadow")
    started = time.monotonic()
    project = registered(base / "project", "digits", template=trained_template)
    registry = project.registry()
    (v1,) = registry.versions(NAME)
    assert registry.copy_version(NAME, "1", NAME, tags=v1.tags).version == "2"
    assert register_narrow(project) == "3"
    print(f"shadow fixture: 3 versions registered in {time.monotonic() - started:.0f} s")
    servers: dict[str, Proc] = {}
    for label, shadow in (("off", None), ("on", f"{NAME}/2"), ("broken", f"{NAME}/3")):
        server = api_server(project, base / label)
        server.cmd += ["--model", f"{NAME}/1", *(["--shadow", shadow] if shadow else [])]
        servers[label] = server
    try:
        with ThreadPoolExecutor(len(servers)) as pool:  # three builds and starts at once
            list(pool.map(lambda s: s.start(timeout=300), servers.values()))
        print(f"shadow fixture: 3 services ready after {time.monotonic() - started:.0f} s")
        yield Served(project, base, servers)
    finally:
        for server in servers.values():
            server.stop()


def post(server: Proc, body: Any = None, *, raw: bytes | None = None, key: str | None = API_KEY):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    content = raw if raw is not None else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/v1/predict", content=content, headers=headers, timeout=30)
    try:
        return response.status_code, response.json()
    except ValueError:  # not JSON (a 500 from a crash): compared as text
        return response.status_code, response.text


def rows_of(project: Project, n: int) -> list[list[float]]:
    test = pd.read_parquet(project.root / "data/prepared/test.parquet")
    return test.drop(columns="label").head(n).to_numpy(dtype=float).tolist()


def requests(project: Project) -> list[dict[str, Any]]:
    """The same traffic for every server: valid batches of several sizes and bad requests."""
    x = rows_of(project, 120)
    valid: list[dict[str, Any]] = [
        {"body": {"inputs": x[i : i + n]}} for i, n in ((0, 1), (1, 5), (6, 64), (70, 1))
    ]
    valid += [{"body": {"inputs": [row]}} for row in x[71:101]]
    bad: list[dict[str, Any]] = [
        {"body": {"inputs": [[0.0] * 63]}},  # 422: width
        {"body": {"inputs": [[99.0] + [0.0] * 63]}},  # 422: training range
        {"body": {"inputs": [[0.0] * 64] * 257}},  # 422: too many rows
        {"raw": b"{oops"},  # 400
        {"body": {"inputs": x[:1]}, "key": None},  # 401
        {"body": {"inputs": x[:1]}, "key": "not-the-key"},  # 401
    ]
    return valid[:20] + bad + valid[20:]


def answers(server: Proc, traffic: list[dict[str, Any]]) -> list[tuple[int, Any]]:
    """Status and body of each request, minus what differs on every call (the ids)."""
    out = []
    for req in traffic:
        status, body = post(
            server, req.get("body"), raw=req.get("raw"), key=req.get("key", API_KEY)
        )
        if status == 200:
            body = {
                "model": body["model"],
                "predictions": [
                    {"label": p["label"], "probabilities": p["probabilities"]}
                    for p in body["predictions"]
                ],
            }
        out.append((status, body))
    return out


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    """Poll until ``check()`` holds (the shadow thread writes after the answer is sent)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def logged(served: Served, label: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The server's prediction records and shadow records, by id."""
    preds, shadow = {}, {}
    for r in read(served.log_dir(label)):
        if r.get("type") == "prediction":
            preds[r["id"]] = r
        elif r.get("type") == "shadow":
            shadow[r["id"]] = r
    return preds, shadow


def metric(server: Proc, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_shadow_changes_no_answer_and_no_status(served: Served) -> None:
    """The same requests, valid and invalid, to the champion alone, with a shadow that
    agrees and with a shadow that raises on every call: the same statuses, labels and
    probabilities from all three."""
    traffic = requests(served.project)
    off = answers(served.servers["off"], traffic)
    assert [s for s, _ in off].count(200) == 34
    assert sorted({s for s, _ in off}) == [200, 400, 401, 422]
    assert all(b["model"] == f"{NAME}/1" for s, b in off if s == 200)
    for label in ("on", "broken"):
        assert answers(served.servers[label], traffic) == off, label


def test_shadow_records_hold_both_answers_for_every_row(served: Served) -> None:
    on, key = served.servers["on"], {"X-API-Key": API_KEY}
    meta = httpx.get(f"{on.url}/v1/metadata", headers=key).json()
    v2 = served.project.registry().version(NAME, "2")
    assert meta["version"] == "1" and meta["shadow"]["enabled"] is True
    assert (meta["shadow"]["name"], meta["shadow"]["version"]) == (NAME, "2")
    assert meta["shadow"]["onnx_sha256"] == v2.tags["onnx.sha256"]
    assert "shadow" not in httpx.get(f"{served.servers['off'].url}/v1/metadata", headers=key).json()

    answers(on, requests(served.project))
    preds, _ = logged(served, "on")
    wait_for("a shadow record per prediction", lambda: set(logged(served, "on")[1]) >= set(preds))
    preds, shadow = logged(served, "on")
    assert len(preds) >= 34 and set(shadow) == set(preds)  # one per row, none for a refusal
    for pid, p in preds.items():
        assert shadow[pid] == {
            "type": "shadow",
            "id": pid,
            "ts": p["ts"],
            "model": f"{NAME}/2",
            "champion": f"{NAME}/1",
            "prediction": p["prediction"],  # the same model registered again: the same label
            "champion_prediction": p["prediction"],
            "error": None,
        }
    assert metric(on, "modelyard_shadow_predictions_total", agree="true") == len(shadow)
    assert metric(on, "modelyard_shadow_predictions_total", agree="false") == 0
    assert metric(on, "modelyard_shadow_errors_total") == 0
    assert metric(on, "modelyard_shadow_dropped_total") == 0


def test_a_challenger_that_raises_leaves_every_answer_200_and_right(served: Served) -> None:
    broken, off = served.servers["broken"], served.servers["off"]
    x = rows_of(served.project, 60)
    traffic = [{"body": {"inputs": x[i : i + n]}} for i, n in ((0, 1), (1, 7), (8, 32), (40, 1))]
    got = answers(broken, traffic)
    assert [status for status, _ in got] == [200] * len(traffic)
    assert got == answers(off, traffic)

    preds, _ = logged(served, "broken")
    wait_for(
        "a shadow record per prediction", lambda: set(logged(served, "broken")[1]) >= set(preds)
    )
    preds, shadow = logged(served, "broken")
    assert len(preds) >= 41 and set(shadow) == set(preds)
    for pid, p in preds.items():
        r = shadow[pid]
        assert (r["model"], r["champion"]) == (f"{NAME}/3", f"{NAME}/1")
        assert r["prediction"] is None and r["champion_prediction"] == p["prediction"]
        assert r["error"].startswith("InvalidArgument: ")
        assert "Got invalid dimensions for input: features" in r["error"], r["error"]
    assert metric(broken, "modelyard_shadow_errors_total", kind="InvalidArgument") == len(shadow)
    assert metric(broken, "modelyard_shadow_predictions_total") == 0
    # Logged once, however many requests failed.
    assert broken.output().count(f"shadow: {NAME}/3 failed") == 1, broken.output()[-3000:]


def test_build_refuses_the_served_version_or_other_features_as_shadow(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused before anything is imported into BentoML's store: exit 2 (a wrong option,
    like any ConfigError) with the reason."""
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "bentoml"))
    project = served.project
    result = project.cli("build", "--model", f"{NAME}/1", "--shadow", f"{NAME}@challenger")
    assert result.exit_code == 2, result.output
    assert "is digits-classifier v1, the version being served" in " ".join(result.output.split())

    schema = project.registry().model_metadata(NAME, "1")["schema"]
    renamed = {
        **schema,
        "features": [{**f, "name": f"x{i}"} for i, f in enumerate(schema["features"])],
    }
    other = register_narrow(project, metadata={"schema": renamed})
    result = project.cli("build", "--model", f"{NAME}/1", "--shadow", f"{NAME}/{other}")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert f"--shadow {NAME}/{other} has other features than {NAME} v1" in text, text
    assert not list((tmp_path / "bentoml").glob("models/*/*")), "a model was imported"


def test_a_tampered_shadow_model_refuses_to_start(served: Served, tmp_path: Path) -> None:
    """The challenger's file is checked like the champion's: rewritten together with every
    hash beside it in the model store, the Bento's shadow_onnx_sha256 label still holds
    the registry's value, and `modelyard serve --shadow` exits 1 with the reason."""
    import onnx

    home = tmp_path / "bentoml"
    shutil.copytree(served.base / "on" / "bentoml", home)
    (model_file,) = home.glob(f"models/{NAME}/v2-*/model.onnx")
    model = onnx.load(str(model_file))
    model.doc_string = "not the registered challenger"
    onnx.save(model, str(model_file))
    forged = hashlib.sha256(model_file.read_bytes()).hexdigest()
    contract_file = model_file.with_name("contract.json")
    contract = json.loads(contract_file.read_text())
    registered_sha, contract["onnx_sha256"] = contract["onnx_sha256"], forged
    contract_file.write_text(json.dumps(contract))
    manifest_file = model_file.with_name("model.yaml")
    manifest = yaml.safe_load(manifest_file.read_text())
    manifest["metadata"]["onnx_sha256"] = manifest["labels"]["onnx_sha256"] = forged
    manifest_file.write_text(yaml.safe_dump(manifest))

    server = api_server(served.project, tmp_path / "refused")
    server.cmd += ["--model", f"{NAME}/1", "--shadow", f"{NAME}/2"]
    server.env["BENTOML_HOME"] = str(home)
    with open(server.out_path, "wb") as out:
        proc = subprocess.Popen(
            [*server.cmd, "--port", str(server.port)], env=server.env, stdout=out, stderr=out
        )
    try:
        code = proc.wait(timeout=180)  # a bound, not a measurement: it must not hang
    except subprocess.TimeoutExpired:
        server.proc = proc
        server.stop()
        raise AssertionError(f"kept running a refused service:\n{server.output()}") from None
    text = " ".join(server.output().split())
    assert code == 1, text[-3000:]
    assert "serve failed: the service refused to start:" in text, text
    assert f"has sha256 {forged}" in text and f"records {registered_sha}" in text, text
    assert f"the registry's value for {NAME} v2" in text, text
