"""Serving throughput per pod at 1 and 2 workers (issue 12, "Measure").

The same registered model, in one run, one server after the other, loaded by wrk
(single-row requests, 16 connections): the modelyard Bento (auth and inference log on)
with BentoML's `workers` at 1 and 2 (BENTOML_CONFIG_OPTIONS=services.modelyard.workers=N,
what the Deployment's CPU limit decides), and the bare baseline (the model behind a plain
Starlette route on uvicorn, benchmarks/starlette_baseline.py) at 1 and 2 workers.

    python benchmarks/workers.py [--params params.yaml] [--model NAME/VERSION] [--duration 10]

Prints a Markdown table (req/s, p50/p99, the 2-worker scaling, the ratio to the bare app
at the same worker count) and writes it, with the raw numbers, to
benchmarks/results/workers.{md,json}.

It also reports the server's CPU time per request (user + system of its whole process
tree during the measured run, divided by the requests served). On a shared machine
req/s moves with whatever else runs (wrk itself shares the cores); CPU time per request
moves much less, so its ratio to the bare app is the steadier per-worker comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import BIN, HERE, KEY, free_port, machine, stop, wait_until, wrk


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--model", help="NAME/VERSION (default: the @challenger)")
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
    if args.model:
        name, version = args.model.split("/")
    else:
        found = registry.by_alias(params.register_.model_name, CHALLENGER)
        if found is None:
            sys.exit("no @challenger: run `make run` first")
        name, version = found.name, found.version
    onnx = registry.download(name, version) / "model.onnx"
    test = pd.read_parquet(root / params.paths.split("test"))
    row = test[list(params.data.feature_names)].to_numpy(dtype=float)[:1]
    body = json.dumps({"inputs": row.tolist()})

    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MODELYARD_API_KEYS": KEY,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    serve = [
        str(BIN / "modelyard"),
        "serve",
        "--params",
        str(args.params),
        "--model",
        f"{name}/{version}",
    ]
    baseline = [sys.executable, str(HERE / "starlette_baseline.py"), str(onnx)]
    runs: dict[str, tuple[list[str], str, dict[str, str]]] = {}
    for workers in (1, 2):
        runs[f"modelyard, {workers} worker(s)"] = (
            [*serve, "--port"],
            "/v1/predict",
            {
                "BENTOML_CONFIG_OPTIONS": f"services.modelyard.workers={workers}",
                "MODELYARD_LOG_DIR": tempfile.mkdtemp(prefix="bench-log-"),
            },
        )
        runs[f"bare Starlette, {workers} worker(s)"] = (baseline, "/predict", {"W": str(workers)})
    results: dict[str, dict[str, Any]] = {}
    for label, (command, path, extra) in runs.items():
        port = free_port()
        full = [*command, str(port)] + ([extra["W"]] if "W" in extra else [])
        print(f"starting {label} on {port}", flush=True)
        proc = subprocess.Popen(
            full,
            env={**env, **extra},
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}{path}"
        try:
            wait_until(url, body.encode(), proc)
            wrk(url, body, 3, args.connections)  # warm-up
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            cpu_before = cpu_seconds(tree)
            results[label] = r = wrk(url, body, args.duration, args.connections)
            r["cpu_us_per_request"] = (cpu_seconds(tree) - cpu_before) / r["requests"] * 1e6
            print(
                f"  {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                f"errors {r['errors']}, server CPU {r['cpu_us_per_request']:.0f} us/request",
                flush=True,
            )
        finally:
            stop(proc)
    table = render(results, args)
    print(table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "workers.md").write_text(table)
    (out / "workers.json").write_text(
        json.dumps({"results": results, "machine": machine()}, indent=2)
    )


def cpu_seconds(tree: list[psutil.Process]) -> float:
    """User + system CPU seconds used so far by the processes of a server's tree."""
    return sum(t.user + t.system for t in (p.cpu_times() for p in tree))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def render(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"wrk, 1 row per request, {args.connections} connections, {args.duration} s each; "
        f"{cpu_model()}, {os.cpu_count()} cores, Python {machine()['python']}, "
        f"{machine()['date']}",
        "",
        "| server | req/s | p50 ms | p99 ms | errors | vs 1 worker | vs bare, same workers "
        "| server CPU µs/request | vs bare, CPU per request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        kind, workers = label.split(", ")
        one = results[f"{kind}, 1 worker(s)"]["rps"]
        bare = results[f"bare Starlette, {workers}"]
        cpu = r["cpu_us_per_request"]
        lines.append(
            f"| {label} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['errors']} | {r['rps'] / one:.2f}x | {r['rps'] / bare['rps']:.2f}x | "
            f"{cpu:.0f} | {bare['cpu_us_per_request'] / cpu:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
