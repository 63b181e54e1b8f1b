"""Load shedding benchmark: offered load up to 2x what the service sustains, with the
bound of requests in flight (MODELYARD_MAX_INFLIGHT) and without it (BentoML as is).

One `modelyard serve` per setting, on 127.0.0.1, the same registered model, auth and the
inference log on. First the sustainable rate: the answers per second of a closed loop of
``--concurrency`` connections. Then an open loop (Poisson arrivals on a schedule drawn in
advance, sent whatever the answers do; latency counted from the scheduled send, so a slow
server cannot hide its queue) at fractions of that rate, for each setting in turn. The
load generator shares the machine's cores with the server, as it would on a laptop.

    python benchmarks/gateway.py [--params params.yaml] [--bounds 0,4,32] [--seconds 5]

Prints a Markdown table (per setting and offered load: answered/s, p50/p99 of the 200s,
the share and p99 of the 503s) and writes it with the raw numbers to
benchmarks/results/gateway.{md,json}, and the curves to gateway.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import serving as base  # noqa: E402  (this folder's serving benchmark: server helpers)

FRACTIONS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
MAX_CONNECTIONS = 512  # the client's own bound: past it a send counts as "client-busy"


def request_bytes(body: bytes) -> bytes:
    return (
        b"POST /v1/predict HTTP/1.1\r\nHost: bench\r\n"
        + f"Authorization: Bearer {base.KEY}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


class Pool:
    """Keep-alive connections to the server, opened as needed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0

    async def send(self, raw: bytes) -> int:
        """One request; its status (0: the connection failed)."""
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            self.open += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(raw)
            status_line = await reader.readline()
            length, close = 0, False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "connection" and "close" in value.lower():
                    close = True
            await reader.readexactly(length)
            status = int(status_line.split()[1])
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            writer.close()
            self.open -= 1
            return 0
        if close:
            writer.close()
            self.open -= 1
        else:
            self.idle.append((reader, writer))
        return status


async def closed_loop(port: int, raw: bytes, concurrency: int, seconds: float) -> float:
    """Answers per second with ``concurrency`` requests always outstanding."""
    pool, done = Pool(port), 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            if await pool.send(raw) == 200:
                done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


async def open_loop(port: int, raw: bytes, rate: float, seconds: float) -> dict[str, Any]:
    """Send at ``rate`` per second for ``seconds``; every answer's status and latency."""
    pool = Pool(port)
    results: list[tuple[int, float]] = []
    busy = 0

    async def one(scheduled: float) -> None:
        status = await pool.send(raw)
        results.append((status, time.perf_counter() - scheduled))

    tasks: set[asyncio.Task[None]] = set()
    # Poisson arrivals (as independent clients make them), the same draw for every setting.
    gaps = np.random.default_rng(0).exponential(1.0 / rate, size=int(rate * seconds))
    start = time.perf_counter()
    n = len(gaps)
    for scheduled in start + np.cumsum(gaps) - gaps[0]:
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if pool.open - len(pool.idle) >= MAX_CONNECTIONS:
            busy += 1
            continue
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    return summarize(results, rate=rate, seconds=seconds, busy=busy, sent=n)


def summarize(
    results: list[tuple[int, float]], *, rate: float, seconds: float, busy: int, sent: int
) -> dict[str, Any]:
    ok = np.array([lat for status, lat in results if status == 200]) * 1e3
    shed = np.array([lat for status, lat in results if status == 503]) * 1e3
    other = len(results) - len(ok) - len(shed)

    def pct(a: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(a, q)), 2) if len(a) else None

    return {
        "offered_rps": round(rate, 1),
        "sent": sent,
        "ok_rps": round(len(ok) / seconds, 1),
        "ok_p50_ms": pct(ok, 50),
        "ok_p99_ms": pct(ok, 99),
        "shed_share": round(len(shed) / max(1, len(results)), 3),
        "shed_p99_ms": pct(shed, 99),
        "other": other + busy + (sent - busy - len(results)),
    }


def serve(params: Path, model: str, port: int, bound: int, log_dir: str) -> Any:
    import subprocess

    env = {
        **os.environ,
        "PATH": f"{base.BIN}{os.pathsep}{os.environ['PATH']}",
        "MODELYARD_API_KEYS": base.KEY,
        "MODELYARD_LOG_DIR": log_dir,
        "MODELYARD_MAX_INFLIGHT": str(bound),
    }
    command = [str(base.BIN / "modelyard"), "serve", "--params", str(params), "--model", model]
    return subprocess.Popen(
        [*command, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def plot(results: dict[str, list[dict[str, Any]]], sustainable: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, points in results.items():
        x = [p["offered_rps"] / sustainable for p in points]
        left.plot(x, [p["ok_p99_ms"] or np.nan for p in points], marker="o", label=label)
        right.plot(x, [p["ok_rps"] for p in points], marker="o", label=label)
    left.set(
        xlabel="offered load / sustainable rate",
        ylabel="p99 of answered requests (ms, log)",
        yscale="log",
        title="Latency of the requests that were served",
    )
    right.set(
        xlabel="offered load / sustainable rate",
        ylabel="answered (200) per second",
        title="Throughput",
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--model", help="NAME/VERSION (default: the @challenger)")
    ap.add_argument("--bounds", default="0,4,8,16", help="MODELYARD_MAX_INFLIGHT values (0: none)")
    ap.add_argument("--rows", type=int, default=64, help="rows per request")
    ap.add_argument("--seconds", type=float, default=5.0, help="per load point")
    ap.add_argument("--concurrency", type=int, default=8, help="closed loop for the rate")
    args = ap.parse_args()

    from pipelines import config, tracking
    from registry.client import CHALLENGER, Registry

    params = config.load(args.params)
    root = args.params.resolve().parent
    os.environ["MLFLOW_TRACKING_URI"] = tracking.tracking_uri(root)
    name = params.register_.model_name
    if args.model:
        model = args.model
    else:
        found = Registry(os.environ["MLFLOW_TRACKING_URI"]).by_alias(name, CHALLENGER)
        if found is None:
            sys.exit(f"no {name}@{CHALLENGER}: run `make run` first")
        model = f"{name}/{found.version}"
    test = pd.read_parquet(root / params.paths.split("test"))
    x = test[list(params.data.feature_names)].to_numpy(dtype=float)
    body = json.dumps({"inputs": x[: args.rows].tolist()}).encode()
    raw = request_bytes(body)
    bounds = [int(b) for b in args.bounds.split(",")]

    results: dict[str, list[dict[str, Any]]] = {}
    sustainable = 0.0
    for bound in bounds:
        label = f"bound {bound}" if bound else "no bound (BentoML as is)"
        port = base.free_port()
        log_dir = tempfile.mkdtemp(prefix="bench-gateway-log-")
        proc = serve(args.params, model, port, bound, log_dir)
        try:
            base.wait_until(f"http://127.0.0.1:{port}/v1/predict", body, proc)
            if not sustainable:  # measured once, on the first server: one scale for all
                asyncio.run(closed_loop(port, raw, args.concurrency, 2.0))  # warm up
                sustainable = asyncio.run(closed_loop(port, raw, args.concurrency, args.seconds))
                print(f"sustainable: {sustainable:.0f} req/s ({args.rows} rows each)", flush=True)
            points = []
            for fraction in FRACTIONS:
                point = asyncio.run(open_loop(port, raw, sustainable * fraction, args.seconds))
                point["fraction"] = fraction
                points.append(point)
                print(label, json.dumps(point), flush=True)
                time.sleep(1.0)  # let a queue left from the last point drain
            results[label] = points
        finally:
            base.stop(proc)

    unloaded = {label: points[0]["ok_p99_ms"] for label, points in results.items()}
    lines = [
        f"Load shedding, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}; "
        f"{args.rows} rows per request, open loop of {args.seconds:g} s per point; sustainable "
        f"rate {sustainable:.0f} req/s (closed loop, {args.concurrency} connections); "
        "`python benchmarks/gateway.py`.",
        "",
        "| setting | offered | answered/s | p50 ms (200) | p99 ms (200) | p99 vs unloaded "
        "| shed (503) | p99 ms (503) | other |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, points in results.items():
        for p in points:
            ratio = (
                f"{p['ok_p99_ms'] / unloaded[label]:.1f}x"
                if p["ok_p99_ms"] and unloaded[label]
                else "-"
            )
            lines.append(
                f"| {label} | {p['fraction']:g}x ({p['offered_rps']:.0f}/s) | {p['ok_rps']:.0f} "
                f"| {p['ok_p50_ms']} | {p['ok_p99_ms']} | {ratio} | {p['shed_share']:.1%} "
                f"| {p['shed_p99_ms'] if p['shed_p99_ms'] is not None else '-'} | {p['other']} |"
            )
    table = "\n".join(lines)
    print(table)
    out = HERE / "results"
    (out / "gateway.md").write_text(table + "\n")
    (out / "gateway.json").write_text(
        json.dumps(
            {"sustainable_rps": sustainable, "rows": args.rows, "results": results}, indent=2
        )
    )
    plot(results, sustainable, out / "gateway.png")


if __name__ == "__main__":
    main()
