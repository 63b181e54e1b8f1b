"""The README's screenshot of a model card: two real, quick pipeline runs on a local
`mlflow server`, the first promoted, the second registered with its card (the version's
description), and the second version's page in the MLflow UI shot with headless Chromium.

    .venv/bin/python benchmarks/model_card.py [--out benchmarks/results/model-card.png]

Small training settings (a few epochs, a short optimize) so it takes minutes, not an hour;
v1 is trained for fewer epochs than v2. Nothing here touches the project's own store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("MODELYARD_CHROMIUM", "/usr/bin/chromium")
STAGES = ("ingest", "prepare", "validate", "train", "export", "optimize", "evaluate", "register")
FAST = {
    "optimize": {"runs": 200, "rounds": 2, "warmup": 5, "finetune_epochs": 1},
    "evaluate": {"latency_runs": 100},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/model-card.png")
    parser.add_argument("--port", type=int, default=5087)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelyard-card-") as tmp:
        base = Path(tmp)
        server = start_mlflow(base, args.port)
        try:
            uri = f"http://127.0.0.1:{args.port}"
            project = make_project(base / "project")
            env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GITHUB_ACTOR": "dana-gh"}
            # v1: a weaker model (4 epochs) with gates it can pass, promoted
            relaxed = {"min_accuracy": 0.8, "min_macro_f1": 0.8, "min_class_recall": 0.5}
            set_params(project, train={"epochs": 4}, evaluate=relaxed)
            run(project, env, "champion")
            run(project, env, *STAGES)
            run(project, env, "promote", "digits-classifier", "1", "--reviewer", "rui@example.com")
            # v2: 12 epochs, the shipped gates, compared with v1
            shipped = yaml.safe_load((REPO / "params.yaml").read_text())["evaluate"]
            set_params(project, train={"epochs": 12}, evaluate={**shipped, **FAST["evaluate"]})
            run(project, env, "train", "export", "optimize", "evaluate", "register")
            page = f"{uri}/#/models/digits-classifier/versions/2"
            shoot(page, args.out)
            print(f"{page} -> {args.out}")
        finally:
            stop(server)


def start_mlflow(base: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{base}/mlflow.db"]
    cmd += ["--artifacts-destination", str(base / "artifacts"), "--port", str(port)]
    server = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--workers", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.5)
    stop(server)
    raise SystemExit("mlflow server did not start")


def make_project(root: Path) -> Path:
    """A copy of this project's params and data suite, in a git repository of its own (the
    card names the commit and its author)."""
    root.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copytree(REPO / "data/expectations", root / "data/expectations")
    (root / "data/sources").mkdir(parents=True)
    set_params(root, optimize=FAST["optimize"], evaluate=FAST["evaluate"])
    git = {"GIT_AUTHOR_NAME": "Dana", "GIT_AUTHOR_EMAIL": "dana@example.com"}
    git |= {"GIT_COMMITTER_NAME": "Dana", "GIT_COMMITTER_EMAIL": "dana@example.com"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "card"]):
        subprocess.run(["git", *cmd], cwd=root, check=True, env={**os.environ, **git})
    return root


def set_params(root: Path, **sections: dict[str, Any]) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        params[name] = {**params[name], **values}
    path.write_text(yaml.safe_dump(params))


def run(root: Path, env: dict[str, str], *commands: str) -> None:
    """Each stage as its own command; `promote`/`champion` as one command line."""
    lines = [[c] for c in commands] if commands[0] in STAGES else [list(commands)]
    for line in lines:
        done = subprocess.run(
            [str(BIN / "modelyard"), *line, "--params", str(root / "params.yaml")],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"modelyard {' '.join(line)} failed:\n{done.stdout}{done.stderr}")
        print(f"modelyard {' '.join(line)}: ok", flush=True)


def shoot(url: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += ["--virtual-time-budget=20000", "--window-size=1400,1250", f"--screenshot={out}"]
    subprocess.run([*cmd, url], check=True, capture_output=True, timeout=180)


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        parent = psutil.Process(process.pid)
    except psutil.NoSuchProcess:
        return
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        p.terminate()
    psutil.wait_procs(procs, timeout=20)


if __name__ == "__main__":
    main()
