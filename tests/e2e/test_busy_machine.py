"""The first command on a busy machine (issue 22, item 1): evaluate's latency gate measures
the model, not the machine's load.

A clone after `modelyard run` (tests.conftest.ran_repo), its own copy, with a budget that
a busy machine's wall clock breaks (1 ms p99 at batch 1, where the model spends ~0.02 ms
of CPU and a preempted call waits a whole scheduler slice): `modelyard run` registers while
two busy processes keep both CPUs loaded (with the run itself, more runnable work than
CPUs; four slowed the suite's other worker to a third of a CPU for no more proof). A budget the model itself cannot meet is refused,
naming CPU time and how to measure again; `--remeasure` runs evaluate again without a change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import copy_repo, git, kill_tree, modelyard
from tests.e2e.test_dvc_pipeline import edit_params, ran_stages

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("e2e_tier")]


@contextmanager
def busy(processes: int = 2) -> Iterator[None]:
    """``processes`` spinning Python processes: more runnable work than CPUs."""
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)
    ]
    try:
        yield
    finally:
        for proc in spinners:
            kill_tree(proc.pid)


def budget(ran_repo: Path, tmp_path: Path, max_p99_ms: float) -> Path:
    root = copy_repo(ran_repo, tmp_path / "repo")
    edit_params(root, evaluate={"max_p99_ms": max_p99_ms})
    git(root, "commit", "-qam", f"latency budget {max_p99_ms} ms")
    return root


def batch_1(root: Path) -> dict[str, float]:
    details = json.loads((root / "data/reports/evaluate.details.json").read_text())
    return dict(details["latency"]["batch_1"])


def test_a_busy_machine_does_not_fail_the_latency_gate(ran_repo: Path, tmp_path: Path) -> None:
    root = budget(ran_repo, tmp_path, 1.0)
    with busy():
        proc = modelyard(root, "run", check=False)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 0, out[-3000:]
    assert "evaluate" in ran_stages(proc.stdout) and "gates: all passed" in out
    measured = batch_1(root)
    assert measured["cpu_p99_ms"] <= 1.0
    assert measured["load_1min"] > 0  # the load at the time is reported beside the figure
    gates = json.loads((root / "data/reports/gates.json").read_text())["gates"]
    assert "CPU time per call" in gates["max_p99_ms"]["detail"]
    print(f"\nbusy machine: {measured} (load {os.getloadavg()})")


def test_a_model_slower_than_its_budget_is_refused_and_can_be_measured_again(
    ran_repo: Path, tmp_path: Path
) -> None:
    """0.1 us of CPU per call: no model meets it, on any machine."""
    root = budget(ran_repo, tmp_path, 0.0001)
    refused = modelyard(root, "run", check=False)
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode == 1, said[-3000:]
    assert "max_p99_ms" in said and "CPU time per call, p99" in said
    assert "modelyard run --remeasure" in said
    assert batch_1(root)["cpu_p99_ms"] > 0.0001

    again = modelyard(root, "run", check=False)  # nothing changed: evaluate is not re-run
    assert again.returncode == 1 and "evaluate" not in ran_stages(again.stdout)
    remeasured = modelyard(root, "run", "--remeasure", check=False)
    assert remeasured.returncode == 1 and "evaluate" in ran_stages(remeasured.stdout)
