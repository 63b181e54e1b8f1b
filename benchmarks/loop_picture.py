"""The README's picture of the closed loop: the Evidently UI dashboard over the episode
tests/e2e/test_loop.py plays (v1 drifts on a new writing style, retrains on the harvested
labels, v2 in shadow, v2 promoted, the same traffic no longer drifts), shot with headless
Chromium, plus the episode's numbers as a Markdown table.

    MODELYARD_LOOP_KEEP=/tmp/loop .venv/bin/pytest tests/e2e/test_loop.py
    .venv/bin/python benchmarks/loop_picture.py /tmp/loop [--out benchmarks/results]

Reads the kept monitoring folder (the Evidently workspace and loop.json, which the test
writes there); writes evidently-loop.png and loop.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM = os.environ.get("MODELYARD_CHROMIUM", "/usr/bin/chromium")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", type=Path, help="MODELYARD_LOOP_KEEP of a test_loop run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args()
    measured = json.loads((args.kept / "loop.json").read_text())
    (args.out / "loop.md").write_text(table(measured))
    print(table(measured))
    shoot(args.kept / "workspace", args.out / "evidently-loop.png")


def table(m: dict[str, Any]) -> str:
    shadow = m["shadow"]
    rows = [
        "| measured on | rows | v1 (champion) | v2 (retrained on production labels) |",
        "|---|---|---|---|",
        f"| production test slice (held out, shifted digits) | {m['production_test']['rows']} "
        f"| {m['production_test']['v1']:.3f} | **{m['production_test']['v2']:.3f}** |",
        f"| base test split (unchanged) | {m['base_test']['rows']} | {m['base_test']['v1']:.3f} "
        f"| {m['base_test']['v2']:.3f} |",
        f"| live traffic in shadow (labelled rows) | {shadow['labelled']} "
        f"| {shadow['champion_accuracy']:.3f} | **{shadow['accuracy']:.3f}** "
        f"(agreement {shadow['agreement']:.3f}) |",
    ]
    after = m["drift_after"]
    return (
        "\n".join(rows) + f"\n\nThe same traffic served by {after['model']}: drifted share "
        f"{after['drift_share']:.2f} (ok).\n"
    )


def shoot(workspace: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    from monitoring import drift

    port = free_port()
    ui = subprocess.Popen(
        drift.ui_command(workspace, "127.0.0.1", port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        projects = wait_for(lambda: httpx.get(f"{base}/api/projects", timeout=2).json())
        project = projects[0]["id"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"{base}/projects/{project}", wait_until="networkidle")
            time.sleep(3)  # the panels draw after their data arrives
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        ui.terminate()
        ui.wait(timeout=20)
    print(f"wrote {out}")


def wait_for(fetch: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return fetch()
        if time.monotonic() > deadline:
            raise SystemExit("the Evidently UI did not answer")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
