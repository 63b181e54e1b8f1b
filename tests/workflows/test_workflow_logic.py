"""What the workflows do, not only how they are written: their `if:` conditions,
concurrency groups and cache keys evaluated for the situations the issue names (a push to
main, a fork's pull request, a failed smoke test, no cluster...), and the repository files
GitHub reads (dependabot.yml, CODEOWNERS).

GitHub's expression language is small; `evaluate` covers the part these workflows use
(contexts, ==, !=, !, &&, ||, parentheses, strings, status functions). A step's `if:`
without a status function runs only after success, as on GitHub.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

GITHUB = REPO / ".github"
CONTEXT = re.compile(r"\b(?:github|vars|steps|env|inputs|secrets|runner|matrix|needs)(?:\.[\w-]+)+")
STATUS = ("success()", "failure()", "always()", "cancelled()")


def load(path: Path) -> dict[Any, Any]:
    return {("on" if k is True else k): v for k, v in yaml.safe_load(path.read_text()).items()}


def evaluate(expression: str, ctx: dict[str, Any]) -> Any:
    """One GitHub expression (with or without ``${{ }}``) in the context ``ctx``: a flat
    mapping of dotted names (``github.ref``, ``steps.build.outcome``) and statuses."""
    text = expression.strip()
    if text.startswith("${{") and text.endswith("}}"):
        text = text[3:-2]
    strings: list[str] = []

    def keep(match: re.Match[str]) -> str:
        strings.append(match[0])
        return f"__s{len(strings) - 1}__"

    code = re.sub(r"'[^']*'", keep, text)
    code = CONTEXT.sub(lambda m: f"ctx.get({m[0]!r}, '')", code)
    for status in STATUS:
        code = code.replace(status, f"ctx[{status!r}]")
    code = code.replace("&&", " and ").replace("||", " or ")
    code = re.sub(r"!(?!=)", " not ", code)
    for literal, value in (("true", "True"), ("false", "False"), ("null", "None")):
        code = re.sub(rf"\b{literal}\b", value, code)
    code = re.sub(r"__s(\d+)__", lambda m: strings[int(m[1])], code)
    return eval(code, {"ctx": ctx})


def render(template: str, ctx: dict[str, Any]) -> str:
    """A string with ``${{ }}`` parts, as GitHub substitutes them."""
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: str(evaluate(m[1], ctx)), template)


def runs(condition: str | None, ctx: dict[str, Any]) -> bool:
    condition = condition or "success()"
    if not any(status in condition for status in STATUS):
        condition = f"success() && ({condition.strip().removeprefix('${{').removesuffix('}}')})"
    return bool(evaluate(condition, ctx))


def test_the_evaluator_follows_githubs_rules() -> None:
    ctx = {"github.ref": "refs/heads/main", "success()": True, "failure()": False}
    assert evaluate("github.ref == 'refs/heads/main' && 'a' || 'b'", ctx) == "a"
    assert evaluate("${{ !(github.ref != 'refs/heads/main') }}", ctx) is True
    assert evaluate("vars.MISSING != ''", ctx) is False  # a missing context is empty
    assert runs("github.ref == 'refs/heads/x'", ctx) is False
    assert runs("github.ref == 'refs/heads/main'", {**ctx, "success()": False}) is False
    assert runs("failure()", {**ctx, "failure()": True}) is True
    assert evaluate("true && !false", ctx) is True


# -- ci.yml ------------------------------------------------------------------------------


def test_concurrency_never_cancels_main_but_supersedes_a_branch() -> None:
    concurrency = load(GITHUB / "workflows/ci.yml")["concurrency"]

    def group(ref: str, run_id: int) -> tuple[str, bool]:
        ctx = {"github.ref": ref, "github.run_id": run_id}
        cancel = concurrency["cancel-in-progress"]
        return render(concurrency["group"], ctx), bool(
            evaluate(cancel, ctx) if isinstance(cancel, str) else cancel
        )

    first, second = group("refs/heads/main", 101), group("refs/heads/main", 102)
    assert first[0] != second[0], "two runs on main share a group: the queued one is replaced"
    assert first[1] is False and second[1] is False
    pr_first, pr_second = group("refs/pull/7/merge", 103), group("refs/pull/7/merge", 104)
    assert pr_first == pr_second and pr_first[1] is True


def comment_step() -> dict[str, Any]:
    job = load(GITHUB / "workflows/ci.yml")["jobs"]["pipeline"]
    (step,) = [s for s in job["steps"] if "modelyard diff" in s.get("run", "")]
    return step


@pytest.mark.parametrize(
    ("event", "head", "comments"),
    [
        ("pull_request", "acme/models", True),
        ("pull_request", "someone/models-fork", False),  # read-only token, no secrets
        ("push", "", False),
    ],
)
def test_a_fork_pull_request_skips_the_comment(event: str, head: str, comments: bool) -> None:
    ctx = {
        "github.event_name": event,
        "github.repository": "acme/models",
        "github.event.pull_request.head.repo.full_name": head,
        "success()": True,
    }
    assert runs(comment_step().get("if"), ctx) is comments


def dvc_cache_steps() -> list[tuple[str, str, str]]:
    """(file, job, action) of every step that touches .dvc/cache."""
    found = []
    for path in sorted((GITHUB / "workflows").glob("*.yml")):
        for job_name, job in load(path)["jobs"].items():
            for step in job["steps"]:
                if step.get("with", {}).get("path") == ".dvc/cache":
                    found.append((path.name, job_name, step["uses"].split("@")[0]))
    action = load(GITHUB / "actions/setup/action.yml")
    for step in action["runs"]["steps"]:
        if step.get("with", {}).get("path") == ".dvc/cache":
            found.append(("actions/setup", "*", step["uses"].split("@")[0]))
    return found


def test_only_the_pipeline_job_saves_the_dvc_cache() -> None:
    """actions/cache saves at the end of every job that restored it: a job that ran no
    stage would save a partial cache under the new key. Jobs restore; one job saves."""
    assert sorted(dvc_cache_steps()) == [
        ("actions/setup", "*", "actions/cache/restore"),
        ("ci.yml", "pipeline", "actions/cache/save"),
    ]
    job = load(GITHUB / "workflows/ci.yml")["jobs"]["pipeline"]
    names = [s.get("run") or s.get("uses", "").split("@")[0] for s in job["steps"]]
    assert names.index("make run") < names.index("actions/cache/save")  # after every stage ran
    action = load(GITHUB / "actions/setup/action.yml")
    (restore,) = [s for s in action["runs"]["steps"] if "cache/restore" in s.get("uses", "")]
    (save,) = [s for s in job["steps"] if "cache/save" in s.get("uses", "")]
    assert save["with"]["key"] == restore["with"]["key"]


# -- the shared setup ---------------------------------------------------------------------


def test_the_setup_puts_the_venv_on_path_after_installing_it() -> None:
    steps = load(GITHUB / "actions/setup/action.yml")["runs"]["steps"]
    commands = [s.get("run", "") for s in steps]
    install = commands.index("make setup")
    (path_step,) = [i for i, c in enumerate(commands) if "GITHUB_PATH" in c]
    assert path_step > install
    assert commands[path_step] == 'echo "$PWD/.venv/bin" >> "$GITHUB_PATH"'


def test_the_venv_cache_key_names_the_exact_interpreter() -> None:
    steps = load(GITHUB / "actions/setup/action.yml")["runs"]["steps"]
    (python,) = [s for s in steps if s.get("uses", "").startswith("actions/setup-python@")]
    (venv,) = [s for s in steps if s.get("with", {}).get("path") == ".venv"]
    key = venv["with"]["key"]
    ctx = {"runner.os": "Linux", "runner.arch": "X64"}
    exact = {**ctx, f"steps.{python['id']}.outputs.python-version": "3.11.10"}
    other = {**ctx, f"steps.{python['id']}.outputs.python-version": "3.11.9"}
    key = key.replace("hashFiles('requirements.lock', 'pyproject.toml')", "'h'")
    assert render(key, exact) != render(key, other)  # a patch release is another venv
    assert "3.11.10" in render(key, exact) and "X64" in render(key, exact)


# -- monitor.yml ----------------------------------------------------------------------------


@pytest.mark.parametrize(("runner", "scheduled"), [("", False), ("modelyard-log", True)])
def test_the_drift_job_runs_only_on_the_runner_with_the_log(runner: str, scheduled: bool) -> None:
    (job,) = load(GITHUB / "workflows/monitor.yml")["jobs"].values()
    ctx = {"vars.MONITOR_RUNNER": runner, "success()": True}
    assert runs(job.get("if"), ctx) is scheduled
    assert job["runs-on"] == "${{ vars.MONITOR_RUNNER }}"  # no fallback to a hosted runner


@pytest.mark.parametrize("event", ["schedule", "workflow_dispatch"])
def test_scheduled_drift_runs_read_touching_windows_and_alert_once(event: str) -> None:
    """Scheduled: the last whole hour (`--align`), however late the run starts; a manual
    run: the window asked for. The alert webhook only when the cluster's drift CronJob
    (which alerts for the same window) is not deployed."""
    (job,) = load(GITHUB / "workflows/monitor.yml")["jobs"].values()
    ctx = {"github.event_name": event, "success()": True, "secrets.ALERT_WEBHOOK_URL": "hook"}
    ran = [
        s["run"]
        for s in job["steps"]
        if "monitor run" in s.get("run", "") and runs(s.get("if"), ctx)
    ]
    if event == "schedule":
        assert ran == [".venv/bin/modelyard monitor run --since 1h --align"]
    else:
        assert ran == ['.venv/bin/modelyard monitor run --since "$SINCE"']
    alert = job["env"]["MODELYARD_ALERT_WEBHOOK_URL"]
    assert evaluate(alert, ctx) == "hook"
    assert evaluate(alert, {**ctx, "vars.DRIFT_IN_CLUSTER": "true"}) == ""
    cron = load(REPO / "services/k8s/components/drift/cronjob.yaml")
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][-3:] == ["1h", "--align", "--no-retrain"]


# -- deploy.yml -----------------------------------------------------------------------------


DEPLOY = GITHUB / "workflows/deploy.yml"


def simulate(
    cluster: bool, fails: set[str], gate_off: bool = True, cancel: str | None = None
) -> list[str]:
    """The modelyard commands deploy.yml runs when the steps named in ``fails`` (``job.step
    id``) fail; jobs in file order, each after its ``needs`` succeeded (as GitHub runs
    them). ``cluster``: the environments hold a KUBE_CONFIG; ``gate_off``: the repository
    variable MODELYARD_GATE is ``off`` (no team server)."""
    results: dict[str, str] = {}
    ran: list[str] = []
    cancelled = False  # ``cancel``: the run is cancelled while that step runs
    for name, job in load(DEPLOY)["jobs"].items():
        needs = job.get("needs", [])
        needs = [needs] if isinstance(needs, str) else needs
        if any(results.get(n) != "success" for n in needs):
            results[name] = "skipped"
            continue
        ctx: dict[str, Any] = {
            "env.KUBE_CONFIG": "apiVersion: v1" if cluster and "KUBE_CONFIG" in job["env"] else "",
            "vars.MODELYARD_GATE": "off" if gate_off else "",
        }
        failed = False
        for step in job["steps"]:
            state = {
                **ctx,
                "success()": not failed and not cancelled,
                "failure()": failed,
                "cancelled()": cancelled,
                "always()": True,
            }
            outcome = "skipped"
            if runs(step.get("if"), state):
                outcome = "failure" if f"{name}.{step.get('id')}" in fails else "success"
                if f"{name}.{step.get('id')}" == cancel:
                    outcome, cancelled = "cancelled", True
                if step.get("run", "").startswith(".venv/bin/modelyard"):
                    words = step["run"].split()
                    ran.append(" ".join(w for w in words[1:4] if not w.startswith(("$", '"', "-"))))
            if "id" in step:
                ctx[f"steps.{step['id']}.outcome"] = outcome
            failed = failed or outcome == "failure"
        results[name] = "cancelled" if cancelled else "failure" if failed else "success"
    return ran


IMAGES = ["deploy commit", "deploy containerize", "webapp containerize", "deploy monitor-image"]


def test_deploy_without_a_cluster_builds_the_image_and_records_no_deploy() -> None:
    assert simulate(cluster=False, fails=set()) == IMAGES


def test_deploy_goes_through_staging_and_its_smoke_test_to_production() -> None:
    assert simulate(cluster=True, fails=set()) == [
        *IMAGES,
        "deploy apply",
        "deploy smoke",
        "deploy apply",
        "deploy smoke",
        "deploy record",
    ]


@pytest.mark.parametrize("failing", ["staging.rollout", "staging.smoke"])
def test_a_failed_staging_rollout_is_recorded_undone_and_goes_no_further(failing: str) -> None:
    ran = simulate(cluster=True, fails={failing})
    assert ran[-2:] == ["deploy record-failure", "deploy undo"]
    assert ran.count("deploy apply") == 1 and "deploy record" not in ran


@pytest.mark.parametrize("failing", ["production.rollout", "production.smoke"])
def test_a_failed_production_rollout_is_recorded_and_undone_there(failing: str) -> None:
    ran = simulate(cluster=True, fails={failing})
    assert ran[-2:] == ["deploy record-failure", "deploy undo"]
    assert ran.count("deploy undo") == 1 and "deploy record" not in ran
    jobs = load(DEPLOY)["jobs"]
    for env in ("staging", "production"):
        undo = [s for s in jobs[env]["steps"] if "deploy undo" in s.get("run", "")]
        failure = [s for s in jobs[env]["steps"] if "record-failure" in s.get("run", "")]
        assert [u["run"].split()[-1] for u in undo] == [env]
        assert f"--env {env}" in failure[0]["run"]


@pytest.mark.parametrize("step", ["staging.rollout", "production.smoke"])
def test_a_run_cancelled_mid_rollout_still_records_and_undoes(step: str) -> None:
    """Issue 23: a newer promotion (or a person) cancelling the run mid-rollout skipped
    the undo, leaving a half-rolled environment."""
    ran = simulate(cluster=True, fails=set(), cancel=step)
    assert ran[-2:] == ["deploy record-failure", "deploy undo"] and "deploy record" not in ran
    if step.startswith("staging"):
        assert ran.count("deploy apply") == 1  # production never starts


@pytest.mark.parametrize("failing", ["build.image", "build.webapp_image", "build.monitor_image"])
def test_a_failed_image_build_touches_no_environment(failing: str) -> None:
    ran = simulate(cluster=True, fails={failing})
    assert ran == IMAGES[: IMAGES.index(ran[-1]) + 1] and "deploy apply" not in ran


def test_the_images_are_built_from_the_versions_own_commit() -> None:
    """Issue 23: not from the default branch at deploy time."""
    steps = load(DEPLOY)["jobs"]["build"]["steps"]
    (commit,) = [i for i, s in enumerate(steps) if s.get("id") == "commit"]
    assert steps[commit]["run"].split()[1:3] == ["deploy", "commit"]
    (checkout,) = [
        i for i, s in enumerate(steps)
        if s.get("with", {}).get("ref") == "${{ steps.commit.outputs.commit }}"
    ]  # fmt: skip
    builds = [i for i, s in enumerate(steps) if "containerize" in s.get("run", "")]
    assert commit < checkout < min(builds)
    assert steps[checkout + 1]["uses"] == "./.github/actions/setup"  # that commit's venv


def test_both_rollouts_deploy_the_three_images_the_build_job_made_once() -> None:
    jobs = load(DEPLOY)["jobs"]
    assert jobs["build"]["outputs"] == {
        "image": "${{ steps.image.outputs.image }}",
        "webapp_image": "${{ steps.webapp_image.outputs.image }}",
        "monitor_image": "${{ steps.monitor_image.outputs.image }}",
    }
    for env in ("staging", "production"):
        (apply,) = [s for s in jobs[env]["steps"] if "deploy apply" in s.get("run", "")]
        assert apply["env"] == {
            "IMAGE": "${{ needs.build.outputs.image }}",
            "WEBAPP_IMAGE": "${{ needs.build.outputs.webapp_image }}",
            "MONITOR_IMAGE": "${{ needs.build.outputs.monitor_image }}",
        }
        words = apply["run"].split()
        assert words[words.index("--env") + 1] == env
        for option, variable in [
            ("--image", "IMAGE"),
            ("--webapp-image", "WEBAPP_IMAGE"),
            ("--monitor-image", "MONITOR_IMAGE"),
        ]:
            assert words[words.index(option) + 1] == f'"${variable}"'
        assert not [s for s in jobs[env]["steps"] if "containerize" in s.get("run", "")]


def test_two_environments_two_approvals_two_sets_of_secrets() -> None:
    """Issue 23: staging and production are separate jobs in separate GitHub environments
    (each its own secrets and, for production, its own reviewers, asked after staging
    passed); the build job holds no cluster credentials."""
    jobs = load(DEPLOY)["jobs"]
    assert jobs["build"]["environment"] == "build" and "KUBE_CONFIG" not in jobs["build"]["env"]
    assert jobs["staging"]["environment"] == "staging" and jobs["staging"]["needs"] == "build"
    assert jobs["production"]["environment"] == "production"
    assert set(jobs["production"]["needs"]) == {"build", "staging"}
    for env in ("staging", "production"):
        assert jobs[env]["env"]["KUBE_CONFIG"] == "${{ secrets.KUBE_CONFIG }}"
        assert jobs[env]["env"]["MODELYARD_HOST"] == "${{ vars.HOST }}"  # apply needs it
        assert jobs[env]["env"]["MODELYARD_STORAGE_CLASS"] == "${{ vars.STORAGE_CLASS }}"
        (smoke,) = [s for s in jobs[env]["steps"] if "deploy smoke" in s.get("run", "")]
        assert smoke["env"]["URL"] == f"${{{{ vars.{env.upper()}_URL }}}}"
    assert simulate(cluster=True, fails={"staging.smoke"}).count("deploy apply") == 1


def test_the_gates_check_fails_closed() -> None:
    """Without MODELYARD_GATE=off the approval is checked before anything is built (and
    `registry verify` exits 2 without MODELYARD_GATE_PUBLIC_KEY): a missing key stops the
    deploy."""
    ran = simulate(cluster=True, fails=set(), gate_off=False)
    assert ran[:3] == ["registry verify", "deploy commit", "deploy containerize"]
    # checked again right before production's rollout
    assert ran[ran.index("deploy smoke") + 1 :][:2] == ["registry verify", "deploy apply"]
    # a workflow_dispatch of a version the gate did not approve: nothing else runs
    assert simulate(cluster=True, fails={"build.gate"}, gate_off=False) == ["registry verify"]
    # approval withdrawn while staging ran: production is not touched, nothing undone there
    late = simulate(cluster=True, fails={"production.gate"}, gate_off=False)
    assert late[-1] == "registry verify" and late.count("deploy apply") == 1
    for job in ("build", "production"):
        (gate,) = [s for s in load(DEPLOY)["jobs"][job]["steps"] if s.get("id") == "gate"]
        assert "MODELYARD_GATE" not in gate["if"].replace(
            "vars.MODELYARD_GATE !=", ""
        )  # not skipped when the key is missing


@pytest.mark.parametrize(("runner", "scheduled"), [("gate-host", True), ("", False)])
def test_reconcile_runs_only_on_the_runner_next_to_the_gate(runner: str, scheduled: bool) -> None:
    (job,) = load(GITHUB / "workflows/reconcile.yml")["jobs"].values()
    assert runs(job.get("if"), {"vars.GATE_RUNNER": runner, "success()": True}) is scheduled
    assert job["runs-on"] == "${{ vars.GATE_RUNNER }}"


# -- repository files GitHub reads -------------------------------------------------------------


def test_dependabot_updates_the_python_packages_and_the_actions() -> None:
    config = yaml.safe_load((GITHUB / "dependabot.yml").read_text())
    assert config["version"] == 2
    updates = {u["package-ecosystem"]: u for u in config["updates"]}
    assert set(updates) == {"pip", "github-actions"}
    for update in updates.values():
        assert update["directory"] == "/" and update["schedule"]["interval"] in {"daily", "weekly"}


def test_codeowners_patterns_match_files_and_name_owners(e2e_tier: None) -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    lines = [
        line.split()
        for line in (GITHUB / "CODEOWNERS").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0][0] == "*", "a default owner first: later lines override it"
    for pattern, *owners in lines:
        assert owners and all(re.fullmatch(r"@[\w.-]+(/[\w.-]+)?", o) for o in owners), pattern
        if pattern != "*":
            prefix = pattern.lstrip("/")
            assert any(f == prefix or f.startswith(prefix) for f in tracked), pattern
    covered = {p.lstrip("/") for p, *_ in lines}
    assert {"services/k8s/", ".github/"} <= covered
