"""`modelyard run`: the whole pipeline through `dvc repro`, then the idempotent register.

DVC cannot see the MLflow registry: on a fresh clone (or a fresh store) it may find
every stage up to date and skip ``register``. So ``run`` ends with the register step,
which adds the version only if this store lacks it. With ``push``, the stage outputs go
to the DVC remote first, and a failed push registers nothing. On an MLflow server (team
mode), a trained model whose run the server lacks (DVC restored it from its cache) is
trained again, so the registered version's run, with its metrics, is on the server.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core import files, tools
from core.errors import ConfigError, PipelineFailed
from core.tagkeys import RetrainTag
from pipelines import pointer, sources, tracking
from pipelines.config import Params

if TYPE_CHECKING:
    from registry.client import Registry

log = logging.getLogger(__name__)

PUSH_REMOTE = "modelyard-push"


@dataclass(frozen=True)
class Outcome:
    name: str
    version: str
    created: bool  # a new version in this store (False: it was already registered)
    alias: str
    alias_version: str | None  # where the alias points now


def check_inputs(params: Params, root: Path) -> None:
    """The files params name, before DVC runs anything: DVC's own error for a missing
    dependency is a bare ``[Errno 2]`` naming neither the key nor the fix."""
    missing = []
    suite = params.validate_.suite
    if not (root / suite).is_file():
        missing.append(
            f"validate.suite: {suite} does not exist. `modelyard init --source "
            f"{params.paths.sources}/FILE --target COLUMN` writes one from your data; or write "
            "your own (GX's JSON: data/expectations/wine.json is an example; "
            '{"expectations": []} checks nothing beyond params), or point validate.suite at '
            "an existing file"
        )
    source = params.ingest.source
    if not sources.is_bundled(source) and not (root / source).is_file():
        missing.append(
            f"ingest.source: {source} does not exist. Put your CSV or Parquet file under "
            f"{params.paths.sources}/ (and `dvc add` it), or use sklearn:<name>"
        )
    if missing:
        raise ConfigError("nothing was run:\n  - " + "\n  - ".join(missing))


def repro(
    root: Path, *, force: bool = False, start: str | None = None, target: str | None = None
) -> None:
    """`dvc repro` in ``root`` (from stage ``start`` on, if given: it and every stage
    after it; or up to stage ``target`` only); the stages' commands find this venv's tools."""
    downstream = ["--downstream", start] if start else []
    cmd = [tools.binary("dvc"), "repro", *(["--force"] if force else []), *downstream]
    cmd += [target] if target else []
    code = subprocess.call(cmd, cwd=root, env=tools.env())
    if code != 0:
        raise PipelineFailed(
            f"dvc repro failed (exit {code}). The failing stage printed why above; fix it and "
            "run `modelyard run` again (DVC re-runs only what changed)."
        )


def _remote(root: Path, url: str | None) -> list[str]:
    """``--remote`` options for ``url`` (added as a local remote), else none: the default."""
    if not url:
        return []
    subprocess.run(
        [tools.binary("dvc"), "remote", "add", "--local", "--force", PUSH_REMOTE, url],
        cwd=root,
        check=True,
        capture_output=True,
        env=tools.env(),
    )
    return ["--remote", PUSH_REMOTE]


def push(root: Path, *, url: str | None, targets: Sequence[Path] = ()) -> None:
    """`dvc push` the outputs (or only ``targets``, .dvc files), to ``url`` if given, else
    the repo's default remote."""
    remote = _remote(root, url)
    cmd = [tools.binary("dvc"), "push", *remote, *(str(t) for t in targets)]
    if subprocess.call(cmd, cwd=root, env=tools.env()) != 0:
        what = "nothing was registered" if not targets else "nothing was pushed"
        raise PipelineFailed(
            f"dvc push failed; {what}. Set --remote-url or DVC_REMOTE_URL "
            "(or `dvc remote add -d ...`), check its credentials, and run again."
        )


def pull_production(params: Params, root: Path, pointer: str, *, url: str | None) -> Path:
    """Write the harvested labels' DVC pointer (a ``retrain`` dispatch carries it: the
    .dvc file the drift job pushed) beside ``ingest.production.path`` and `dvc pull` it,
    so this run trains on the labels the drift job harvested. Returns the .dvc file."""
    import yaml

    target = root / params.ingest.production.path
    try:
        parsed = yaml.safe_load(pointer)
        (out,) = parsed["outs"]
        ok = isinstance(out, dict) and out.get("path") == target.name and bool(out.get("md5"))
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(
            f"--production-dvc is not the DVC pointer of {target.name} (one `outs` entry with "
            f"path {target.name} and an md5): nothing was run. Pass the text of "
            f"{params.ingest.production.path}.dvc that `modelyard monitor run` pushed"
        )
    dvc_file = target.with_name(target.name + ".dvc")
    files.write_text(dvc_file, pointer)
    cmd = [tools.binary("dvc"), "pull", *_remote(root, url), str(dvc_file)]
    if subprocess.call(cmd, cwd=root, env=tools.env()) != 0:
        raise PipelineFailed(
            f"dvc pull {dvc_file.relative_to(root)} failed: the harvested labels are not on "
            "the DVC remote. Check --remote-url or DVC_REMOTE_URL (the one the drift job "
            "pushed to) and its credentials; nothing was run."
        )
    return dvc_file


def run(
    params: Params,
    root: Path,
    *,
    force: bool = False,
    remeasure: bool = False,
    push_to: str | None = None,
    push_outputs: bool = False,
    drift_run: str | None = None,
    production_pointer: str | None = None,
) -> Outcome:
    """repro, optionally push, then register (idempotent). ``remeasure``: evaluate runs
    again even when DVC finds it up to date (its timings are of the machine's moment).
    ``production_pointer``: first
    pull the harvested labels it points at (a ``retrain`` dispatch). ``drift_run``: the
    drift job's MLflow run that caused this run; a version registered now is tagged with
    it (``monitor.drift_run_id``, ``monitor.drift_report``) and the run with the version
    (``retrain.version``)."""
    from pipelines.stages import register
    from registry.client import Registry

    if production_pointer:
        pull_production(params, root, production_pointer, url=push_to)
    check_inputs(params, root)
    tracking.configure(root)
    registry = Registry(tracking.tracking_uri(root))
    if drift_run and not tracking.run_exists(drift_run):
        raise ConfigError(
            f"--drift-run {drift_run} is not a run in {registry.uri}: nothing was run. Pass "
            "the id `modelyard monitor run` logged (summary.json: drift_run.run_id) in the "
            "same MLflow store"
        )
    name = params.register_.model_name
    before = {v.version for v in registry.versions(name)}
    # A new champion re-runs evaluate (team mode: the production model's champion).
    pointer.refresh(registry, params.register_.champion_model, params.paths, root)
    if remeasure and not force:
        repro(root, target="evaluate")  # its inputs up to date first, then measure again
        repro(root, force=True, start="evaluate")
    repro(root, force=force)
    if tracking.on_server(root) and (lost := training_run_missing(params, root)):
        # DVC restored the trained model from its cache (trained on someone's machine, or
        # another store): the server never saw its run. The gate trusts a version because
        # its run is in the trainer's experiment with the metrics evaluate logged, so
        # train again here, and run every later stage again too: each logs to the run
        # meta.json names, even when its own inputs (the same ONNX bytes) did not change.
        log.warning(
            "the trained model's MLflow run %s is not in experiment %s on %s: training "
            "again so the registered version's run is there",
            lost,
            params.tracking.experiment,
            registry.uri,
        )
        repro(root, force=True, start="train")
    if push_outputs:
        push(root, url=push_to)
    logging.getLogger("pipelines.stages.register").setLevel(logging.WARNING)
    reg = register.run(params, root)
    if drift_run and reg.version not in before:
        link_drift_run(registry, name, reg.version, drift_run)
    now = registry.by_alias(name, params.register_.alias)
    return Outcome(
        name=reg.name,
        version=reg.version,
        created=reg.version not in before,
        alias=params.register_.alias,
        alias_version=now.version if now else None,
    )


def training_run_missing(params: Params, root: Path) -> str | None:
    """The MLflow run the trained model (``paths.native``) was trained in, if this store
    lacks it in ``tracking.experiment`` (the trainer's, in team mode); None when it is
    there (or there is no trained model)."""
    from pipelines.models import read_meta

    if not (root / params.paths.native / "meta.json").is_file():
        return None
    run_id = str(read_meta(root / params.paths.native).get("run_id") or "")
    if run_id and tracking.run_in_experiment(run_id, params.tracking.experiment):
        return None
    return run_id or "(none recorded)"


def link_drift_run(registry: Registry, name: str, version: str, drift_run: str) -> None:
    """Tag the new version with the drift run that caused it, and the run with it."""
    registry.set_version_tags(
        name,
        version,
        {
            "monitor.drift_run_id": drift_run,
            "monitor.drift_report": f"runs:/{drift_run}/report.html",
        },
    )
    with tracking.resume(drift_run):
        tracking.set_tags({RetrainTag.VERSION: version, RetrainTag.MODEL: name})
