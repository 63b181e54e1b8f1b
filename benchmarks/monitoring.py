"""Drift-job benchmark: `modelyard monitor run` over 1 million logged rows x 64 features.

Writes inference logs with the service's own writer (services.inference_log), rows drawn
from the test split of the registered version's data, for three windows:

- ``clean``: test-split digits (no drift expected);
- ``occluded``: every image's left half dark (drift expected);
- ``partial``: a quarter of the images occluded (a weaker planted drift).

For each, it times the job end to end as a user runs it (`modelyard monitor run`, a
seeded sample of monitor.sample_rows rows for the drift tests), then runs the same
Evidently comparison on every row of the window ("full data") and compares verdicts
and drifted features.

    python benchmarks/monitoring.py [--rows 1000000] [--params params.yaml]

Needs a registered version with its training run in the store (`make run`). Writes
benchmarks/results/monitoring.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def write_log(
    folder: Path,
    x: np.ndarray,
    labels: np.ndarray,
    rows: int,
    model: str,
    kind: str,
    rng: np.random.Generator,
) -> float:
    from services.inference_log import InferenceLog

    start = time.perf_counter()
    writer = InferenceLog(folder, fsync_every=3600, max_files=1000)
    now = time.time() - 60
    batch = 64
    for first in range(0, rows, batch):
        idx = rng.integers(0, len(x), size=min(batch, rows - first))
        feats = x[idx].copy()
        if kind == "occluded":
            feats.reshape(-1, 8, 8)[:, :, :4] = 0
        elif kind == "partial":
            dark = rng.random(len(idx)) < 0.25
            feats.reshape(-1, 8, 8)[dark, :, :4] = 0
        request = f"r{first}"
        writer.append(
            [
                {
                    "type": "prediction",
                    "id": f"{request}-{i}",
                    "request_id": request,
                    "ts": now,
                    "model": model,
                    "features": feats[i],
                    "prediction": int(labels[idx[i]]),
                    "probabilities": np.full(10, 0.1),
                }
                for i in range(len(idx))
            ]
        )
    writer.close()
    return time.perf_counter() - start


def full_data_verdict(log_dir: Path, model: str, params_file: Path) -> dict[str, Any]:
    """Evidently on every row of the window (what the sampled job approximates)."""
    from monitoring import drift, monitor
    from pipelines import config, tracking
    from registry.client import Registry
    from services.inference_log import read

    params = config.load(params_file)
    root = params_file.resolve().parent
    tracking.configure(root)
    ref = monitor.reference_for(
        Registry(tracking.tracking_uri(root)), model, root / params.monitor.output / "reference"
    )
    start = time.perf_counter()
    records = [r for r in read(log_dir) if r.get("type") == "prediction"]
    current = monitor.to_frame(records, ref.features)
    del records
    usable = [f for f in ref.features if f not in ref.constant]
    result = drift.compare(
        ref.frame,
        current,
        features=usable,
        drift_share=params.monitor.drift_share,
        method=params.monitor.method,
        threshold=params.monitor.threshold,
    )
    seconds = time.perf_counter() - start
    drifted = result.dataset_drift or result.prediction.drifted
    return {
        "status": "drift" if drifted else "ok",
        "drift_share": result.drift_share,
        "drifted_columns": result.drifted_columns,
        "rows": len(current),
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--kinds", default="clean,occluded,partial")
    ap.add_argument("--no-full", action="store_true", help="skip the full-data comparison")
    args = ap.parse_args()

    from pipelines import config, tracking
    from registry.client import Registry

    params = config.load(args.params)
    root = args.params.resolve().parent
    tracking.configure(root)
    registry = Registry(tracking.tracking_uri(root))
    name = params.register_.model_name
    versions = [v for v in registry.versions(name) if "data.reference_uri" in v.tags]
    if not versions:
        sys.exit(f"no version of {name} with a training run in this store: run `make run` first")
    model = f"{name}/{versions[-1].version}"
    test = pd.read_parquet(root / params.paths.split("test"))
    features = params.data.feature_names
    x, labels = test[features].to_numpy(np.float32), test[params.data.target].to_numpy()

    results: dict[str, Any] = {
        "rows": args.rows,
        "features": len(features),
        "model": model,
        "sample_rows": params.monitor.sample_rows,
        "machine": machine(),
        "runs": {},
    }
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MODELYARD_ALERT_WEBHOOK_URL", None)
    for kind in args.kinds.split(","):
        tmp = Path(tempfile.mkdtemp(prefix=f"modelyard-bench-{kind}-"))
        try:
            log_dir = tmp / "log"
            wrote = write_log(log_dir, x, labels, args.rows, model, kind, np.random.default_rng(7))
            size = sum(p.stat().st_size for p in log_dir.iterdir())
            print(
                f"[{kind}] wrote {args.rows:,} rows ({size / 1e6:.0f} MB) in {wrote:.1f} s",
                flush=True,
            )
            start = time.perf_counter()
            proc = subprocess.run(
                [
                    str(BIN / "modelyard"),
                    "monitor",
                    "run",
                    "--log-dir",
                    str(log_dir),
                    "--since",
                    "1h",
                    "--no-retrain",
                    "--params",
                    str(args.params),
                ],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
            )
            job_s = time.perf_counter() - start
            if proc.returncode not in (0, 1):
                sys.exit(f"monitor run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
            summary = json.loads((root / params.monitor.output / "summary.json").read_text())
            run = {
                "job_seconds": job_s,
                "exit_code": proc.returncode,
                "status": summary["status"],
                "drift_share": summary["drift_share"],
                "drifted_columns": summary["drifted_columns"],
                "stage_seconds": summary["seconds"],
                "log_mb": size / 1e6,
                "rows": summary["rows"],
            }
            print(
                f"[{kind}] monitor run: {job_s:.1f} s, {summary['status']}, share "
                f"{summary['drift_share']:.3f}, stages {summary['seconds']}",
                flush=True,
            )
            if not args.no_full:
                full = full_data_verdict(log_dir, model, args.params)
                run["full"] = full
                a, b = set(summary["drifted_columns"]), set(full["drifted_columns"])
                run["verdict_matches"] = full["status"] == summary["status"]
                run["drifted_jaccard"] = len(a & b) / len(a | b) if a | b else 1.0
                print(
                    f"[{kind}] full data: {full['seconds']:.1f} s, {full['status']}, share "
                    f"{full['drift_share']:.3f}; verdicts match: {run['verdict_matches']}",
                    flush=True,
                )
            results["runs"][kind] = run
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    write(results)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write(results: dict[str, Any]) -> None:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "monitoring.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"Drift job over {results['rows']:,} logged rows x {results['features']} features "
        f"({results['cpus'] if 'cpus' in results else results['machine']['cpus']} CPUs, "
        f"sample {results['sample_rows']:,} rows), model {results['model']}",
        "",
        "| window | log MB | `monitor run` s | read log s | Evidently s | verdict | drift share "
        "| full-data Evidently s | full-data verdict | full share | same verdict | drifted-set Jaccard |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in results["runs"].items():
        full = r.get("full", {})
        lines.append(
            f"| {kind} | {r['log_mb']:.0f} | {r['job_seconds']:.1f} | {r['stage_seconds'].get('read_log', 0):.1f} "
            f"| {r['stage_seconds'].get('evidently', 0):.1f} | {r['status']} | {r['drift_share']:.3f} "
            f"| {full.get('seconds', float('nan')):.1f} | {full.get('status', '-')} "
            f"| {full.get('drift_share', float('nan')):.3f} | {r.get('verdict_matches', '-')} "
            f"| {r.get('drifted_jaccard', float('nan')):.2f} |"
        )
    text = "\n".join(lines) + "\n"
    (HERE / "results" / "monitoring.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
