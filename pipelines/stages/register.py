"""register: a new registry version with its full lineage, only if every gate passed.

Reads ``gates.json``, ``evaluate.details.json``, ``export.json``,
``optimize.details.json``, ``validate.json``, the chosen ONNX file (``paths.optimized``),
the prepared splits and ``paths.raw_production`` (how many production rows this version
saw, and until when they were labelled), the schema, dvc.lock and git. Logs the ONNX
model to the pipeline's MLflow run
(signature, input example, CPU provider, one file, the schema in its metadata),
registers version N of ``register.model_name`` with the lineage tags, and points the
``challenger`` alias at it. It never touches ``champion``.

Idempotent: if a version with the same ONNX sha256 exists, nothing new is created, and
``challenger`` is pointed back at that version (this commit's candidate) if it had moved.
Refuses (``SchemaMismatch``) a model whose features or classes differ from the newest
version registered under the same name: another contract needs another name.
Writes ``register.json`` (the version number; the name is ``register.model_name``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core import files, settings
from core.errors import ConfigError, GateFailed, SchemaMismatch
from core.tagkeys import CopyTag, DataTag, LineageTag, RunTag
from pipelines import dataset, inference, lineage, tracking
from pipelines.config import PRODUCTION_TEST, Params
from pipelines.models import read_meta
from registry import card
from registry.client import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    name: str
    version: str
    created: bool
    tags: dict[str, str]


def run(params: Params, root: Path) -> Result:
    paths, cfg = params.paths, params.register_
    reports = root / paths.reports
    if not (reports / "gates.json").exists():
        raise ConfigError(
            f"{paths.report('gates.json')} is missing: register needs evaluate's gate report. "
            "Run the pipeline (`modelyard run`, or `dvc repro`) first."
        )
    gates = files.read_json(reports / "gates.json")
    if not gates["passed"]:
        failed = [g for g in gates["gates"].values() if not g["passed"]]
        reasons = "\n".join(
            f"  - {g['name']}: {g['value']:.4g} (needs {g['op']} {g['threshold']:g}) {g['detail']}".rstrip()
            for g in failed
        )
        raise GateFailed(
            f"{len(failed)} gate(s) failed, nothing registered:\n{reasons}\n"
            f"See {paths.report('gates.json')}; improve the model or change the gates in params.yaml: evaluate."
        )

    onnx_path = root / paths.served_model  # optimize's choice (paths.onnx is the FP32 reference)
    sha = files.sha256(onnx_path)
    registry = Registry(tracking.tracking_uri(root))
    existing = registry.find_by_tag(cfg.model_name, LineageTag.ONNX_SHA256, sha)
    if existing is not None:
        log.info(
            "%s v%s already holds this model (sha256 %s)",
            cfg.model_name,
            existing.version,
            sha[:12],
        )
        # This commit's candidate is that version: point the alias back at it, so
        # "already registered vN (@challenger)" is true.
        reclaim_alias(registry, cfg.model_name, alias=cfg.alias, version=existing.version)
        result = Result(cfg.model_name, existing.version, False, existing.tags)
        _write(reports, result)
        return result

    schema = dataset.load_schema(paths, root)
    check_schema(registry, cfg.model_name, candidate=schema.as_dict())
    meta = read_meta(root / paths.native)
    tags = lineage_tags(params, root, sha, gates, meta)
    example = dataset.load_split(paths, "test", schema, root).x[:2]
    if tracking.run_exists(meta["run_id"]):
        run = tracking.resume(meta["run_id"])
    else:
        # DVC restored the trained model from its cache, but this MLflow store never saw
        # the training run (a fresh or switched store): register from a run of its own.
        log.warning(
            "training run %s is not in this MLflow store; registering from a new run",
            meta["run_id"],
        )
        run = tracking.new_run(
            params.tracking.experiment, root, run_name=f"register-{meta['family']}"
        )
        tags[LineageTag.TRAINING_RUN_MISSING] = meta["run_id"]
    with run as run_id:
        if run_id == meta["run_id"]:
            # train logged these (pipelines/stages/train.py: REFERENCE_DIR).
            tags[DataTag.REFERENCE_URI] = f"runs:/{run_id}/reference/train.parquet"
            tags[DataTag.TEST_URI] = f"runs:/{run_id}/reference/test.parquet"
            tags[DataTag.PRODUCTION_TEST_URI] = (
                f"runs:/{run_id}/reference/{PRODUCTION_TEST}.parquet"
            )
        model_uri, _ = tracking.log_onnx_model(onnx_path, example, {"schema": schema.as_dict()})
        card = model_card(
            reports=Reports.read(root / paths.reports),
            tags=tags,
            champion=_champion_tags(registry, cfg.champion_model, reports),
            run_link=_run_link(registry, run_id),
        )
        version = registry.register(cfg.model_name, model_uri, run_id, tags, card)
        registry.set_alias(cfg.model_name, cfg.alias, version.version)
        # For the team's review gate (registry.policy), on the run only the CI trainer can
        # write to: the file registered (compared with the sha256 the gate recomputes from
        # the artifact) and who the run was trained for (four eyes): GitHub's verified
        # actor in CI, never a git author's typed name or email; "unknown" outside CI.
        tracking.set_tags(
            {
                RunTag.REGISTERED_VERSION: version.version,
                RunTag.REGISTERED_ONNX_SHA256: sha,
                RunTag.AUTHOR: settings.current().github_actor or "unknown",
                # the commit's author email: the gate maps it to a person (team.yaml)
                LineageTag.GIT_AUTHOR: tags[LineageTag.GIT_AUTHOR],
            }
        )
    result = Result(cfg.model_name, version.version, True, version.tags)
    _write(reports, result)
    log.info("registered %s v%s as @%s", cfg.model_name, version.version, cfg.alias)
    return result


def reclaim_alias(registry: Registry, name: str, *, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` if it points elsewhere (or nowhere), with a log line."""
    now = registry.by_alias(name, alias)
    if now is not None and now.version == version:
        return
    registry.set_alias(name, alias, version)
    before = f"v{now.version}" if now is not None else "nowhere"
    log.warning(
        "@%s of %s moved from %s back to v%s (this commit's model)", alias, name, before, version
    )


def check_schema(registry: Registry, name: str, *, candidate: dict[str, Any]) -> None:
    """Refuse to register a model under ``name`` if its features or classes differ from
    the newest registered version's (read from that version's MLmodel metadata).

    A model with another contract is another model: it needs its own name
    (``register.model_name``). A name with no versions yet, or whose newest version
    carries no schema, accepts any model.
    """
    versions = registry.versions(name)
    if not versions:
        return
    latest = versions[-1]
    registered = registry.model_metadata(name, latest.version).get("schema")
    if not registered:
        log.warning("%s v%s records no schema; not compared", name, latest.version)
        return
    differences = schema_difference(registered, candidate)
    if differences:
        raise SchemaMismatch(
            f"refusing to register this model as {name}: its schema differs from "
            f"{name} v{latest.version}'s:\n"
            + "\n".join(f"  - {d}" for d in differences)
            + "\nA model with other features or classes is another model: give it its own "
            "name (params.yaml: register.model_name). Nothing was registered."
        )


def schema_difference(registered: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    """What differs between two schemas (``dataset.Schema.as_dict()``), in words:
    features removed, added or reordered, and classes. Empty: the same contract."""
    old = [str(f["name"]) for f in registered.get("features", [])]
    new = [str(f["name"]) for f in candidate.get("features", [])]
    out: list[str] = []
    old_set, new_set = set(old), set(new)
    removed = [f for f in old if f not in new_set]
    added = [f for f in new if f not in old_set]
    if removed or added:
        out.append(f"features: {len(old)} registered, {len(new)} now")
    if removed:
        out.append(f"features removed ({len(removed)}): {_some(removed)}")
    if added:
        out.append(f"features added ({len(added)}): {_some(added)}")
    if not removed and not added and old != new:
        at = next(i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b)
        out.append(f"features reordered: position {at} was {old[at]}, is {new[at]}")
    old_classes = [str(c) for c in registered.get("classes", [])]
    new_classes = [str(c) for c in candidate.get("classes", [])]
    if old_classes != new_classes:
        out.append(f"classes: {_some(old_classes)} registered; {_some(new_classes)} now")
    return out


def _some(items: list[str], limit: int = 8) -> str:
    # No square brackets: the CLI prints messages through rich, which reads them as markup.
    shown = ", ".join(items[:limit]) or "none"
    return f"{shown}, ... {len(items) - limit} more" if len(items) > limit else shown


def lineage_tags(
    params: Params, root: Path, sha: str, gates: dict[str, Any], meta: dict[str, Any]
) -> dict[str, str]:
    paths = params.paths
    reports = root / paths.reports
    commit, dirty = lineage.git_commit(root, (paths.reports,))
    hashes = lineage.dvc_hashes(root, paths.raw, paths.prepared)
    validation = files.read_json(reports / "validate.json")
    metrics = files.read_json(reports / "evaluate.details.json")
    export = files.read_json(reports / "export.json")
    optimized = files.read_json(reports / "optimize.details.json")
    chosen = optimized["variants"][optimized["chosen"]]
    fp32 = optimized["variants"]["fp32"]
    tags: dict[str, Any] = {
        LineageTag.GIT_COMMIT: commit,
        LineageTag.GIT_DIRTY: dirty,
        LineageTag.GIT_AUTHOR: lineage.git_author(root),
        LineageTag.GIT_AUTHOR_NAME: lineage.git_author(root, name=True),
        LineageTag.DVC_DATA_MD5: hashes["data_md5"],
        LineageTag.DVC_PREPARED_MD5: hashes["prepared_md5"],
        LineageTag.DVC_PARAMS_SHA256: hashes["params_sha256"],
        LineageTag.DATA_SOURCE: params.ingest.source,
        LineageTag.VALIDATION_SUCCESS: validation["success"],
        LineageTag.VALIDATION_EVALUATED: validation["evaluated"],
        LineageTag.VALIDATION_FAILED: validation["failed"],
        LineageTag.ONNX_SHA256: sha,
        LineageTag.ONNX_OPSET: inference.opset(root / paths.served_model),
        "onnx.parity_max_abs_diff": f"{export['max_abs_diff']:.3g}",
        "onnxruntime.version": inference.runtime_version(),
        LineageTag.MODEL_FAMILY: meta["family"],
        LineageTag.MODEL_VARIANT: optimized["chosen"],
        "optimize.metric": optimized["metric"],
        "optimize.speedup_vs_fp32": f"{optimized['speedup_vs_fp32']:.3f}",
        "optimize.size_ratio_vs_fp32": f"{optimized['size_ratio_vs_fp32']:.3f}",
        "optimize.accuracy_drop_points": f"{optimized['accuracy_drop_points']:.3f}",
        "optimize.size_bytes": chosen["size_bytes"],
        "optimize.p99_ms_batch1": f"{chosen['p99_ms_batch1']:.4f}",
        "optimize.fp32_p99_ms_batch1": f"{fp32['p99_ms_batch1']:.4f}",
        "optimize.p50_ms_batch256": f"{chosen['p50_ms_batch256']:.4f}",
        "optimize.fp32_p50_ms_batch256": f"{fp32['p50_ms_batch256']:.4f}",
        "optimize.cpu_int8_acceleration": optimized["cpu"]["int8_acceleration"],
        "metric.accuracy": f"{metrics['accuracy']:.4f}",
        "metric.macro_f1": f"{metrics['macro_f1']:.4f}",
        "metric.min_class_recall": f"{metrics['min_class_recall']:.4f}",
        "metric.noise_invariance": f"{metrics['noise_invariance']:.4f}",
        "metric.p50_ms_batch_1": f"{metrics['latency']['batch_1']['p50_ms']:.4f}",
        "metric.p99_ms_batch_1": f"{metrics['latency']['batch_1']['p99_ms']:.4f}",
        "metric.p99_ms_batch_256": f"{metrics['latency']['batch_256']['p99_ms']:.4f}",
        LineageTag.GATES_PASSED: gates["passed"],
    }
    production = metrics.get("production") or {}
    if production.get("scored"):
        tags["metric.production_accuracy"] = f"{production['accuracy']:.4f}"
        tags["metric.production_macro_f1"] = f"{production['macro_f1']:.4f}"
    tags.update(production_lineage(params, root))
    for split, rows in validation["rows"].items():
        tags[f"data.rows.{split}"] = rows
    for name, gate in gates["gates"].items():
        tags[f"gate.{name}"] = "pass" if gate["passed"] else "fail"
    if "champion" in metrics:
        tags["gate.compared_with_champion"] = metrics["champion"].get("version", "")
    return {k: str(v) for k, v in tags.items()}


def production_lineage(params: Params, root: Path) -> dict[str, str]:
    """The production labels behind this version, as tags.

    ``data.production_rows``: production rows in its train, val and production test
    splits. ``data.production_labelled_until``: the newest ``labelled_at`` (UNIX seconds)
    of the production rows ingest took for it ("0" when none). That is every harvested
    row this version's data considered, including those prepare dropped as repeats of a
    base row and those held out for testing: a label that is not newer than this cannot
    change what the next training sees, so the retrain job (which reads this tag of the
    latest version) does not count it as new.
    """
    paths = params.paths
    counts: dict[str, int] = {}
    for split in ("train", "val"):
        frame = dataset.read_split(paths, split, root)
        source = frame["source"] if "source" in frame.columns else None
        counts[split] = 0 if source is None else int((source == "production").sum())
    counts["test"] = len(dataset.read_split(paths, PRODUCTION_TEST, root))
    until = 0.0
    raw = root / paths.raw_production
    if raw.exists():
        labelled = pd.read_parquet(raw)
        if len(labelled) and "labelled_at" in labelled.columns:
            until = float(pd.to_numeric(labelled["labelled_at"], errors="coerce").max())
    return {
        DataTag.PRODUCTION_ROWS: str(sum(counts.values())),
        "data.production_rows.train": str(counts["train"]),
        "data.production_rows.val": str(counts["val"]),
        "data.production_rows.test": str(counts["test"]),
        DataTag.PRODUCTION_LABELLED_UNTIL: repr(until) if until > 0 else "0",
    }


# -- the model card: the version's description in the MLflow UI -----------------------------


@dataclass(frozen=True)
class Reports:
    """The reports the card is made from (what evaluate, validate and optimize wrote)."""

    gates: dict[str, Any]
    evaluation: dict[str, Any]  # evaluate.details.json
    validation: dict[str, Any]
    optimization: dict[str, Any]  # optimize.details.json

    @classmethod
    def read(cls, reports: Path) -> Reports:
        return cls(
            gates=files.read_json(reports / "gates.json"),
            evaluation=files.read_json(reports / "evaluate.details.json"),
            validation=files.read_json(reports / "validate.json"),
            optimization=files.read_json(reports / "optimize.details.json"),
        )


# (label, this version's tag, how to show it, lower is better)
CARD_ROWS = [
    ("accuracy", "metric.accuracy", "{:.4f}", False),
    ("macro-F1", "metric.macro_f1", "{:.4f}", False),
    ("min class recall", "metric.min_class_recall", "{:.4f}", False),
    ("noise invariance", "metric.noise_invariance", "{:.4f}", False),
    ("production accuracy", "metric.production_accuracy", "{:.4f}", False),
    ("production macro-F1", "metric.production_macro_f1", "{:.4f}", False),
    ("p99 ms, batch 1", "metric.p99_ms_batch_1", "{:.4f}", True),
    ("p99 ms, batch 256", "metric.p99_ms_batch_256", "{:.3f}", True),
    ("size, bytes", "optimize.size_bytes", "{:,.0f}", True),
]


def model_card(
    *,
    reports: Reports,
    tags: dict[str, str],
    champion: tuple[str, dict[str, str]] | None,
    run_link: str | None,
) -> str:
    """The version's description (Markdown): what a reviewer needs on the first screen.
    The verdict, this version beside the champion it was compared with, the gates, the
    per-class recall, the data validation, what changed, and where the evidence is."""
    gates = reports.gates
    compared = reports.evaluation.get("champion") or {}
    # The part that depends on the champion is a section the review gate rewrites when
    # champion moves (registry.card), recomputed against the new one.
    versus = [f"**{_verdict(gates, reports.evaluation)}**", ""]
    production = _production_verdict(reports.evaluation, tags)
    if production:
        versus += [production, ""]
    versus += _side_by_side(
        tags, champion, compared, reports.evaluation.get("champion_production") or {}
    )
    versus += ["", card.what_changed(tags, champion)]
    lines = [card.section(card.SECTION, "\n".join(versus))]
    lines += ["", "| gate | value | threshold | result |", "|---|---|---|---|"]
    for g in gates["gates"].values():
        value = "n/a" if g["value"] is None else f"{g['value']:.4g}"
        result = "pass" if g["passed"] else "**FAIL**"
        if g.get("detail"):  # the champion gate says what it compared
            result += f": {g['detail']}"
        lines.append(f"| {g['name']} | {value} | {g['op']} {g['threshold']:g} | {result} |")
    per_class = reports.evaluation.get("per_class") or {}
    if per_class:
        lines += ["", "| class | " + " | ".join(per_class) + " |"]
        lines.append("|---|" + "---|" * len(per_class))
        for key in ("recall", "precision"):
            cells = " | ".join(f"{c[key]:.3f}" for c in per_class.values())
            lines.append(f"| {key} | {cells} |")
        support = " | ".join(str(c["support"]) for c in per_class.values())
        lines.append(f"| test rows | {support} |")
    val = reports.validation
    rows = ", ".join(f"{k} {v}" for k, v in val.get("rows", {}).items())
    passed = "passed" if val.get("success") else "**FAILED**"
    lines += [
        "",
        f"**Data validation** {passed}: {val.get('evaluated')} expectations, "
        f"{val.get('failed')} failed; rows: {rows}.",
    ]
    if run_link:
        lines += [
            "",
            f"Evidence: [the training run]({run_link}) (every metric and param; artifacts "
            "`evaluate/confusion.png`, `evaluate/gates.json`, `optimize/optimize.md`).",
        ]
    return "\n".join(lines) + "\n"


def _verdict(gates: dict[str, Any], evaluation: dict[str, Any]) -> str:
    failed = [g["name"] for g in gates["gates"].values() if not g["passed"]]
    verdict = "Gates: all passed." if not failed else f"Gates FAILED: {', '.join(failed)}."
    compared = evaluation.get("champion") or {}
    if compared.get("compared"):
        verdict += (
            f" Against champion v{compared['version']} on the same "
            f"{evaluation.get('test_rows', '?')} test rows: accuracy "
            f"{evaluation['accuracy']:.4f} vs {compared['accuracy']:.4f}; "
            f"{compared['only_challenger_right']} rows only this version gets right, "
            f"{compared['only_champion_right']} only the champion; "
            f"McNemar p = {compared['p_value']:.3g}."
        )
    elif compared:
        verdict += (
            f" Not compared with champion v{compared.get('version')}: {compared.get('reason')}."
        )
    else:
        verdict += " No champion yet: nothing to compare with."
    return verdict


def _production_verdict(evaluation: dict[str, Any], tags: dict[str, str]) -> str:
    """The production test set: its score and the champion comparison on it, in words."""
    prod = evaluation.get("production") or {}
    rows = tags.get(DataTag.PRODUCTION_ROWS, "0")
    if not prod:
        return ""
    if not prod.get("scored"):
        return (
            f"Production labels: {rows} rows in this version's data; not scored on them: "
            f"{prod.get('reason')}."
        )
    text = (
        f"**Production labels**: {rows} rows in this version's data (train "
        f"{tags.get('data.production_rows.train', '?')}, val "
        f"{tags.get('data.production_rows.val', '?')}, held out "
        f"{tags.get('data.production_rows.test', '?')}). On the {prod['rows']} held-out "
        f"production test rows: accuracy {prod['accuracy']:.4f}, macro-F1 {prod['macro_f1']:.4f}"
    )
    theirs = evaluation.get("champion_production") or {}
    if theirs.get("compared"):
        text += (
            f"; champion v{theirs['version']} on the same rows: accuracy "
            f"{theirs['accuracy']:.4f}; {theirs['only_challenger_right']} rows only this "
            f"version gets right, {theirs['only_champion_right']} only the champion; "
            f"McNemar p = {theirs['p_value']:.3g}"
        )
    elif theirs:
        text += f"; not compared with champion v{theirs.get('version')}: {theirs.get('reason')}"
    return text + "."


def _side_by_side(
    tags: dict[str, str],
    champion: tuple[str, dict[str, str]] | None,
    compared: dict[str, Any],
    compared_production: dict[str, Any],
) -> list[str]:
    head = "| | this version |"
    rule = "|---|---|"
    if champion:
        head += f" champion v{champion[0]} | change |"
        rule += "---|---|"
    out = [head, rule]
    for label, key, fmt, lower_better in CARD_ROWS:
        if key.startswith("metric.production_") and key not in tags:
            continue  # not scored on production rows: no row of "n/a"
        mine = card.number(tags.get(key))
        row = f"| {label} | {fmt.format(mine) if mine is not None else 'n/a'} |"
        if champion:
            theirs = card.number(champion[1].get(key))
            if label == "accuracy" and compared.get("compared"):
                theirs = float(compared["accuracy"])  # on this version's test set
            elif label == "production accuracy" and compared_production.get("compared"):
                theirs = float(compared_production["accuracy"])  # on its production test set
            shown = fmt.format(theirs) if theirs is not None else "n/a"
            row += f" {shown} | {card.change(mine, theirs, lower_better)} |"
        out.append(row)
    variant = (
        f"| variant | {tags.get(LineageTag.MODEL_FAMILY)} {tags.get(LineageTag.MODEL_VARIANT)} |"
    )
    if champion:
        ctags = champion[1]
        variant += f" {ctags.get(LineageTag.MODEL_FAMILY, '?')} {ctags.get(LineageTag.MODEL_VARIANT, '?')} | |"
    out.append(variant)
    if champion:
        out += [
            "",
            f"Accuracy (base and production) is measured for both on this version's test "
            f"rows; the champion's other figures are those it was registered with "
            f"(v{champion[0]}'s own run).",
        ]
    return out


def _champion_tags(
    registry: Registry, name: str, reports: Path
) -> tuple[str, dict[str, str]] | None:
    """The champion evaluate compared with (its number and tags), if there was one. In
    team mode it is a production version (``register.champion_model``): its lineage tags
    are those of the candidate the gate copied (``source.model``/``source.version``)."""
    compared = files.read_json(reports / "evaluate.details.json").get("champion") or {}
    version = compared.get("version")
    if not version:
        return None
    tags = registry.version(str(compared.get("model") or name), str(version)).tags
    source, number = tags.get(CopyTag.SOURCE_MODEL), tags.get(CopyTag.SOURCE_VERSION)
    if source and number:
        tags = {**registry.version(source, number).tags, **tags}
    return str(version), tags


def _run_link(registry: Registry, run_id: str) -> str | None:
    """The run's page in the MLflow UI, relative to the UI (the card is shown there)."""
    run = registry.run(run_id)
    return f"#/experiments/{run.experiment_id}/runs/{run_id}" if run else None


def _write(reports: Path, result: Result) -> None:
    # No "created" flag here: a re-run must write the same file, or DVC would see a change.
    # A DVC metric holds numbers only: the model's name is register.model_name.
    files.write_metrics(reports / "register.json", {"version": int(result.version)})
