"""Drift-job benchmark: `modelyard monitor run` over 1M and 10M logged rows x 64 features.

For each size (``--rows``) and window (``--kinds``), it writes the inference log with the
service's own writer (services.inference_log, the record format of services/service.py),
rows drawn from the test split of the registered version's data:

- ``clean``: test-split digits (no drift expected);
- ``occluded``: every image's left half dark (drift expected);
- ``partial``: a quarter of the images occluded (a weaker planted drift; not by default).

Then it times `modelyard monitor run` end to end as a user runs it (a subprocess: process
start, imports, reading the log, the registry and reference, Evidently on the seeded
sample of monitor.sample_rows rows, data quality, the report and the workspace), with
the peak resident memory of its process tree, and runs the same Evidently comparison on
every row of the window ("full data"; at most ``--full-max-rows``, the first rows of the
window, when the window is larger: say which in the table) to compare verdicts and
drifted features. Each log is deleted after its window is measured (10M rows is ~4.9 GB).

    python benchmarks/monitoring.py [--rows 1000000,10000000] [--kinds clean,occluded]
        [--full-max-rows 2000000] [--params params.yaml] [--project DIR]

Needs a registered version with its training run in the store of ``--params`` (`make
run`). Without one, it trains one in ``--project`` (default
~/.cache/modelyard/bench-monitoring: the pipeline once with short training, reused by the
next runs). Writes benchmarks/results/monitoring.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
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
import psutil
import yaml

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

# The pipeline's stages in `dvc repro` order, `champion` first (what evaluate reads).
PIPELINE = (
    *("champion", "ingest", "prepare", "validate", "train"),
    *("export", "optimize", "evaluate", "register"),
)
# Short training for a benchmark-only project: the drift job compares the log with the
# training split, so the model's accuracy does not change what is measured.
SETUP_PARAMS = {
    "train": {"epochs": 12, "patience": 4},
    "optimize": {"runs": 200, "rounds": 2, "warmup": 5, "finetune_epochs": 1},
}
ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "BENTOML_DO_NOT_TRACK": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}


def write_log(
    folder: Path,
    x: np.ndarray,
    labels: np.ndarray,
    rows: int,
    model: str,
    kind: str,
    rng: np.random.Generator,
) -> float:
    """``rows`` prediction records as services/service.py `predict` writes them."""
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


def measured(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd``; its wall and CPU time (user + system: what a busy machine inflates
    less), exit code, output, and peak resident memory: the larger
    of GNU time's max RSS (the process and the children it waited for) and the sum over
    the live process tree, sampled every 20 ms."""
    with tempfile.TemporaryDirectory(prefix="modelyard-bench-") as scratch:
        rss_file = Path(scratch) / "maxrss"
        out, err = Path(scratch) / "out", Path(scratch) / "err"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            start = time.perf_counter()
            proc = psutil.Popen(
                ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file), *cmd],
                cwd=cwd,
                env=env,
                stdout=stdout,
                stderr=stderr,
            )
            tree_peak = 0
            while proc.poll() is None:
                rss = 0
                for p in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        rss += p.memory_info().rss
                tree_peak = max(tree_peak, rss)
                time.sleep(0.02)
            seconds = time.perf_counter() - start
        maxrss_kb, user, system = rss_file.read_text().split()[-3:]
        return {
            "seconds": seconds,
            "cpu_seconds": float(user) + float(system),
            "exit_code": proc.returncode,
            "peak_rss_mb": max(int(maxrss_kb) * 1024, tree_peak) / 1e6,
            "stdout": out.read_text(),
            "stderr": err.read_text(),
        }


def full_data_verdict(
    log_dir: Path, model: str, params_file: Path, max_rows: int
) -> dict[str, Any]:
    """Evidently on every row of the window (at most ``max_rows``, the first ones): what
    the sampled job approximates. Rows are read into one array, not a dict per row."""
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
    x = np.empty((max_rows, len(ref.features)), np.float64)
    predictions: list[str] = []
    for record in read(log_dir):
        if record.get("type") != "prediction":
            continue
        x[len(predictions)] = record["features"]
        predictions.append(str(record.get("prediction")))
        if len(predictions) == max_rows:
            break
    current = pd.DataFrame(x[: len(predictions)], columns=ref.features)
    del x
    current[drift.PREDICTION] = predictions
    read_s = time.perf_counter() - start
    usable = [f for f in ref.features if f not in ref.constant]
    result = drift.compare(
        ref.frame,
        current,
        features=usable,
        drift_share=params.monitor.drift_share,
        method=params.monitor.method,
        threshold=params.monitor.threshold,
    )
    seconds = time.perf_counter() - start - read_s
    drifted = result.dataset_drift or result.prediction.drifted
    return {
        "status": "drift" if drifted else "ok",
        "drift_share": result.drift_share,
        "drifted_columns": result.drifted_columns,
        "rows": len(current),
        "read_seconds": read_s,
        "seconds": seconds,
    }


def registered(params_file: Path) -> str | None:
    """NAME/VERSION of the newest version with its training run in the store, if any."""
    from pipelines import config, tracking
    from registry.client import Registry

    params = config.load(params_file)
    root = params_file.resolve().parent
    name = params.register_.model_name
    if not (root / ".modelyard").is_dir():
        return None
    tracking.configure(root)
    found = Registry(tracking.tracking_uri(root)).versions(name)
    versions = [v for v in found if "data.reference_uri" in v.tags]
    return f"{name}/{versions[-1].version}" if versions else None


def setup_project(project: Path, params_file: Path, env: dict[str, str]) -> Path:
    """A project with a registered version: the pipeline, stage by stage, as a user runs
    it, with short training (SETUP_PARAMS). Returns its params.yaml."""
    project.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load(params_file.read_text())
    for section, values in SETUP_PARAMS.items():
        params[section] = {**params[section], **values}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(ROOT / "data/expectations", project / "data/expectations", dirs_exist_ok=True)
    (project / "data/sources").mkdir(parents=True, exist_ok=True)
    for stage in PIPELINE:
        print(f"[setup] modelyard {stage} in {project}", flush=True)
        proc = subprocess.run(
            [str(BIN / "modelyard"), stage, "--params", str(project / "params.yaml")],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            sys.exit(f"setup: modelyard {stage} failed:\n{proc.stdout}\n{proc.stderr}")
    return project / "params.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", default="1000000,10000000", help="comma-separated window sizes")
    ap.add_argument("--kinds", default="clean,occluded")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument(
        "--project",
        type=Path,
        default=Path.home() / ".cache/modelyard/bench-monitoring",
        help="where to train a version when --params' store has none",
    )
    ap.add_argument("--full-max-rows", type=int, default=2_000_000)
    ap.add_argument("--no-full", action="store_true", help="skip the full-data comparison")
    ap.add_argument("--logs", type=Path, default=None, help="where to write the logs (temp)")
    args = ap.parse_args()

    from pipelines import config

    env = {**os.environ, **ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MODELYARD_ALERT_WEBHOOK_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    params_file = args.params.resolve()
    model = registered(params_file)
    if model is None:
        params_file = args.project / "params.yaml"
        model = registered(params_file) if params_file.exists() else None
        if model is None:
            print(f"no registered version in {args.params.parent}: training one", flush=True)
            params_file = setup_project(args.project, args.params.resolve(), env)
            model = registered(params_file)
        if model is None:
            sys.exit(f"no registered version with a training run under {args.project}")
    params = config.load(params_file)
    root = params_file.parent
    test = pd.read_parquet(root / params.paths.split("test"))
    features = params.data.feature_names
    x, labels = test[features].to_numpy(np.float32), test[params.data.target].to_numpy()

    results: dict[str, Any] = {
        "features": len(features),
        "model": model,
        "project": str(root),
        "sample_rows": params.monitor.sample_rows,
        "full_max_rows": args.full_max_rows,
        "machine": machine(),
        "load_before": os.getloadavg(),
        "runs": [],
    }
    for rows in (int(r) for r in args.rows.split(",")):
        for kind in args.kinds.split(","):
            tmp = Path(tempfile.mkdtemp(prefix=f"modelyard-bench-{kind}-", dir=args.logs))
            try:
                results["runs"].append(
                    one_window(tmp / "log", rows, kind, x, labels, model, params_file, env, args)
                )
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            write(results)  # after every window: a long run leaves its partial table
    results["load_after"] = os.getloadavg()
    write(results)


def one_window(
    log_dir: Path,
    rows: int,
    kind: str,
    x: np.ndarray,
    labels: np.ndarray,
    model: str,
    params_file: Path,
    env: dict[str, str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    from pipelines import config

    params = config.load(params_file)
    root = params_file.parent
    wrote = write_log(log_dir, x, labels, rows, model, kind, np.random.default_rng(7))
    size = sum(p.stat().st_size for p in log_dir.iterdir())
    print(f"[{rows:,} {kind}] wrote {size / 1e9:.2f} GB in {wrote:.0f} s", flush=True)
    job = measured(
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
            str(params_file),
        ],
        cwd=root,
        env=env,
    )
    if job["exit_code"] not in (0, 1):
        sys.exit(f"monitor run failed ({job['exit_code']}):\n{job['stdout']}\n{job['stderr']}")
    summary = json.loads((root / params.monitor.output / "summary.json").read_text())
    run: dict[str, Any] = {
        "rows": rows,
        "window": kind,
        "log_gb": size / 1e9,
        "job_seconds": job["seconds"],
        "job_cpu_seconds": job["cpu_seconds"],
        "peak_rss_mb": job["peak_rss_mb"],
        "exit_code": job["exit_code"],
        "status": summary["status"],
        "drift_share": summary["drift_share"],
        "drifted_columns": summary["drifted_columns"],
        "stage_seconds": summary["seconds"],
        "counted": summary["rows"],
        "sampled": summary["sampled"],
        "load": os.getloadavg(),
    }
    if summary["rows"] != rows:
        sys.exit(f"monitor run counted {summary['rows']:,} rows in the window, wrote {rows:,}")
    print(
        f"[{rows:,} {kind}] monitor run: {job['seconds']:.1f} s, peak {job['peak_rss_mb']:.0f} "
        f"MB, {summary['status']}, share {summary['drift_share']:.3f}, stages "
        f"{ {k: round(v, 1) for k, v in summary['seconds'].items()} }",
        flush=True,
    )
    if not args.no_full:
        full = full_data_verdict(log_dir, model, params_file, min(rows, args.full_max_rows))
        run["full"] = full
        a, b = set(summary["drifted_columns"]), set(full["drifted_columns"])
        run["verdict_matches"] = full["status"] == summary["status"]
        run["drifted_jaccard"] = len(a & b) / len(a | b) if a | b else 1.0
        print(
            f"[{rows:,} {kind}] Evidently on {full['rows']:,} rows: {full['seconds']:.0f} s, "
            f"{full['status']}, share {full['drift_share']:.3f}; same verdict: "
            f"{run['verdict_matches']}",
            flush=True,
        )
    return run


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": psutil.virtual_memory().total / 1e9,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write(results: dict[str, Any]) -> None:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "monitoring.json").write_text(json.dumps(results, indent=2) + "\n")
    load = results["load_before"]
    lines = [
        f"`modelyard monitor run` over N logged rows x {results['features']} features "
        f"({results['machine']['cpus']} CPUs shared, load {load[0]:.1f} at the start; sample "
        f"{results['sample_rows']:,} rows), model {results['model']}",
        "",
        "| rows | window | log GB | `monitor run` s | CPU s | read log s | Evidently (sample) s "
        "| peak RSS MB | verdict | drift share | full-data rows | full-data Evidently s "
        "| full-data verdict | full share | same verdict | drifted-set Jaccard |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        full = r.get("full", {})
        stages = r["stage_seconds"]
        lines.append(
            f"| {r['rows']:,} | {r['window']} | {r['log_gb']:.2f} | {r['job_seconds']:.1f} "
            f"| {r.get('job_cpu_seconds', float('nan')):.1f} "
            f"| {stages.get('read_log', 0):.1f} | {stages.get('evidently', 0):.1f} "
            f"| {r['peak_rss_mb']:.0f} | {r['status']} | {r['drift_share']:.3f} "
            f"| {full.get('rows', 0):,} | {full.get('seconds', float('nan')):.1f} "
            f"| {full.get('status', '-')} | {full.get('drift_share', float('nan')):.3f} "
            f"| {r.get('verdict_matches', '-')} | {r.get('drifted_jaccard', float('nan')):.2f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / "monitoring.md").write_text(text)
    print(text, flush=True)


if __name__ == "__main__":
    main()
