"""Serving benchmark: this service vs `mlflow models serve` vs a textbook Flask app.

All three serve the same registered ONNX model on 127.0.0.1, one after the other, in one
run, loaded by wrk (a C load generator; Debian package `wrk`): single-row requests and
64-row requests at 16 connections. modelyard runs with auth and the inference log on.

    python benchmarks/serving.py [--params params.yaml] [--duration 10] [--model NAME/VERSION]

Prints a Markdown table (req/s, rows/s, p50/p99, errors, ratios) and writes it, with
the raw numbers, to benchmarks/results/serving.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
KEY = "bench-key"
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
wrk.body = [=[{body}]=]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: bytes) -> int:
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def wait_until(url: str, body: bytes, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if post(url, body) == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        if p.is_running():
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        p.kill()


def wrk(url: str, body: str, duration: int, connections: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA.format(key=KEY, body=body))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", fh.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(fh.name)
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, Any]:
    def ms(text: str) -> float:
        found = re.match(r"([\d.]+)(us|ms|s|m)$", text)
        if not found:
            raise ValueError(f"cannot read a latency from {text!r} in wrk's output:\n{out}")
        value, unit = found.groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors, "requests": total}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument(
        "--model", help="NAME/VERSION (default: the @challenger of register.model_name)"
    )
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run")
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")

    from pipelines import config, tracking
    from registry.client import CHALLENGER, Registry

    params = config.load(args.params)
    root = args.params.resolve().parent
    uri = tracking.tracking_uri(root)
    registry = Registry(uri)
    name = params.register_.model_name
    if args.model:
        name, version = args.model.split("/")
    else:
        found = registry.by_alias(name, CHALLENGER)
        if found is None:
            sys.exit(f"no {name}@{CHALLENGER}: run `make run` first")
        version = found.version
    model_dir = registry.download(name, version)
    test = pd.read_parquet(root / params.paths.split("test"))
    x = test[[f for f in params.data.feature_names]].to_numpy(dtype=float)
    bodies = {
        1: json.dumps({"inputs": x[:1].tolist()}),
        64: json.dumps({"inputs": x[:64].tolist()}),
    }

    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MODELYARD_API_KEYS": KEY,
        "MODELYARD_LOG_DIR": tempfile.mkdtemp(prefix="bench-log-"),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    modelyard = [
        str(BIN / "modelyard"),
        "serve",
        "--params",
        str(args.params),
        "--model",
        f"{name}/{version}",
    ]
    mlflow = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        f"models:/{name}/{version}",
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
    ]
    flask = [sys.executable, str(HERE / "flask_baseline.py"), str(model_dir / "model.onnx")]
    servers = {  # label: (command for a port, path)
        "modelyard (BentoML, auth + log)": (
            lambda p: [*modelyard, "--port", str(p)],
            "/v1/predict",
        ),
        "mlflow models serve": (lambda p: [*mlflow, "-p", str(p)], "/invocations"),
        "Flask (textbook)": (lambda p: [*flask, str(p)], "/predict"),
    }
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for label, (command, path) in servers.items():
        port = free_port()
        full = command(port)
        print(f"starting {label} on {port}", flush=True)
        proc = subprocess.Popen(
            full, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root
        )
        url = f"http://127.0.0.1:{port}{path}"
        try:
            wait_until(url, bodies[1].encode(), proc)
            results[label] = {}
            for rows, body in bodies.items():
                wrk(url, body, 2, args.connections)  # warm-up
                r = wrk(url, body, args.duration, args.connections)
                r["rows_per_s"] = r["rps"] * rows
                results[label][rows] = r
                print(
                    f"  {rows:>2} row(s): {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
                    f"p99 {r['p99_ms']:.2f} ms, errors {r['errors']}",
                    flush=True,
                )
        finally:
            stop(proc)

    table = render(results, args)
    print(table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "serving.md").write_text(table)
    (out / "serving.json").write_text(
        json.dumps({"results": results, "machine": machine()}, indent=2)
    )


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def render(results: dict[str, dict[int, dict[str, Any]]], args: argparse.Namespace) -> str:
    base = results.get("mlflow models serve", {})
    lines = [
        f"Serving benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, wrk -t1 -c{args.connections} "
        f"-d{args.duration}s, same ONNX model, all on 127.0.0.1.",
        "",
        "| server | rows/request | req/s | rows/s | p50 ms | p99 ms | errors | req/s vs mlflow |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, by_rows in results.items():
        for rows, r in by_rows.items():
            ratio = r["rps"] / base[rows]["rps"] if rows in base and base[rows]["rps"] else np.nan
            lines.append(
                f"| {label} | {rows} | {r['rps']:.0f} | {r['rows_per_s']:.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {r['errors']} | {ratio:.2f}x |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
