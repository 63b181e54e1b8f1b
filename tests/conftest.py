"""Shared fixtures: temporary projects driven through the real CLI, DVC and MLflow.

Every test gets its own project folder, so its MLflow store (embedded SQLite under
``.modelyard/``) and its DVC state are its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

os.environ.update(
    MLFLOW_DISABLE_TELEMETRY="true",
    DO_NOT_TRACK="1",
    BENTOML_DO_NOT_TRACK="true",
    GX_ANALYTICS_ENABLED="false",
    DVC_NO_ANALYTICS="1",
)
# pytest-xdist's workers start with COLUMNS=80 and LINES=24 (a serial run has neither): a
# CLI a test starts would wrap its output at 80 columns there, and only there.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def _own_tracking_uri() -> Iterator[None]:
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; keep tests apart. Popped, not
    monkeypatched: monkeypatch's undo would put back a URI that an in-process stage of a
    session fixture exported (a shared template's store), for the next module's fixtures
    to register into."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


class Project:
    """A temporary modelyard project: params.yaml, the expectation suites, a store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runner = CliRunner()

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    def params(self) -> dict[str, Any]:
        return yaml.safe_load(self.params_path.read_text())

    def set_params(self, **sections: Any) -> None:
        self.params_path.write_text(yaml.safe_dump(deep_merge(self.params(), sections)))

    def cli(self, *args: str) -> Any:
        from modelyard.app import app

        # This project's own store: never one a previous command exported (mlflow's
        # set_tracking_uri sets MLFLOW_TRACKING_URI for the whole process, and module-scoped
        # fixtures run before the per-test cleanup below).
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        result = self.runner.invoke(app, [*args, "--params", str(self.params_path)])
        record_exit(args, result.exit_code)
        return result

    def stages(self, *names: str) -> None:
        for name in names:
            result = self.cli(name)
            assert result.exit_code == 0, f"{name} failed:\n{result.output}"

    def report(self, name: str) -> Any:
        import json

        return json.loads((self.root / "data/reports" / name).read_text())

    def registry(self) -> Any:
        from pipelines import tracking
        from registry.client import Registry

        return Registry(tracking.tracking_uri(self.root))


def new_project(root: Path, params_file: Path = REPO / "params.yaml") -> Project:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(params_file, root / "params.yaml")
    shutil.copytree(REPO / "data/expectations", root / "data/expectations")
    (root / "data/sources").mkdir(parents=True)
    project = Project(root)
    project.set_params(optimize=FAST_OPTIMIZE)
    return project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return new_project(tmp_path / "project")


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Project]:
    counter = iter(range(100))

    def make(params_file: Path = REPO / "params.yaml") -> Project:
        return new_project(tmp_path / f"project{next(counter)}", params_file)

    return make


# Small, fast training settings for tests that need a trained model but not a good one.
FAST_TRAIN = {"epochs": 12, "patience": 4}
# Every stage, in the order `dvc repro` runs them, plus `champion` (the pointer evaluate
# reads): what a test runs to get a registered version without DVC.
PIPELINE = (
    "champion",
    "ingest",
    "prepare",
    "validate",
    "train",
    "export",
    "optimize",
    "evaluate",
    "register",
)
# Every variant is still built and measured, with fewer timed calls (test_optimize.py
# uses the shipped settings where the measured choice matters).
FAST_OPTIMIZE = {
    "runs": 200,
    "rounds": 2,
    "warmup": 5,
    "finetune_epochs": 1,
    "calibration_rows": 64,
}


# -- trained projects, paid for once per session (tests/trained.py) ---------------------------


def shared_template(
    factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None], *, fixture: str
) -> Path:
    """tests.trained.shared, keeping what the CLI answered while building: the exits the
    build saw (tests/exit_codes.py counts them for ``fixture``, the fixture that asks) are
    written beside the template and counted again for it when another worker built it.
    (A session fixture's setup does not reach this conftest's pytest_fixture_setup: its
    node is the session, above tests/, so the fixture is named here.)"""
    import json

    from tests.trained import shared

    me = f"fixture:{fixture}"

    def recorded(folder: Path) -> None:
        before = {pair for pair, seen in CLI_EXITS.items() if me in seen}
        _RUNNING.append(me)
        try:
            build(folder)
        finally:
            _RUNNING.pop()
            os.environ.pop("MLFLOW_TRACKING_URI", None)  # the in-process stages exported it
        made = {pair for pair, seen in CLI_EXITS.items() if me in seen} - before
        folder.with_suffix(".exits.json").write_text(json.dumps(sorted(made)))

    folder = shared(factory, name, recorded)
    for cmd, code in json.loads(folder.with_suffix(".exits.json").read_text()):
        CLI_EXITS.setdefault((cmd, code), set()).add(me)
    return folder


def copy_of(template: Path, dest: Path) -> Project:
    """A project of its own at ``dest``, copied from a trained template."""
    from tests.trained import copy_project

    return Project(copy_project(template, dest))


@pytest.fixture(scope="session")
def evaluated_template(e2e_tier: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits (FAST_TRAIN) after every stage up to evaluate, nothing registered yet."""

    def build(folder: Path) -> None:
        project = new_project(folder)
        project.set_params(train=FAST_TRAIN)
        project.stages(*PIPELINE[: PIPELINE.index("register")])

    return shared_template(
        tmp_path_factory, "digits-evaluated", build, fixture="evaluated_template"
    )


@pytest.fixture(scope="session")
def trained_template(evaluated_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits (FAST_TRAIN) after every stage: digits-classifier v1, @challenger."""

    def build(folder: Path) -> None:
        copy_of(evaluated_template, folder).stages("register")

    return shared_template(tmp_path_factory, "digits", build, fixture="trained_template")


@pytest.fixture
def trained_project(trained_template: Path, tmp_path: Path) -> Project:
    """This test's own copy of the trained digits project (v1 registered)."""
    return copy_of(trained_template, tmp_path / "project")


@pytest.fixture
def evaluated_project(evaluated_template: Path, tmp_path: Path) -> Project:
    """This test's own copy of the digits project evaluated but not registered."""
    return copy_of(evaluated_template, tmp_path / "project")


# The loop's settings, committed in the clone the git-based tests start from.
REPO_PARAMS: dict[str, Any] = {
    "optimize": FAST_OPTIMIZE,
    "monitor": {"min_rows": 200},
    "evaluate": {"min_production_rows": 30},
}


@pytest.fixture(scope="session")
def ran_repo(e2e_tier: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git clone of this repository after `modelyard run` (the shipped training, the fast
    optimize measurement), run as `.venv/bin/modelyard run` without an activated venv: the
    stages DVC runs must still find the venv's tools. Its output is in ``<repo>.out``.
    Tests never change it: each takes its own copy (``copy_repo``)."""

    def build(folder: Path) -> None:
        git_copy(folder)
        params = yaml.safe_load((folder / "params.yaml").read_text())
        for name, values in REPO_PARAMS.items():
            params[name] = {**params.get(name, {}), **values}
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        git(folder, "commit", "-qam", "fast params")
        assert not (Path("/usr/bin") / "modelyard").exists()
        proc = modelyard(folder, "run", env={"PATH": "/usr/bin:/bin"})
        folder.with_suffix(".out").write_text(proc.stdout)

    return shared_template(tmp_path_factory, "repo", build, fixture="ran_repo")


def copy_repo(ran_repo: Path, dest: Path) -> Path:
    from tests.trained import copy_project

    return copy_project(ran_repo, dest)


def git_copy(dest: Path) -> Path:
    """A fresh git repository holding the committed-or-staged files of this repo,
    plus the working-tree versions of them (so uncommitted edits are tested too)."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    for rel in tracked:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-qm", "test copy")
    return dest


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env
    ).stdout


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _tool("dvc", cwd, args, check)


def modelyard(
    cwd: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return _tool("modelyard", cwd, args, check, env)


def _tool(
    name: str, cwd: Path, args: tuple[str, ...], check: bool, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a console script of this venv the way a user would, in ``cwd``."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra or {})
    proc = subprocess.run(
        [str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, env=env
    )
    if name == "modelyard":
        record_exit(args, proc.returncode)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


# pyproject.toml sets 300 s per test (fixtures included); known-slow tests get longer.
SLOW_TIMEOUT = 1200

# -- tiers ------------------------------------------------------------------------------------
# A test's tier is the costliest thing its fixtures start, read from the fixture closure at
# collection (never set by hand): a fixture that starts a server asks for `server_tier`, one
# that runs a whole pipeline or a tool as a subprocess `e2e_tier`, one that builds or runs an
# OCI image `image_tier`, one that drives chromium `browser_tier`; a test that needs one of
# those itself names it (`pytest.mark.usefixtures("e2e_tier")`). Everything else is `fast`:
# in-process, no server, no subprocess, and `fast_guard` below fails a fast test that starts
# a subprocess, so a test cannot sit in the fast tier by mistake.
TIERS = ("fast", "server", "e2e", "image", "browser")  # cheapest first
GROUP_COST = ("fast", "server", "browser", "e2e", "image")  # a group's typical wall time
TIER_OF: dict[str, str] = {f"{tier}_tier": tier for tier in TIERS[1:]}
ORIGINAL_NODEID = pytest.StashKey[str]()


def tier_of(fixturenames: Sequence[str]) -> str:
    """The costliest tier whose fixture is in ``fixturenames`` (``fast`` if none)."""
    found = {TIER_OF[name] for name in fixturenames if name in TIER_OF}
    return max(found, key=TIERS.index, default="fast")


@pytest.fixture(scope="session")
def server_tier() -> None:
    """Asked for by fixtures (or tests) that start a server (MLflow, PostgreSQL, bentoml)."""


@pytest.fixture(scope="session")
def e2e_tier() -> None:
    """Asked for by fixtures (or tests) that run the pipeline, the CLI or a tool as a
    subprocess (dvc, git, kubectl) or train a model."""


@pytest.fixture(scope="session")
def image_tier() -> None:
    """Asked for by fixtures (or tests) that build, push or run an OCI image (buildah)."""


@pytest.fixture(scope="session")
def browser_tier() -> None:
    """Asked for by fixtures (or tests) that drive a real browser (chromium)."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier; under xdist, keep a file's tests on one worker (its
    module fixtures are built once) and every image test on the same one (one buildah
    storage, one base image)."""
    costliest: dict[str, int] = {}  # group -> the costliest tier of its tests
    group_of: dict[str, str] = {}
    for item in items:
        item.stash[ORIGINAL_NODEID] = item.nodeid
        tier = tier_of(getattr(item, "fixturenames", ()))
        item.add_marker(getattr(pytest.mark, tier))
        if tier != "fast":
            item.add_marker(pytest.mark.slow)
        group = "image" if tier == "image" else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
        group_of[item.nodeid] = group
        costliest[group] = max(costliest.get(group, 0), GROUP_COST.index(tier))
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))
    # The costliest groups first (the image builds, then whole flows), so no worker is left
    # alone with a long group at the end while the other idles; a group keeps its order.
    items.sort(key=lambda item: -costliest[group_of[item.nodeid]])


class SubprocessInFastTier(AssertionError):
    pass


@pytest.fixture(autouse=True)
def fast_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast-tier test that starts a subprocess fails, naming the command and the fix."""
    if request.node.get_closest_marker("fast") is None:
        return

    def refuse(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        raise SubprocessInFastTier(
            f"{request.node.nodeid} is in the fast tier (no fixture of it asks for a tier) "
            f"but started a subprocess: {args!r}. Give it the fixture that pays for it "
            "(e2e_tier, server_tier, ...; tests/conftest.py explains the tiers)."
        )

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


# Who saw each (command, exit code) the CLI gave in this session: a test (its node id) or
# a fixture ("fixture:NAME"). tests/exit_codes.py names the test that produces each
# documented exit code, and pytest_runtest_call below checks that this test, or one of
# its fixtures, saw it: whatever ran before it does not count.
CLI_EXITS: dict[tuple[str, int], set[str]] = {}
_RUNNING: list[str] = []


def command_path(args: Sequence[str]) -> str:
    """The command an argument list runs (``deploy record``), read from the Typer app."""
    import typer.main

    from modelyard.app import app

    node: Any = typer.main.get_command(app)
    words: list[str] = []
    for arg in args:
        commands = getattr(node, "commands", None) or {}
        if arg in commands:
            node = commands[arg]
            words.append(arg)
        elif not (arg.startswith("-") and not words):  # root options come before a command
            break
    return " ".join(words)


def record_exit(args: Sequence[str], code: int) -> None:
    """Note that ``modelyard ARGS`` exited with ``code`` (for tests that start it themselves)."""
    CLI_EXITS.setdefault((command_path(args), code), set()).add(_RUNNING[-1] if _RUNNING else "")


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    _RUNNING.append(f"fixture:{fixturedef.argname}")
    try:
        return (yield)
    finally:
        _RUNNING.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A test named in tests/exit_codes.py as producing an exit code must have seen it."""
    # xdist's loadgroup appends "@group" to the node id; the tables name the original.
    nodeid = item.stash.get(ORIGINAL_NODEID, item.nodeid)
    _RUNNING.append(nodeid)
    try:
        result = yield
    finally:
        _RUNNING.pop()
    from tests.exit_codes import claims

    seen_by = {nodeid, *(f"fixture:{name}" for name in getattr(item, "fixturenames", ()))}
    missing = [
        f"`modelyard {cmd}` exiting {code}"
        for cmd, code in claims(nodeid)
        if not CLI_EXITS.get((cmd, code), set()) & seen_by
    ]
    if missing:
        raise AssertionError(
            f"tests/exit_codes.py names {nodeid} as the test that produces "
            f"{', '.join(missing)}, but neither it nor its fixtures saw that (through "
            "Project.cli, modelyard() or record_exit). Fix the test or the table."
        )
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def interruptible() -> None:
    """``preexec_fn`` for a child a test stops with Ctrl-C (SIGINT): the default action,
    whatever the suite inherited. A shell without job control starts background commands
    with SIGINT ignored (``nohup make test &``), and Python keeps an inherited SIG_IGN, so
    the child would never see the Ctrl-C the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_tree(pid: int, sig: int = signal.SIGTERM) -> None:
    """Signal a process and all its descendants (BentoML and MLflow workers start their
    own sessions, so a process group is not enough); SIGKILL what outlives 20 s."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):  # already gone is fine
            p.send_signal(sig)
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


class FakeGitHub:
    """A local stand-in for GitHub's REST API (unreachable from tests): records every
    request and keeps issue comments, so dispatches and PR comments can be checked."""

    def __init__(self) -> None:
        import json

        self.requests: list[dict[str, Any]] = []
        self.comments: dict[int, dict[str, Any]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                outer.requests.append({"method": self.command, "path": self.path,
                                       "auth": self.headers.get("Authorization"), "body": body})  # fmt: skip
                status, reply = outer._route(self.command, self.path.split("?")[0], body)
                data = json.dumps(reply).encode() if reply is not None else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _handle

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")  # repos/OWNER/REPO/...
        if method == "POST" and parts[3:] == ["dispatches"]:
            return 204, None
        if parts[3:4] == ["issues"] and parts[-1] == "comments":
            pr = int(parts[4])
            if method == "GET":
                return 200, [c for c in self.comments.values() if c["pr"] == pr]
            comment = {"id": len(self.comments) + 1, "pr": pr, "body": body["body"]}
            self.comments[comment["id"]] = comment
            return 201, comment
        if method == "PATCH" and parts[3:5] == ["issues", "comments"]:
            self.comments[int(parts[5])]["body"] = body["body"]
            return 200, self.comments[int(parts[5])]
        return 404, {"message": "Not Found"}

    def dispatches(self, event: str) -> list[dict[str, Any]]:
        return [r["body"]["client_payload"] for r in self.requests
                if r["path"].endswith("/dispatches") and r["body"]["event_type"] == event]  # fmt: skip

    def dispatched(self) -> list[tuple[str, str]]:
        """(name, version) of every model-promoted dispatch."""
        return [(p["name"], p["version"]) for p in self.dispatches("model-promoted")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
