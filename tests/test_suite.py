"""The test suite's own rules: every test has a timeout, the CLI recorder that
tests/exit_codes.py relies on reads command paths the way the app does, tiers come from
fixtures (a fast test cannot start a subprocess), and a copied project is its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import (
    REPO,
    SLOW_TIMEOUT,
    Project,
    SubprocessInFastTier,
    command_path,
    tier_of,
)


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


def test_a_files_tests_share_one_worker_under_xdist(e2e_tier: None) -> None:
    """`make test`'s --dist loadgroup keeps the group the collection hook gives (a file)
    on one worker, so module fixtures are built once. pytest 9.2 silently dropped the
    group (pytest-xdist#1386) and every image was built twice: requirements pin below."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v",
         "-p", "no:cacheprovider", "tests/test_suite.py", "-k", "recorder or carries"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    ran = re.findall(r"^\[(gw\d)\] .*PASSED (.+?) *$", done.stdout, re.MULTILINE)
    assert len(ran) == 6, done.stdout
    assert all(test.endswith("@tests/test_suite.py") for _, test in ran), ran
    assert len({worker for worker, _ in ran}) == 1, ran


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


# -- tiers (tests/conftest.py derives them from the fixtures a test uses) ----------------------


@pytest.mark.parametrize(
    ("fixtures", "tier"),
    [
        ([], "fast"),
        (["tmp_path", "project"], "fast"),
        (["server_tier"], "server"),
        (["server_tier", "e2e_tier"], "e2e"),
        (["e2e_tier", "image_tier", "server_tier"], "image"),
        (["browser_tier", "image_tier"], "browser"),
    ],
)
def test_the_costliest_tier_fixture_names_the_tier(fixtures: list[str], tier: str) -> None:
    assert tier_of(fixtures) == tier


def test_a_fast_test_carries_the_fast_marker(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("fast") is not None
    assert request.node.get_closest_marker("slow") is None


def test_a_fixture_that_asks_for_a_tier_puts_its_tests_there(
    trained_project: Project, request: pytest.FixtureRequest
) -> None:
    """trained_project -> trained_template -> evaluated_template -> e2e_tier."""
    assert request.node.get_closest_marker("e2e") is not None
    assert request.node.get_closest_marker("fast") is None
    assert (trained_project.root / ".modelyard/mlflow.db").exists()


def test_a_fast_test_that_starts_a_subprocess_fails_naming_the_fix() -> None:
    with pytest.raises(SubprocessInFastTier, match=r"started a subprocess: \['true'\].*e2e_tier"):
        subprocess.run(["true"], check=False)


def test_a_copied_project_reads_and_writes_its_own_store(trained_project: Project) -> None:
    """tests/trained.py rewrote the template's paths in the copy's MLflow store."""
    registry = trained_project.registry()
    (version,) = registry.versions("digits-classifier")
    run = registry.client.get_run(version.run_id)
    assert run.info.artifact_uri.startswith((trained_project.root / ".modelyard").as_uri())
    folder = registry.download("digits-classifier", version.version)
    assert (folder / "model.onnx").is_file()
