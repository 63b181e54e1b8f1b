"""The CLI as users meet it.

Every command answers ``--help`` with its exit-code table; every code a table documents is
produced by a test (tests/exit_codes.py names which one, and tests/conftest.py checks that
the named test really saw it). Most of the cheap ones are produced here: a bad params file
(2), an empty project or registry (1, or 0 where "nothing yet" is a fine answer), an
unreachable registry or cluster (1), and the pipeline's stages on a small trained project.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelyard.app import app
from tests.conftest import (
    BIN,
    PIPELINE,
    REPO,
    Project,
    copy_of,
    free_port,
    interruptible,
    record_exit,
)
from tests.exit_codes import NOT_YET_PRODUCED, PRODUCED_BY

NAME = "digits-classifier"


def leaf_commands() -> dict[str, Any]:
    """Every runnable command of the app by its path (``deploy record``), from the app itself."""
    import typer.main

    found: dict[str, Any] = {}

    def walk(command: Any, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            found[" ".join(path)] = command
        for name, sub in (subcommands or {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


LEAVES = leaf_commands()
ENTRY = re.compile(r"(?:\A|;|\n\s*\n)\s*(\d+)\s+[^\d\s]")


def documented_codes(command: Any) -> set[int]:
    """The exit codes in a command's "Exit codes:" table (its help text or its epilog).

    Entries start the table, follow a ``;`` or open a paragraph: ``0 done; 1 ...``."""
    text = f"{command.help or ''}\n\n{command.epilog or ''}"
    _, found, table = text.partition("Exit codes:")
    return {int(code) for code in ENTRY.findall(table)} if found else set()


def invoke(*args: str, env: Mapping[str, str | None] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def words(text: str) -> str:
    return " ".join(text.split())


# -- help and exit-code tables ------------------------------------------------------------------


def test_the_entries_of_an_exit_code_table_are_read_as_written() -> None:
    class Command:
        help = "Send traffic.\n\nExit codes: 0 sent; 1 no test split, over 100 rows; 2 bad."
        epilog = None

    assert documented_codes(Command) == {0, 1, 2}
    Command.help, Command.epilog = "No table.", "Exit codes:\n\n0  fine.\n\n130  interrupted."  # type: ignore[assignment]
    assert documented_codes(Command) == {0, 130}
    Command.epilog = "No table here: 0 done; 1 failed."  # type: ignore[assignment]
    assert documented_codes(Command) == set()


@pytest.mark.parametrize("path", sorted(LEAVES))
def test_every_command_answers_help_with_its_exit_code_table(path: str) -> None:
    result = invoke(*path.split(), "--help")
    assert result.exit_code == 0, result.output
    shown = words(result.output)
    assert f"Usage: modelyard {path} " in shown
    assert "Exit codes" in shown, f"`modelyard {path} --help` has no exit-code table"
    # Success, and usage errors (click exits 2 on those for every command), at least.
    assert {0, 2} <= documented_codes(LEAVES[path]), shown


def test_the_root_help_lists_every_command_there_is() -> None:
    import typer.main

    result = invoke("--help")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if "─ Commands ─" in line)
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("╰"))
    listed = {m.group(1) for line in lines[start + 1 : end] if (m := re.match(r"│ (\S+)", line))}
    root: Any = typer.main.get_command(app)
    assert listed == {name for name, c in root.commands.items() if not c.hidden}


def test_each_documented_exit_code_is_produced_by_a_named_test() -> None:
    documented = {(path, code) for path, c in LEAVES.items() for code in documented_codes(c)}
    named, gaps = set(PRODUCED_BY), set(NOT_YET_PRODUCED)
    assert not named & gaps, f"both produced and not: {sorted(named & gaps)}"
    missing = sorted(documented - named - gaps)
    assert not missing, (
        "no test produces these documented exit codes; add one and name it in "
        f"tests/exit_codes.py: {', '.join(f'modelyard {p} -> {c}' for p, c in missing)}"
    )
    stale = sorted((named | gaps) - documented)
    assert not stale, f"tests/exit_codes.py names codes no help documents: {stale}"
    for node in set(PRODUCED_BY.values()):
        file, _, function = node.partition("::")
        tree = ast.parse((REPO / file).read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert function.split("[")[0] in defined, f"tests/exit_codes.py: no test {node}"


# -- 2: a configuration error, before anything else happens ---------------------------------------


def with_params() -> list[str]:
    return [p for p, c in LEAVES.items() if any(o.name == "params_file" for o in c.params)]


FILLER = {"model": f"{NAME}/1", "url": "http://127.0.0.1:9/webhook"}


def filler(command: Any) -> list[str]:
    """Values for a command's arguments and required options, shaped like real ones (so the
    command's own checks pass and the params file is what it stops on)."""
    args: list[str] = []
    for param in command.params:
        value = FILLER.get(param.name, "1")  # "1" parses as a str or an int
        if param.param_type_name == "argument":
            args.append(value)
        elif param.required:
            args += [param.opts[0], value]
    return args


@pytest.mark.parametrize("path", with_params())
def test_a_bad_params_file_stops_every_command_with_2(path: str, project: Project) -> None:
    bad = project.root / "bad.yaml"
    bad.write_text(project.params_path.read_text() + "trian:\n  epochs: 3\n")
    result = invoke(*path.split(), *filler(LEAVES[path]), "--params", str(bad))
    record_exit(path.split(), result.exit_code)
    assert result.exit_code == 2, result.output
    assert "trian" in words(result.output) and "Extra inputs are not permitted" in result.output


USAGE = [
    ["deploy", "base-image", "--no-such"],
    ["deploy", "undo", "--no-such"],
    ["registry", "server", "--no-such"],
    ["registry", "users", "apply"],
    ["webapp", "build", "--no-such"],
]


@pytest.mark.parametrize("args", USAGE, ids=" ".join)
def test_a_usage_error_is_2(args: list[str]) -> None:
    """The commands without a params file: click's usage errors exit 2 as documented."""
    result = invoke(*args)
    record_exit(args, result.exit_code)
    assert result.exit_code == 2
    assert re.search(r"Missing (option|argument)|No such option", words(result.output))


# -- an empty project, an empty or unreachable registry -------------------------------------------

EMPTY_PROJECT = [  # (command, its arguments, exit code, what it says)
    ("prepare", [], 1, "Run `modelyard ingest` first"),
    ("validate", [], 1, "Run `modelyard ingest` first"),
    ("train", [], 1, "run `modelyard validate` first"),
    ("export", [], 1, "Run `modelyard prepare"),
    ("optimize", [], 1, "Run `modelyard prepare"),
    ("evaluate", [], 1, "Run `modelyard prepare"),
    ("summary", [], 1, "no complete run yet"),
    ("promote", [NAME, "1", "--reviewer", "rui@example.com"], 1, "RESOURCE_DOES_NOT_EXIST"),
    ("rollback", [NAME], 1, f"{NAME} has no champion to roll back from"),
    ("build", [], 1, f"{NAME} has no version with alias @challenger"),
    ("serve", [], 1, f"{NAME} has no version with alias @challenger"),
    ("deploy record", [NAME, "1", "--image", "x:y"], 1, f"{NAME} has no version 1"),
    ("deploy containerize", [f"{NAME}/1"], 1, f"{NAME} has no version 1"),
    ("simulate-traffic", ["--url", "http://127.0.0.1:9"], 1, "test.parquet not found"),
    ("monitor ui", [], 1, "no workspace at"),
    ("champion", [], 0, f"champion of {NAME}: none yet"),
    ("registry reconcile", [NAME], 0, f"reconcile {NAME}: no-champion"),
]


# The commands that run DVC (a subprocess): the e2e tier.
EMPTY_PROJECT_DVC = [
    ("run", [], 1, "dvc repro failed"),
    ("diff", [], 1, "dvc metrics diff main failed"),
]


def says_what_is_missing(
    project: Project, path: str, args: list[str], code: int, says: str
) -> None:
    result = project.cli(*path.split(), *args)
    assert result.exit_code == code, result.output
    assert says in words(result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback


@pytest.mark.parametrize(
    ("path", "args", "code", "says"), EMPTY_PROJECT, ids=[case[0] for case in EMPTY_PROJECT]
)
def test_in_an_empty_project_each_command_says_what_is_missing(
    project: Project, path: str, args: list[str], code: int, says: str, monkeypatch: Any
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one message, one line: paths are not wrapped
    says_what_is_missing(project, path, args, code, says)


@pytest.mark.parametrize(
    ("path", "args", "code", "says"), EMPTY_PROJECT_DVC, ids=[c[0] for c in EMPTY_PROJECT_DVC]
)
def test_in_an_empty_project_the_dvc_commands_say_what_is_missing(
    e2e_tier: None,
    project: Project,
    path: str,
    args: list[str],
    code: int,
    says: str,
    monkeypatch: Any,
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one message, one line: paths are not wrapped
    says_what_is_missing(project, path, args, code, says)


def test_ingest_of_an_unreadable_file_is_bad_data(project: Project) -> None:
    (project.root / "data/sources/mine.parquet").write_bytes(b"PAR1 not really")
    project.set_params(ingest={"source": "data/sources/mine.parquet"})
    result = project.cli("ingest")
    assert result.exit_code == 1, result.output
    assert "cannot read" in words(result.output) and "mine.parquet" in result.output
    assert not (project.root / "data/raw/dataset.csv").exists()


def test_ingest_of_a_missing_file_is_a_config_error(project: Project) -> None:
    project.set_params(ingest={"source": "data/sources/nowhere.csv"})
    result = project.cli("ingest")
    assert result.exit_code == 2, result.output
    assert "nowhere.csv" in result.output and "dvc add" in words(result.output)


def test_register_before_evaluate_says_what_to_run(project: Project) -> None:
    result = project.cli("register")
    assert result.exit_code == 2, result.output
    assert "gates.json is missing" in words(result.output)
    assert "modelyard run" in words(result.output)
    assert not isinstance(result.exception, FileNotFoundError)  # no traceback


UNREACHABLE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MODELYARD_WEBHOOK_SECRET": "s3cret",
}


@pytest.mark.parametrize(
    "args",
    [
        ["champion"],
        ["registry", "reconcile", NAME],
        ["registry", "webhook", "install", "--url", "http://127.0.0.1:9/webhook"],
    ],
    ids=" ".join,
)
def test_an_unreachable_registry_stops_registry_commands_with_1(
    project: Project, args: list[str]
) -> None:
    """An outage is an error, never "no champion" or "nothing to do"."""
    uri = f"http://127.0.0.1:{free_port()}"
    result = invoke(
        *args, "--params", str(project.params_path), env={**UNREACHABLE, "MLFLOW_TRACKING_URI": uri}
    )
    record_exit(args, result.exit_code)
    assert result.exit_code == 1, result.output
    assert "127.0.0.1" in words(result.output)


TEAM_VARIABLES = {
    "MODELYARD_GATE_URL": None,
    "MODELYARD_GATE_KEY": None,
    "MODELYARD_GATE_PUBLIC_KEY": None,
}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["approve", NAME, "1", "--comment", "looks good"], "set MODELYARD_GATE_URL"),
        (["registry", "verify", NAME, "1"], "set MODELYARD_GATE_PUBLIC_KEY"),
    ],
    ids=["approve", "registry verify"],
)
def test_team_commands_without_their_variables_are_2(args: list[str], says: str) -> None:
    result = invoke(*args, env={**TEAM_VARIABLES, "MLFLOW_TRACKING_URI": None})
    record_exit(args, result.exit_code)
    assert result.exit_code == 2, result.output
    assert says in words(result.output)


def test_registry_verify_stops_when_the_registry_is_unreachable() -> None:
    args = ["registry", "verify", NAME, "1"]
    uri = f"http://127.0.0.1:{free_port()}"
    env = {**UNREACHABLE, "MODELYARD_GATE_PUBLIC_KEY": "6b" * 32, "MLFLOW_TRACKING_URI": uri}
    result = invoke(*args, env=env)
    record_exit(args, result.exit_code)
    assert result.exit_code == 1, result.output
    assert "verify failed: cannot read the registered model" in words(result.output)


def test_ui_on_a_tracking_server_points_at_it(project: Project) -> None:
    result = invoke(
        "ui",
        "--params",
        str(project.params_path),
        env={"MLFLOW_TRACKING_URI": "http://10.0.0.5:5000"},
    )
    record_exit(["ui"], result.exit_code)
    assert result.exit_code == 0
    assert "MLFLOW_TRACKING_URI points at a server: open http://10.0.0.5:5000" in result.output


def test_deploy_base_image_without_buildah_says_what_to_install(tmp_path: Path) -> None:
    args = ["deploy", "base-image", "--cache-dir", str(tmp_path / "cache")]
    result = invoke(*args, env={"PATH": str(tmp_path)})
    record_exit(args, result.exit_code)
    assert result.exit_code == 1, result.output
    assert "is not on PATH" in words(result.output) and "make system-tools" in result.output
    assert not (tmp_path / "cache").exists()


def test_registry_listen_needs_the_webhook_secret(project: Project) -> None:
    result = invoke(
        "registry",
        "listen",
        "--params",
        str(project.params_path),
        env={"MODELYARD_WEBHOOK_SECRET": None},
    )
    record_exit(["registry", "listen"], result.exit_code)
    assert result.exit_code == 2
    assert "MODELYARD_WEBHOOK_SECRET is not set" in words(result.output)


@pytest.mark.slow
def test_registry_listen_stops_cleanly_on_ctrl_c(server_tier: None, project: Project) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MODELYARD_WEBHOOK_SECRET"] = "s3cret"
    args = ["registry", "listen", "--port", str(port), "--params", str(project.params_path)]
    proc = subprocess.Popen(
        [str(BIN / "modelyard"), *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=interruptible,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    record_exit(args, proc.returncode)
    assert proc.returncode == 0, out
    assert "stopped" in out


def test_servers_on_a_port_in_use_say_so_and_exit_1(project: Project) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        ui = project.cli("ui", "--port", port)
        listen = invoke(
            "registry",
            "listen",
            "--port",
            port,
            "--params",
            str(project.params_path),
            env={"MODELYARD_WEBHOOK_SECRET": "s3cret"},
        )
    record_exit(["registry", "listen"], listen.exit_code)
    for result in (ui, listen):
        assert result.exit_code == 1, result.output
        assert f"cannot listen on 127.0.0.1:{port}" in words(result.output)
        assert "another port with --port" in words(result.output)
        assert not isinstance(result.exception, OSError)  # a message, not a traceback


def wait_until_up(url: str, proc: subprocess.Popen[Any], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, f"{url} did not answer in {seconds:g} s"
        time.sleep(0.5)


# -- the pipeline's stages on a small trained project --------------------------------------------

STAGES = PIPELINE


@pytest.fixture(scope="module")
def trained(trained_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    """The session's trained digits project (every stage ran), this module's own copy."""
    return copy_of(trained_template, tmp_path_factory.mktemp("cli") / "project")


@pytest.mark.slow
def test_summary_after_the_stages_shows_metrics_gates_and_the_version(trained: Project) -> None:
    result = trained.cli("summary")
    assert result.exit_code == 0, result.output
    shown = words(result.output)
    assert "test-set metrics" in shown and "gates: all passed" in shown
    assert f"{NAME} v1" in shown and "@challenger" in shown


# -- the MLflow UI -------------------------------------------------------------------------------


def test_ui_serves_the_local_store(server_tier: None, project: Project, tmp_path: Path) -> None:
    project.stages("ingest")  # any command; the store appears on first use
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [str(BIN / "modelyard"), "ui", "--port", str(port), "--params", str(project.params_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert b"MLflow" in r.read()
        assert (project.root / ".modelyard/mlflow.db").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
