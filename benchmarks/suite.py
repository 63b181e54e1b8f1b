"""The test suite's own figure: each tier's wall time on a fresh clone, with the machine.

Clones HEAD of this repository into a temporary folder (committed files only, as CI sees
them), then runs pytest there once per requested run, exactly as `make test-fast`
(``-m fast``) and `make test` (every tier) do, with the same xdist options, and writes
benchmarks/results/suite.{json,md}: per run the wall time, pytest's counts (from its
JUnit XML), and the load average and CPU count when it started. No timed assert: a
figure for the README, measured in the same run for every tier.

    python benchmarks/suite.py                      # fast, then all (make test)
    python benchmarks/suite.py --runs fast,server,e2e,image,browser,all
    python benchmarks/suite.py --install            # also time `make setup` in the clone

By default the clone uses this venv (its own code on PYTHONPATH); ``--install`` builds the
clone's own venv with `make setup` first and times that too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent
XDIST = ["-n", "auto", "--dist", "loadgroup", "--no-loadscope-reorder"]  # as the Makefile
RUNS = {  # name -> pytest's marker expression (None: every tier, as `make test`)
    "fast": "fast",
    "server": "server",
    "e2e": "e2e",
    "image": "image",
    "browser": "browser",
    "all": None,
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def counts(junit: Path) -> dict[str, int]:
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None, f"{junit}: no testsuite"
    total = int(suite.get("tests", 0))
    failed, errors = int(suite.get("failures", 0)), int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return {
        "tests": total,
        "passed": total - failed - errors - skipped,
        "failed": failed,
        "errors": errors,
        "skipped": skipped,
    }


def make_command(run: str) -> str:
    """The make target that runs what ``run`` measures."""
    return "make test" if RUNS[run] is None else f"make test-{RUNS[run]}"


def run_tier(clone: Path, python_bin: Path, name: str, env: dict[str, str]) -> dict[str, object]:
    marker = RUNS[name]
    junit = clone / f".suite-{name}.xml"
    cmd = [
        str(python_bin / "pytest"),
        *XDIST,
        "-p",
        "no:cacheprovider",
        "-q",
        "--junitxml",
        str(junit),
    ]
    if marker:
        cmd += ["-m", marker]
    load = os.getloadavg()
    print(f"suite: {name}: {' '.join(cmd[1:])} (load {load[0]:.2f})", flush=True)
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    (HERE / "results" / f"suite-{name}.log").write_text(done.stdout[-20000:] + done.stderr[-5000:])
    result: dict[str, object] = {
        "run": name,
        "command": make_command(name),
        "seconds": round(seconds, 1),
        "exit_code": done.returncode,
        "load_at_start": [round(x, 2) for x in load],
        **(counts(junit) if junit.exists() else {}),
    }
    print(f"suite: {name}: {seconds / 60:.1f} min, exit {done.returncode}, {result}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", default="fast,all", help="comma-separated: " + ",".join(RUNS))
    parser.add_argument("--install", action="store_true", help="time `make setup` in the clone")
    args = parser.parse_args()
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    report: dict[str, object] = {
        "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "xdist": " ".join(XDIST),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="modelyard-suite-") as tmp:
        clone = Path(tmp) / "modelyard"
        subprocess.run(["git", "clone", "-q", "--no-local", str(ROOT), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        if args.install:
            started = time.monotonic()
            subprocess.run(
                ["make", "setup", "system-tools", "browser-tools"], cwd=clone, check=True
            )
            report["install_seconds"] = round(time.monotonic() - started, 1)
            python_bin = clone / ".venv/bin"
        else:
            python_bin = BIN
            env["PYTHONPATH"] = str(clone)  # the clone's code, not this checkout's
        env["PATH"] = f"{python_bin}{os.pathsep}{env['PATH']}"
        runs = [run_tier(clone, python_bin, name, env) for name in names]
        report["runs"] = runs
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results/suite.json").write_text(json.dumps(report, indent=2) + "\n")
    (HERE / "results/suite.md").write_text(markdown(report))
    print((HERE / "results/suite.md").read_text())
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


def markdown(report: dict[str, object]) -> str:
    lines = [
        f"Commit {report['commit']}, {report['date']}: {report['cpus']} CPUs ({report['cpu']}), "
        f"Python {report['python']}, pytest {report['xdist']}.",
        "",
        "| run | command | wall time | tests | passed | skipped | failed+errors | load at start (1/5/15 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:  # type: ignore[attr-defined]
        load = "/".join(f"{x:.2f}" for x in r["load_at_start"])
        bad = int(r.get("failed", 0)) + int(r.get("errors", 0))
        lines.append(
            f"| {r['run']} | `{make_command(r['run'])}` | {r['seconds'] / 60:.1f} min | {r.get('tests', '?')} "
            f"| {r.get('passed', '?')} | {r.get('skipped', '?')} | {bad} | {load} |"
        )
    if "install_seconds" in report:
        lines += ["", f"`make setup` in the fresh clone: {report['install_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
