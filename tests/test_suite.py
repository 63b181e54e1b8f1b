"""The test suite's own rules: every test has a timeout, and the CLI recorder that
tests/exit_codes.py relies on reads command paths the way the app does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO, SLOW_TIMEOUT, command_path


def test_a_test_gets_the_global_timeout(request: pytest.FixtureRequest) -> None:
    assert float(request.config.getini("timeout")) == 300
    assert request.node.get_closest_marker("timeout") is None  # the ini value applies


@pytest.mark.slow
def test_a_slow_test_gets_the_long_timeout(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None and marker.args == (SLOW_TIMEOUT,)


def test_a_hung_test_fails_at_its_timeout(e2e_tier: None, tmp_path: Path) -> None:
    """pytest-timeout is active with this configuration: a test that hangs fails."""
    test = tmp_path / "test_hang.py"
    test.write_text(
        textwrap.dedent(
            """
            import time
            import pytest

            @pytest.mark.timeout(1)
            def test_hangs():
                time.sleep(30)
            """
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(REPO / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(test),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Timeout (>1.0s) from pytest-timeout" in done.stdout


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (["deploy", "record", "m", "1", "--image", "x"], "deploy record"),
        (["-v", "ingest", "--params", "p.yaml"], "ingest"),
        (["registry", "webhook", "install", "--url", "u"], "registry webhook install"),
        (["monitor", "run", "--since", "1h"], "monitor run"),
        (["no-such-command"], ""),
    ],
)
def test_the_recorder_reads_the_command_path_from_the_app(args: list[str], path: str) -> None:
    assert command_path(args) == path
