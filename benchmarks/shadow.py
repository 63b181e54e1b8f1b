"""Shadow evaluation's cost to the champion (issue 13, item 4): p50/p99 and throughput of
/v1/predict with the shadow challenger off and on.

One Bento, built once with `modelyard build --model CHAMPION --shadow CHALLENGER`, served
twice side by side by `modelyard serve` (the build is then a no-op; each server has its
own copy of the BentoML store): MODELYARD_SHADOW=off and MODELYARD_SHADOW=on (auth and
inference log on in both). wrk drives one server at a
time, single-row requests, in interleaved rounds (off, on, off, on, ...) at each
concurrency, so drift in the machine's load hits both alike. Between rounds the "on"
server's shadow queue is let drain, so its backlog never runs into the next "off" round.

    python benchmarks/shadow.py [--params params.yaml] [--model NAME/VERSION]
        [--shadow NAME/VERSION] [--rounds 4] [--duration 8] [--connections 1,16]

Default: the @champion served, the @challenger in shadow (they must differ). Reports the
median over rounds of each round's p50, p99 and req/s, the on/off ratios (goal: p99
within 10%), and what the shadow did under that load (rows scored, dropped, failed).
Prints a Markdown table and writes it with every round's numbers to
benchmarks/results/shadow.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import BIN, HERE, KEY, free_port, machine, stop, wait_until, wrk
from workers import cpu_model

MODES = ("off", "on")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--model", help="NAME/VERSION served (default: the @champion)")
    ap.add_argument("--shadow", help="NAME/VERSION in shadow (default: the @challenger)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds per mode and concurrency")
    ap.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    ap.add_argument("--connections", default="1,16", help="wrk concurrencies, comma-separated")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    concurrencies = [int(c) for c in args.connections.split(",")]

    from pipelines import config, tracking
    from registry.client import CHALLENGER, CHAMPION, Registry

    params = config.load(args.params)
    root = args.params.resolve().parent
    uri = tracking.tracking_uri(root)
    registry = Registry(uri)
    name = params.register_.model_name
    model = args.model or _alias(registry, name, CHAMPION)
    shadow = args.shadow or _alias(registry, name, CHALLENGER)
    if model == shadow:
        sys.exit(f"the served model and the shadow are both {model}: pass --model/--shadow")
    test = pd.read_parquet(root / params.paths.split("test"))
    row = test[list(params.data.feature_names)].to_numpy(dtype=float)[:1]
    body = json.dumps({"inputs": row.tolist()})

    own_home = "BENTOML_HOME" not in os.environ
    home = os.environ.get("BENTOML_HOME") or tempfile.mkdtemp(prefix="bench-bentoml-")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MODELYARD_API_KEYS": KEY,
        "BENTOML_HOME": home,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    serve = [str(BIN / "modelyard"), "serve", "--params", str(args.params)]
    serve += ["--model", model, "--shadow", shadow]
    build = [str(BIN / "modelyard"), "build", "--params", str(args.params)]
    build += ["--model", model, "--shadow", shadow]
    print(f"building the Bento: {' '.join(build[1:])}", flush=True)
    subprocess.run(build, env=env, cwd=root, check=True)

    # Each server its own copy of the store: BentoML keeps (and, starting, empties) its
    # Prometheus folder under BENTOML_HOME, so two servers on one home mix their /metrics.
    homes = {"off": home, "on": tempfile.mkdtemp(prefix="bench-bentoml-on-")}
    shutil.copytree(home, homes["on"], dirs_exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    urls: dict[str, str] = {}
    logs: list[str] = []
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    shadow_counts: dict[str, float] = {}
    load = {"start": os.getloadavg()}
    try:
        for mode in MODES:  # both up at once; only one is loaded at a time
            port = free_port()
            logs.append(tempfile.mkdtemp(prefix=f"bench-shadow-{mode}-"))
            extra = {
                "MODELYARD_SHADOW": mode,
                "MODELYARD_LOG_DIR": logs[-1],
                "BENTOML_HOME": homes[mode],
            }
            procs[mode] = subprocess.Popen(
                [*serve, "--port", str(port)],
                env={**env, **extra},
                cwd=root,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            urls[mode] = f"http://127.0.0.1:{port}"
        for mode in MODES:
            wait_until(f"{urls[mode]}/v1/predict", body.encode(), procs[mode])
            meta = _get_json(f"{urls[mode]}/v1/metadata")
            assert meta["shadow"]["enabled"] is (mode == "on"), meta.get("shadow")
            print(f"{mode}: {meta['name']} v{meta['version']}, shadow {meta['shadow']}", flush=True)
        for c in concurrencies:
            results[c] = {mode: [] for mode in MODES}
            for mode in MODES:
                wrk(f"{urls[mode]}/v1/predict", body, 2, c)  # warm-up
                _drained(urls["on"])
            for i in range(args.rounds):
                for mode in MODES if i % 2 == 0 else reversed(MODES):
                    r = wrk(f"{urls[mode]}/v1/predict", body, args.duration, c)
                    r["loadavg_1m"] = os.getloadavg()[0]
                    results[c][mode].append(r)
                    print(
                        f"  c={c:<3} round {i + 1} {mode:>3}: {r['rps']:.0f} req/s, "
                        f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                        f"errors {r['errors']}, load {r['loadavg_1m']:.1f}",
                        flush=True,
                    )
                    _drained(urls["on"])
        shadow_counts = _shadow_counts(urls["on"])
        load["end"] = os.getloadavg()
    finally:
        for proc in procs.values():
            stop(proc)
        for folder in logs:
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(homes["on"], ignore_errors=True)
        if own_home:
            shutil.rmtree(home, ignore_errors=True)

    summary = summarize(results)
    table = render(summary, shadow_counts, args, model, shadow, load)
    print(table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "shadow.json").write_text(
        json.dumps(
            {
                "command": " ".join(["python", *sys.argv]),
                "model": model,
                "shadow": shadow,
                "summary": summary,
                "shadow_counts": shadow_counts,
                "rounds": results,
                "loadavg": load,
                "machine": {**machine(), "cpu": cpu_model()},
                "table": table,
            },
            indent=2,
        )
    )


def _alias(registry: Any, name: str, alias: str) -> str:
    found = registry.by_alias(name, alias)
    if found is None:
        sys.exit(f"no {name}@{alias}: pass --model and --shadow as NAME/VERSION")
    return f"{found.name}/{found.version}"


def _get_json(url: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _metrics(base: str) -> dict[str, float]:
    """Every sample on /metrics, summed over labels, by name."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def _shadow_counts(base: str) -> dict[str, float]:
    m = _metrics(base)
    return {
        "predictions": m.get("modelyard_predictions_total", 0.0),
        "shadow_scored": m.get("modelyard_shadow_predictions_total", 0.0),
        "shadow_dropped": m.get("modelyard_shadow_dropped_total", 0.0),
        "shadow_failed": m.get("modelyard_shadow_errors_total", 0.0),
    }


def _drained(base: str, timeout: float = 120) -> None:
    """Wait until the shadow has dealt with every row the champion answered."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = _shadow_counts(base)
        if c["shadow_scored"] + c["shadow_dropped"] + c["shadow_failed"] >= c["predictions"]:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the shadow queue of {base} did not drain in {timeout} s")


def summarize(results: dict[int, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c, by_mode in results.items():
        row: dict[str, Any] = {}
        for mode, runs in by_mode.items():
            row[mode] = {
                key: statistics.median(r[key] for r in runs) for key in ("rps", "p50_ms", "p99_ms")
            }
            row[mode]["errors"] = sum(r["errors"] for r in runs)
            row[mode]["requests"] = sum(r["requests"] for r in runs)
        row["ratio"] = {k: row["on"][k] / row["off"][k] for k in ("rps", "p50_ms", "p99_ms")}
        out[str(c)] = row
    return out


def render(
    summary: dict[str, Any],
    counts: dict[str, float],
    args: argparse.Namespace,
    model: str,
    shadow: str,
    load: dict[str, Any],
) -> str:
    end = f"{load['end'][0]:.1f}" if "end" in load else "?"
    lines = [
        f"Shadow evaluation cost, {time.strftime('%Y-%m-%d')}: {model} served, {shadow} in "
        f"shadow, one Bento served twice (MODELYARD_SHADOW=off/on); wrk -t1, 1 row per "
        f"request, {args.rounds} interleaved rounds x {args.duration} s per mode (medians of "
        f"the rounds); {cpu_model()}, {os.cpu_count()} cores, shared and noisy (1-min load "
        f"average {load['start'][0]:.1f} at start, {end} at end).",
        "",
        "| connections | shadow | req/s | p50 ms | p99 ms | errors | p99 on/off | req/s on/off |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, row in summary.items():
        for mode in MODES:
            r = row[mode]
            ratios = (
                f"{row['ratio']['p99_ms']:.2f}x | {row['ratio']['rps']:.2f}x"
                if mode == "on"
                else " | "
            )
            lines.append(
                f"| {c} | {mode} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{r['errors']} | {ratios} |"
            )
    if counts:
        answered = counts["predictions"] or 1.0
        lines += [
            "",
            f"Shadow server, whole run: {counts['predictions']:.0f} rows answered, "
            f"{counts['shadow_scored']:.0f} shadow-scored "
            f"({counts['shadow_scored'] / answered:.1%}), {counts['shadow_dropped']:.0f} "
            f"dropped (queue full), {counts['shadow_failed']:.0f} failed.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
