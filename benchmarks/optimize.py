"""Optimization benchmark: the `optimize` stage's table for the default CNN and the wide MLP.

Runs ingest .. optimize (the real CLI) in a scratch project for each shipped config,
then collects each stage's table (size, validation accuracy, p50/p99 at batch 1 and 256,
rows/s) and choice into benchmarks/results/optimize.{md,json}. The numbers are this
machine's: the stage measures on the CPU it runs on.

    python benchmarks/optimize.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
CONFIGS = {
    "default CNN (params.yaml)": ROOT / "params.yaml",
    "wide MLP (pipelines/examples/wide-mlp.params.yaml)": ROOT
    / "pipelines/examples/wide-mlp.params.yaml",
}
STAGES = ("ingest", "prepare", "validate", "train", "export", "optimize")


def main() -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    results: dict[str, object] = {}
    sections = []
    for label, params in CONFIGS.items():
        with tempfile.TemporaryDirectory(prefix="modelyard-optimize-") as tmp:
            root = Path(tmp)
            shutil.copy(params, root / "params.yaml")
            shutil.copytree(ROOT / "data/expectations", root / "data/expectations")
            (root / "data/sources").mkdir()
            start = time.perf_counter()
            for stage in STAGES:
                done = subprocess.run(
                    [str(BIN / "modelyard"), stage],
                    cwd=root,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    sys.exit(f"{label}: {stage} failed:\n{done.stdout}\n{done.stderr}")
            seconds = time.perf_counter() - start
            report = json.loads((root / "data/reports/optimize.details.json").read_text())
            table = (root / "data/reports/optimize.md").read_text()
            results[label] = {"seconds_ingest_to_optimize": seconds, **report}
            sections.append(f"### {label}\n\n{table}")
            print(f"{label}: chose {report['chosen']} ({seconds:.0f} s)", flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results/optimize.json").write_text(json.dumps(results, indent=2) + "\n")
    text = "\n".join(sections)
    (HERE / "results/optimize.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
