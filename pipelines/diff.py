"""`modelyard diff`: `dvc metrics diff` and `dvc params diff` against a base revision, as
Markdown (the body of CI's pull-request comment)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from core import tools
from core.errors import PipelineFailed

MARKER = "<!-- modelyard:diff -->"


def markdown(root: Path, *, base: str) -> str:
    """The comment body: metrics (all of them) and params that differ from ``base``."""
    dvc = tools.binary("dvc")
    parts = [MARKER, f"### modelyard: metrics and params against `{base}`"]
    for kind, extra in (("metrics", ["--all"]), ("params", [])):
        done = subprocess.run(
            [dvc, kind, "diff", base, "--md", *extra],
            cwd=root,
            capture_output=True,
            text=True,
            env=tools.env(),
        )
        if done.returncode != 0:
            raise PipelineFailed(f"dvc {kind} diff {base} failed: {done.stderr.strip()}")
        rows = [line for line in done.stdout.strip().splitlines() if line.strip()]
        body = "\n".join(rows) if len(rows) > 2 else f"_no {kind} changed_"
        parts += [f"#### {kind}", body]
    return "\n\n".join(parts) + "\n"
