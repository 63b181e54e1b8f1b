"""Harvest: production feedback labels joined to their logged predictions, as training data.

``harvest`` (`modelyard harvest`) reads the inference log (the service's JSON lines; record
shapes in ``monitoring.logscan``) and writes, under ``paths.production``:

- ``labelled.parquet``: one row per prediction id that has a valid label: every feature by
  name (float64), ``data.target`` (the label), and provenance: ``prediction_id``,
  ``model`` (NAME/VERSION), ``prediction`` (str), ``predicted_at``, ``labelled_at`` (UNIX
  times), ``log_file`` (the prediction's file, relative to the log folder) and
  ``harvested_at`` (ISO time of the harvest that wrote the row: the window it came from).
  Merged with what was there: existing rows are kept, a re-labelled id is replaced.
- ``rejected.parquet``: joined rows the training contract refused, appended, with a
  ``reason`` naming the rule and the column (``range(pixel_3): 17 is outside [0, 16]``);
  the label is kept as JSON text (it may be of any type) and the features as logged in
  ``logged_features``. Never silently dropped.
- ``harvest.json``: what this run read, added, replaced, rejected and left pending.

The project's Parquet files are working copies: the harvest state keeps the originals
(below), because a CI checkout (monitor.yml) cleans the workspace every run while the log
volume, and the manifest saying those lines were consumed, persist.

How (what makes it safe to run often, and loss-free across log rotation):

- **Incremental.** ``<log dir>/.harvest/manifest.json`` maps each log file (relative to the
  log folder; files in direct subfolders too, one per pod) to the bytes consumed. A run
  reads only complete lines past that offset; a torn last line (a write in flight) is left
  for the next run, unless the file has not changed for ``TORN_FINAL_SECONDS`` (a crash's
  leftover: counted as malformed and consumed). Malformed lines are counted, not fatal.
  The log writer deletes a file only once the manifest says it was consumed to its size
  (``services.inference_log``).
- **Pending.** ``<log dir>/.harvest/pending.parquet`` (0600 in a 0700 folder: raw inputs)
  remembers predictions not yet labelled, and labels whose prediction is not known yet
  (orphans), each for ``harvest.pending_days`` after its time. A label that arrives after
  rotation deleted its prediction's file still joins.
- **Restored, never started afresh.** After each harvest (after ``dvc add``) the state
  keeps byte copies of ``labelled.parquet`` and ``rejected.parquet`` (0600, written
  atomically). A harvest first compares the project's files with them: a file that is
  missing, or holds nothing the copy lacks (an older version, e.g. an old pointer pulled),
  is replaced by the copy (logged); one that holds rows the copy lacks (a harvest that
  crashed before keeping its copy) keeps them, merged with the copy's. Only then are the
  new lines merged in. Without a copy, a file DVC tracks but the workspace lacks is an
  error (``dvc pull`` it first), never a fresh start. Copies, not the .dvc pointer: the
  pointer is derived (``dvc add`` of the same bytes writes the same md5) and is useless
  without the pushed data, while the copy needs no remote. To start the dataset afresh,
  move aside the project's file, its .dvc file and the state's copy.
- **Last label wins.** Labels join predictions by id across all files; per id the label
  with the latest feedback time wins. A label different from the id's previous one (in
  this run, among the orphans or in labelled.parquet) is a conflict; a repeated identical
  label is not, and changes nothing.
- **Validated** against the training contract: the label is one of ``data.labels`` (same
  type, as the service checks it: the int 7 is not 7.0, "7" or true), exactly
  ``len(data.feature_names)`` finite numbers within ``data.range_for``, plus the column
  expectations of the GX suite ``validate.suite`` that judge single values (aggregate ones,
  such as a column's mean, judge the training table: the validate stage runs them).
- **Crash-safe.** Outputs are written atomically, then (``harvest.dvc_add`` in a DVC
  project) ``dvc add``-ed, and only then the state's copies, the pending state and the
  manifest: a crash re-reads the same lines, and a re-run with the same labels adds
  nothing.

``labelled_after`` counts rows labelled after a time: the drift job asks it whether new
labels exist since the last training.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import orjson
import pandas as pd

from core import files, tools
from core.errors import DataError, PipelineFailed
from pipelines import validation
from pipelines.config import PROVENANCE, Data, Params, Paths
from services import inference_log

log = logging.getLogger(__name__)

LABELLED = "labelled.parquet"
REJECTED = "rejected.parquet"
SUMMARY = "harvest.json"
PENDING = "pending.parquet"
LOCK = "lock"
DAY = 86_400.0
# A torn last line untouched this long is what a crash left: a write in flight (one
# os.write) completes in microseconds, so it will never be finished.
TORN_FINAL_SECONDS = 60.0
REASON = "reason"
LOGGED_FEATURES = "logged_features"
PENDING_COLUMNS = ("kind", "id", "model", "features", "prediction", "ts", "log_file", "label")


@dataclass(frozen=True)
class Harvested:
    """What one harvest did (harvest.json holds the same, plus the log folder)."""

    rows: int  # total rows in labelled.parquet
    new: int  # ids labelled for the first time
    replaced: int  # ids whose label changed
    conflicts: int  # labels that differ from the id's previous label
    rejected: int  # rows the contract refused in this run
    orphans: int  # labels whose prediction is not known yet, kept pending
    pending: int  # unlabelled predictions remembered
    files_read: int  # log files with new bytes read
    path: Path  # labelled.parquet
    newest_label: float | None  # the latest labelled_at in labelled.parquet
    malformed: int = 0  # unreadable lines skipped (counted, not fatal)
    expired: int = 0  # pending predictions and orphans forgotten (older than pending_days)
    restored: int = 0  # labelled rows the project lacked, copied back from the harvest state
    removed_folders: int = 0  # dead pods' folders, read to their end, removed after reading


@dataclass(frozen=True, slots=True)  # many are held: pending predictions
class Prediction:
    id: str
    model: str
    features: str  # as logged, JSON text: parsed and validated when a label joins it
    prediction: str
    ts: float
    log_file: str


@dataclass(frozen=True, slots=True)
class Label:
    id: str
    label: Any  # as sent: validated when it wins
    ts: float


@dataclass(frozen=True)
class Candidate:
    """A joined row before validation; ``replaces`` for a re-labelled existing id."""

    prediction: Prediction
    label: Label
    replaces: bool


@dataclass
class _Read:
    predictions: dict[str, Prediction]
    labels: list[Label]
    offsets: dict[str, int]
    files_read: int = 0
    malformed: int = 0


# -- the entry points ---------------------------------------------------------------------------


def harvest(
    params: Params,
    *,
    root: Path,
    log_dir: Path,
    now: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> Harvested:
    """Read the log's new lines, join labels to predictions, validate, write the outputs."""
    now = time.time() if now is None else now
    say = progress or (lambda _: None)
    if not log_dir.is_dir():
        raise DataError(
            f"no inference log at {log_dir}: point --log-dir (or MODELYARD_LOG_DIR) at the "
            "service's log folder"
        )
    suite = validation.load_suite(root / params.validate_.suite)
    out_dir = root / params.paths.production
    state = log_dir / inference_log.HARVEST_DIR
    state.mkdir(mode=0o700, exist_ok=True)
    state.chmod(0o700)
    with _locked(state / LOCK):
        restored = restore(out_dir, state, params.data, say)
        manifest = _read_manifest(log_dir)
        read = _read_new(log_dir, manifest, say)
        say(f"joining {len(read.labels):,} labels to {len(read.predictions):,} predictions")
        pending_predictions, orphans = _read_pending(state / PENDING)
        labelled = _read_labelled(out_dir / LABELLED, params.data, state=state)
        done = set() if labelled is None else set(labelled["prediction_id"])
        for pid, prediction in read.predictions.items():
            if pid not in done:  # else a line read again after a crash: already labelled
                pending_predictions.setdefault(pid, prediction)
        wanted = {label.id for label in read.labels} | set(orphans)
        existing = _existing(labelled, params.data, wanted & done)
        candidates, orphans, conflicts = join(
            read.labels, existing=existing, predictions=pending_predictions, orphans=orphans
        )
        say(f"validating {len(candidates):,} rows against the training contract")
        stamp = datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")
        good, bad = validate(candidates, params.data, suite, harvested_at=stamp)
        merged, new, replaced = _merge(labelled, good, params.data)
        for pid in good["prediction_id"]:
            pending_predictions.pop(str(pid), None)
        horizon = now - params.harvest.pending_days * DAY
        before = len(pending_predictions) + len(orphans)
        pending_predictions = {k: p for k, p in pending_predictions.items() if p.ts >= horizon}
        orphans = {k: o for k, o in orphans.items() if o.ts >= horizon}
        expired = before - len(pending_predictions) - len(orphans)
        if expired:
            log.info(
                "harvest: %d pending records older than %g days forgotten",
                expired,
                params.harvest.pending_days,
            )

        say(f"writing {out_dir}")
        if new or replaced or not (out_dir / LABELLED).exists():
            files.write_parquet(out_dir / LABELLED, merged)
        if len(bad) or not (out_dir / REJECTED).exists():
            files.write_parquet(out_dir / REJECTED, _append_rejected(out_dir / REJECTED, bad))
        newest = float(merged["labelled_at"].max()) if len(merged) else None
        result = Harvested(
            rows=len(merged),
            new=new,
            replaced=replaced,
            conflicts=conflicts,
            rejected=len(bad),
            orphans=len(orphans),
            pending=len(pending_predictions),
            files_read=read.files_read,
            path=out_dir / LABELLED,
            newest_label=newest,
            malformed=read.malformed,
            expired=expired,
            restored=restored,
        )
        files.write_json(
            out_dir / SUMMARY,
            {"harvested_at": stamp, "log_dir": str(log_dir), **asdict(result)},
        )
        if params.harvest.dvc_add and (root / ".dvc").is_dir():
            say("dvc add")
            dvc_add(root, [out_dir / LABELLED, out_dir / REJECTED])
        _keep(out_dir, state)
        # Last: what was consumed. A crash before this re-reads the same lines next time.
        if read.labels or read.predictions or expired or not (state / PENDING).exists():
            _write_pending(state / PENDING, pending_predictions, orphans)
        files.write_json(
            inference_log.manifest_path(log_dir), {"version": 1, "files": read.offsets}
        )
        dead = dead_folders(
            log_dir, read.offsets, now=now, idle_s=params.harvest.dead_folder_days * DAY
        )
        for folder in dead:
            log.info("harvest: removing %s: every file read, none written for %g days",
                     folder, params.harvest.dead_folder_days)  # fmt: skip
            shutil.rmtree(folder)
        if dead:
            gone = {f"{folder.name}/" for folder in dead}
            kept = {k: v for k, v in read.offsets.items() if not k.startswith(tuple(gone))}
            files.write_json(inference_log.manifest_path(log_dir), {"version": 1, "files": kept})
            result = replace(result, removed_folders=len(dead))
    return result


def dead_folders(
    log_dir: Path, offsets: dict[str, int], *, now: float, idle_s: float
) -> list[Path]:
    """The pod folders under ``log_dir`` whose every log file was read to its end
    (``offsets``, the manifest just written) and none written for ``idle_s``: dead pods'.
    A folder holding anything else, or nothing of the log, is left alone."""
    dead = []
    pattern = f"{inference_log.PREFIX}*{inference_log.SUFFIX}"
    for folder in sorted(p for p in log_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        entries = list(folder.iterdir())
        logs = [p for p in entries if p.match(pattern)]
        if not logs or len(logs) != len(entries):
            continue
        stats = {p: p.stat() for p in logs}
        read_all = all(
            offsets.get(f"{folder.name}/{p.name}", -1) >= st.st_size for p, st in stats.items()
        )
        if read_all and now - max(st.st_mtime for st in stats.values()) > idle_s:
            dead.append(folder)
    return dead


def labelled_after(root: Path, paths: Paths, ts: float) -> int:
    """Rows of labelled.parquet labelled after ``ts`` (a UNIX time); 0 when there is none."""
    path = root / paths.production / LABELLED
    if not path.exists():
        return 0
    frame = pd.read_parquet(path, columns=["labelled_at"])
    return int((frame["labelled_at"] > ts).sum())


def dvc_add(root: Path, targets: list[Path]) -> None:
    """``dvc add`` the outputs, so their .dvc pointers change and ``ingest`` re-runs."""
    command = [tools.binary("dvc"), "add", *(str(t.relative_to(root)) for t in targets)]
    proc = subprocess.run(command, cwd=root, env=tools.env(), capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PipelineFailed(
            f"`dvc add` of {', '.join(str(t.relative_to(root)) for t in targets)} failed "
            f"(exit {proc.returncode}): {' '.join(detail)}. The labels are written but DVC does "
            "not track them yet: fix that (if git tracks the files, `git rm --cached` them), "
            "then run `modelyard harvest` again (it runs dvc add again), or set "
            "harvest.dvc_add: false."
        )


# -- reading the log ----------------------------------------------------------------------------


def _read_manifest(log_dir: Path) -> dict[str, int]:
    path = inference_log.manifest_path(log_dir)
    if not path.exists():
        return {}
    try:
        offsets = files.read_json(path)["files"]
        return {str(k): int(v) for k, v in offsets.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{path} is unreadable ({exc}): move it aside to harvest the whole log again "
            "(labels already harvested are not counted twice)"
        ) from exc


def log_files(log_dir: Path) -> list[Path]:
    """The log's files, as ``inference_log.read`` finds them: the folder and its direct
    subfolders (one per pod), oldest first."""
    pattern = f"{inference_log.PREFIX}*{inference_log.SUFFIX}"
    found = [*log_dir.glob(pattern), *log_dir.glob(f"*/{pattern}")]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))


def _read_new(log_dir: Path, manifest: dict[str, int], say: Callable[[str], None]) -> _Read:
    """Every complete line past each file's offset; the new offsets (files gone: dropped)."""
    out = _Read(predictions={}, labels=[], offsets={})
    paths = log_files(log_dir)
    for i, path in enumerate(paths, 1):
        rel = str(path.relative_to(log_dir))
        stat = path.stat()
        offset = manifest.get(rel, 0)
        if stat.st_size < offset:  # the log is append-only: this is another file now
            log.warning("harvest: %s is shorter than what was read of it; reading it again", rel)
            offset = 0
        if stat.st_size == offset:
            out.offsets[rel] = offset
            continue
        say(f"reading {rel} ({i}/{len(paths)})")
        out.files_read += 1
        crashed = time.time() - stat.st_mtime > TORN_FINAL_SECONDS
        out.offsets[rel] = _read_file(path, rel, offset, crashed, out)
    return out


def _read_file(path: Path, rel: str, offset: int, crashed: bool, out: _Read) -> int:
    """Read complete lines from ``offset``; return the offset consumed."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        for line in fh:
            if not line.endswith(b"\n"):  # torn: a write in flight, or a crash's leftover
                if crashed:
                    out.malformed += 1
                    offset += len(line)
                break
            offset += len(line)
            if line.strip():
                _record(line, rel, out)
    return offset


def _record(line: bytes, rel: str, out: _Read) -> None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        out.malformed += 1
        return
    if not isinstance(record, dict):
        out.malformed += 1
        return
    kind, rid, ts = record.get("type"), record.get("id"), record.get("ts")
    if kind not in ("prediction", "feedback"):
        return  # shadow records and others: not training data
    if not isinstance(rid, str) or not _number(ts):
        out.malformed += 1
        return
    if kind == "feedback":
        out.labels.append(Label(rid, record.get("label"), float(ts)))
    elif rid not in out.predictions:
        out.predictions[rid] = Prediction(
            rid,
            sys.intern(str(record.get("model"))),  # a few distinct values, many records
            _json(record.get("features")),
            sys.intern(str(record.get("prediction"))),
            float(ts),
            rel,
        )


# -- joining ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Existing:
    """An id already in labelled.parquet: its label and its row's prediction."""

    label: Label
    prediction: Prediction


def join(
    labels: list[Label],
    *,
    existing: dict[str, Existing],
    predictions: dict[str, Prediction],
    orphans: dict[str, Label],
) -> tuple[list[Candidate], dict[str, Label], int]:
    """Per id, the last label (by feedback time) against its prediction.

    Returns the rows to validate (new ids, and existing ids whose label changed), the
    orphans left (labels whose prediction is unknown) and the number of conflicts: labels
    that differ from the id's label before them (existing row, orphan or this run)."""
    by_id: dict[str, list[Label]] = {}
    for label in labels:
        by_id.setdefault(label.id, []).append(label)
    for rid in orphans:
        if rid in predictions or rid in existing:
            by_id.setdefault(rid, [])
    candidates: list[Candidate] = []
    left = {k: v for k, v in orphans.items() if k not in by_id}
    conflicts = 0
    for rid, events in by_id.items():
        known = existing.get(rid)
        base = known.label if known else orphans.get(rid)
        timeline = sorted([*([base] if base else []), *events], key=lambda lab: lab.ts)
        conflicts += sum(1 for a, b in pairwise(timeline) if not same_label(a.label, b.label))
        last = timeline[-1]
        if known is not None:
            if not same_label(last.label, known.label.label):
                candidates.append(Candidate(known.prediction, last, replaces=True))
        elif rid in predictions:
            candidates.append(Candidate(predictions[rid], last, replaces=False))
        else:
            left[rid] = last
    return candidates, left, conflicts


def same_label(a: Any, b: Any) -> bool:
    """Same type and value: the label 7 is not 7.0, "7" or true (the service's rule)."""
    return type(a) is type(b) and a == b


# -- validating ---------------------------------------------------------------------------------


def check_row(features: Any, label: Any, data: Data) -> tuple[list[float] | None, list[str]]:
    """The training contract on one row (``check_rows`` on a list of one)."""
    values, reasons, shaped = check_rows([features], [label], data)
    return (values[0].tolist() if shaped[0] else None), reasons[0]


def check_rows(
    features: list[Any], labels: list[Any], data: Data
) -> tuple[np.ndarray, list[list[str]], list[bool]]:
    """The training contract on rows: their values (n x width, NaN where unusable), per row
    the reasons it fails (each naming the rule and the column), and whether the row had
    the right shape (a list of ``width`` values)."""
    names = data.feature_names
    width = len(names)
    values = np.full((len(features), width), np.nan)
    reasons: list[list[str]] = [[] for _ in features]
    shaped = [False] * len(features)
    for i, label in enumerate(labels):
        if not any(same_label(label, c) for c in data.labels):
            reasons[i].append(
                f"label({data.target}): {_show(label)} is not one of the classes {data.labels}"
            )
    plain: list[int] = []  # rows of `width` numbers: checked as one array below
    for i, row in enumerate(features):
        if not isinstance(row, list):
            reasons[i].append(
                f"width(features): expected a list of {width} numbers, got {_show(row)}"
            )
            continue
        if len(row) != width:
            reasons[i].append(f"width(features): {len(row)} values, expected {width}")
            continue
        shaped[i] = True
        if all(type(v) is float or type(v) is int for v in row):
            plain.append(i)
            continue
        for j, (name, value) in enumerate(zip(names, row, strict=True)):
            if _number(value):
                values[i, j] = value
            else:
                reasons[i].append(f"finite({name}): {_show(value)} is not a finite number")
    if plain:
        values[plain] = np.array([features[i] for i in plain], dtype=np.float64)
    lows = np.array([(data.range_for(n) or (-np.inf, np.inf))[0] for n in names], np.float64)
    highs = np.array([(data.range_for(n) or (-np.inf, np.inf))[1] for n in names], np.float64)
    with np.errstate(invalid="ignore"):
        infinite = np.isinf(values)
        outside = ~infinite & ((values < lows) | (values > highs))
    for i, j in np.argwhere(infinite):
        reasons[i].append(f"finite({names[j]}): {values[i, j]} is not a finite number")
    for i, j in np.argwhere(outside):
        reasons[i].append(
            f"range({names[j]}): {values[i, j]:g} is outside [{lows[j]:g}, {highs[j]:g}]"
        )
    return values, reasons, shaped


def validate(
    candidates: list[Candidate],
    data: Data,
    suite: list[validation.Expectation],
    *,
    harvested_at: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labelled rows that pass the contract, and rejected rows with their reasons."""
    names = data.feature_names
    labels = [c.label.label for c in candidates]
    values, reasons, _ = check_rows(
        [orjson.loads(c.prediction.features) for c in candidates], labels, data
    )
    passing = [i for i, why in enumerate(reasons) if not why]
    failures = _suite_failures(values[passing], [labels[i] for i in passing], data, suite)
    for i, why in failures.items():
        reasons[passing[i]].extend(why)
    frame = pd.DataFrame(values, columns=names)
    frame[data.target] = pd.Series(labels, dtype=object)
    frame["prediction_id"] = [c.prediction.id for c in candidates]
    frame["model"] = [c.prediction.model for c in candidates]
    frame["prediction"] = [c.prediction.prediction for c in candidates]
    frame["predicted_at"] = np.array([c.prediction.ts for c in candidates], np.float64)
    frame["labelled_at"] = np.array([c.label.ts for c in candidates], np.float64)
    frame["log_file"] = [c.prediction.log_file for c in candidates]
    frame["harvested_at"] = harvested_at
    frame[LOGGED_FEATURES] = [c.prediction.features for c in candidates]
    ok = np.array([not why for why in reasons], dtype=bool)
    good = _typed(frame[ok].drop(columns=[LOGGED_FEATURES]).reset_index(drop=True), data)
    bad = frame[~ok].reset_index(drop=True)
    # A rejected label may be of any type (true, 7.0, "7"): JSON text keeps it as sent.
    bad[data.target] = [_json(v) for v in bad[data.target]]
    bad[REASON] = ["; ".join(why) for why in reasons if why]
    for pid, why in zip(bad["prediction_id"], bad[REASON], strict=True):
        log.info("harvest: rejected %s: %s", pid, why)
    return good, bad


# GX expectations that judge each value (column map expectations) name the rows that fail;
# the others (a column's mean, its share of unique values) judge a whole table.
PER_VALUE = ("expect_column_values_to_", "expect_column_value_")


def _suite_failures(
    values: np.ndarray, labels: list[Any], data: Data, suite: list[validation.Expectation]
) -> dict[int, list[str]]:
    """The GX suite's per-value column expectations on the rows; per failing row (its
    position), the reasons. Aggregate expectations judge the training table, which the
    validate stage checks; GX is not even imported when the suite has none per value."""
    columns = {*data.feature_names, data.target}
    expectations = [
        e for e in suite if e["kwargs"].get("column") in columns and e["type"].startswith(PER_VALUE)
    ]
    if not len(values) or not expectations:
        return {}
    frame = pd.DataFrame(values, columns=data.feature_names)
    frame[data.target] = pd.Series(labels, dtype=object)
    out: dict[int, list[str]] = {}
    for check in validation.validate({"harvest": (frame, expectations)}, sample_size=len(frame)):
        if check.success:
            continue
        if check.error or check.unexpected_count is None:
            log.warning(
                "harvest: %s(%s) could not run on the harvested rows: %s",
                check.expectation,
                check.column,
                check.error,
            )
            continue
        for index in check.sample_rows:
            value = frame.at[index, check.column]
            out.setdefault(int(index), []).append(
                f"{check.expectation}({check.column}): {_show(value)} is unexpected "
                "(validate.suite)"
            )
    return out


# -- outputs and state --------------------------------------------------------------------------


def _columns(data: Data, *extra: str) -> list[str]:
    return [*data.feature_names, data.target, *PROVENANCE, *extra]


def _typed(frame: pd.DataFrame, data: Data) -> pd.DataFrame:
    """labelled.parquet's dtypes: float64 features and times, the label as data.labels."""
    out = frame.astype({name: "float64" for name in data.feature_names})
    out = out.astype({"predicted_at": "float64", "labelled_at": "float64"})
    integer = all(isinstance(c, int) and not isinstance(c, bool) for c in data.labels)
    out[data.target] = out[data.target].astype("int64" if integer else "object")
    for col in ("prediction_id", "model", "prediction", "log_file", "harvested_at"):
        out[col] = out[col].astype("object")
    return out


def _read_labelled(path: Path, data: Data, *, state: Path) -> pd.DataFrame | None:
    """labelled.parquet as it is (None: there is none yet), checked."""
    pointer = path.with_name(f"{path.name}.dvc")
    if not path.exists():
        if pointer.exists():
            raise DataError(
                f"{path} is tracked by DVC ({pointer.name}) but not in the workspace, and "
                f"the harvest state ({state}) has no copy of it: run `dvc pull {pointer}` "
                "first (a harvest now would start it afresh without its rows)"
            )
        return None
    return _load_labelled(path, data, state=state)


def _load_labelled(path: Path, data: Data, *, state: Path) -> pd.DataFrame:
    """A labelled.parquet (the project's or the state's copy), checked against the data
    contract: rows are only ever added to it or replaced."""
    frame = pd.read_parquet(path)
    missing = [c for c in _columns(data) if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path} lacks the columns {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}: it was harvested under another data "
            f"contract (params.yaml data). To start afresh, move aside {LABELLED} in the "
            f"project (and its .dvc file) and the harvest state's copy in {state}."
        )
    return frame


def restore(out_dir: Path, state: Path, data: Data, say: Callable[[str], None]) -> int:
    """The project's labelled.parquet and rejected.parquet brought up to the state's
    copies (what the last harvest kept); returns the labelled rows this added back.

    A file missing, or holding nothing its copy lacks (an older version), becomes the copy
    (its bytes: the same .dvc md5); one holding rows the copy lacks (a harvest stopped
    before keeping its copy) keeps them, merged with the copy's rows (per prediction id
    the later label, as a harvest would merge them)."""
    copy, target = state / LABELLED, out_dir / LABELLED
    back = 0
    if copy.exists() and not _same(target, copy):
        kept = _load_labelled(copy, data, state=state)
        current = _load_labelled(target, data, state=state) if target.exists() else None
        back = int(_newer(kept, current).sum())
        if back:  # else the project's file holds all the copy holds (and more): kept
            say(f"restoring {target.name} from the harvest state")
            if current is None or not _newer(current, kept).any():
                _copy(copy, target)
                rows = len(kept)
            else:
                ahead = current[_newer(current, kept)]
                rest = kept[~kept["prediction_id"].isin(ahead["prediction_id"])]
                merged = _typed(pd.concat([rest, ahead], ignore_index=True), data)
                files.write_parquet(target, merged)
                rows = len(merged)
            log.log(
                logging.INFO if current is None else logging.WARNING,
                "harvest: %s %s: restored from the harvest state's copy %s, %d labelled "
                "rows back, %d in all",
                target,
                "was missing (a clean checkout)" if current is None else "was older",
                copy,
                back,
                rows,
            )
    copy, target = state / REJECTED, out_dir / REJECTED
    if copy.exists() and not _same(target, copy):
        kept_rejected = pd.read_parquet(copy)
        old = _read_frame(target)
        both = kept_rejected if old is None else _union_rejected(kept_rejected, old)
        added = len(both) - (0 if old is None else len(old))
        if added:
            if len(both) == len(kept_rejected):  # nothing the copy lacks: the copy
                _copy(copy, target)
            else:
                files.write_parquet(target, both)
            log.warning(
                "harvest: %s restored from the harvest state's copy %s: %d rejected rows back",
                target,
                copy,
                added,
            )
    return back


def _newer(rows: pd.DataFrame, other: pd.DataFrame | None) -> pd.Series:
    """Which of ``rows`` ``other`` lacks: ids it has not, or has with an earlier label."""
    if other is None:
        return pd.Series(True, index=rows.index)
    theirs = rows["prediction_id"].map(other.set_index("prediction_id")["labelled_at"])
    return theirs.isna() | (rows["labelled_at"] > theirs)


def _keep(out_dir: Path, state: Path) -> None:
    """The state's copies of labelled.parquet and rejected.parquet, after a harvest: the
    record of what was harvested (raw inputs: 0600, in the 0700 folder)."""
    for name in (LABELLED, REJECTED):
        if not _same(out_dir / name, state / name):
            _copy(out_dir / name, state / name)


def _copy(source: Path, target: Path) -> None:
    """``source``'s bytes to ``target``, atomically; 0600 (mkstemp creates it so)."""
    with files.atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    target.chmod(0o600)


def _same(a: Path, b: Path) -> bool:
    """Both exist with the same bytes."""
    if not (a.exists() and b.exists()) or a.stat().st_size != b.stat().st_size:
        return False
    return files.sha256(a) == files.sha256(b)


def _read_frame(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def _existing(labelled: pd.DataFrame | None, data: Data, ids: set[str]) -> dict[str, Existing]:
    """The rows of labelled.parquet with these ids, as labels and predictions (a re-label
    of one joins its features)."""
    if labelled is None or not ids:
        return {}
    rows = labelled[labelled["prediction_id"].isin(ids)]
    values = rows[data.feature_names].to_numpy(np.float64).tolist()
    out: dict[str, Existing] = {}
    for rec, features in zip(rows.to_dict("records"), values, strict=True):
        rid = str(rec["prediction_id"])
        out[rid] = Existing(
            Label(rid, labelled_value(rec[data.target]), float(rec["labelled_at"])),
            Prediction(
                rid,
                str(rec["model"]),
                _json(features),
                str(rec["prediction"]),
                float(rec["predicted_at"]),
                str(rec["log_file"]),
            ),
        )
    return out


def labelled_value(value: Any) -> Any:
    """A label as Python has it (numpy's int64 is not the int the service compares)."""
    return value.item() if isinstance(value, np.generic) else value


def _merge(
    labelled: pd.DataFrame | None, good: pd.DataFrame, data: Data
) -> tuple[pd.DataFrame, int, int]:
    """Existing rows kept (a re-labelled id replaced in place), new rows appended."""
    base = labelled if labelled is not None else _typed(pd.DataFrame(columns=_columns(data)), data)
    if good.empty:
        return base, 0, 0
    known = set(base["prediction_id"])
    replacing = good[good["prediction_id"].isin(known)].set_index("prediction_id")
    fresh = good[~good["prediction_id"].isin(known)].sort_values(["labelled_at", "prediction_id"])
    merged = base.copy()
    hit = merged["prediction_id"].isin(replacing.index)
    for col in (data.target, "labelled_at", "harvested_at"):
        merged.loc[hit, col] = merged.loc[hit, "prediction_id"].map(replacing[col].to_dict())
    frames = [f for f in (merged, fresh) if len(f)]
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return _typed(out.reset_index(drop=True), data), len(fresh), len(replacing)


def _append_rejected(path: Path, bad: pd.DataFrame) -> pd.DataFrame:
    """rejected.parquet with this run's rows appended (a re-read after a crash adds none)."""
    old = _read_frame(path)
    return bad.reset_index(drop=True) if old is None else _union_rejected(old, bad)


def _union_rejected(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``old``'s rejected rows, then those of ``new`` it lacks."""
    if old.empty:
        return new.reset_index(drop=True)
    both = pd.concat([old, new], ignore_index=True)
    return both.drop_duplicates(["prediction_id", "labelled_at", REASON]).reset_index(drop=True)


def _read_pending(path: Path) -> tuple[dict[str, Prediction], dict[str, Label]]:
    if not path.exists():
        return {}, {}
    frame = pd.read_parquet(path)
    predictions: dict[str, Prediction] = {}
    orphans: dict[str, Label] = {}
    columns = (frame[c].tolist() for c in PENDING_COLUMNS)
    for kind, rid, model, features, prediction, ts, log_file, label in zip(*columns, strict=True):
        if kind == "prediction":
            predictions[rid] = Prediction(
                rid, sys.intern(model), features, sys.intern(prediction), ts, sys.intern(log_file)
            )
        else:
            orphans[rid] = Label(rid, orjson.loads(label), ts)
    return predictions, orphans


def _write_pending(
    path: Path, predictions: dict[str, Prediction], orphans: dict[str, Label]
) -> None:
    """Raw inputs: 0600 (atomic writes create the file private), in the 0700 folder."""
    ps, os_ = list(predictions.values()), list(orphans.values())
    frame = pd.DataFrame(
        {
            "kind": ["prediction"] * len(ps) + ["label"] * len(os_),
            "id": [p.id for p in ps] + [o.id for o in os_],
            "model": [p.model for p in ps] + [""] * len(os_),
            "features": [p.features for p in ps] + ["null"] * len(os_),
            "prediction": [p.prediction for p in ps] + [""] * len(os_),
            "ts": np.array([p.ts for p in ps] + [o.ts for o in os_], np.float64),
            "log_file": [p.log_file for p in ps] + [""] * len(os_),
            "label": ["null"] * len(ps) + [_json(o.label) for o in os_],
        },
        columns=list(PENDING_COLUMNS),
    )
    files.write_parquet(path, frame)
    path.chmod(0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One harvest at a time per log: two would both read the same new lines."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(
                f"another `modelyard harvest` is running on this log ({path} is locked): "
                "wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def _number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _show(value: Any) -> str:
    """A value as the log had it (JSON), short."""
    text = _json(labelled_value(value))
    return text if len(text) <= 60 else f"{text[:57]}..."
