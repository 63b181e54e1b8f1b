"""Harvest loses no label: the real log writer rotates and prunes, labels arrive late,
twice, wrong or torn, and every one ends in labelled.parquet or rejected.parquet."""

from __future__ import annotations

import io
import json
import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core import files
from core.errors import DataError, PipelineFailed
from monitoring import harvest as harvesting
from pipelines import config
from services.inference_log import InferenceLog
from tests.conftest import Project, dvc, git, new_project

MODEL = "digits-classifier/1"
WIDTH = 64


@pytest.fixture
def proj(tmp_path: Path) -> Project:
    return new_project(tmp_path / "project")


def digit(rng: np.random.Generator, width: int = WIDTH) -> np.ndarray:
    """A row the contract accepts (the suite wants pixel_0 == 0)."""
    row = rng.integers(0, 17, width).astype(np.float32)
    row[0] = 0
    return row


def predict(log: InferenceLog, rows: list[Any], predictions: list[Any] | None = None) -> list[str]:
    """Prediction records exactly as services/service.py's predict() writes them."""
    request_id = uuid.uuid4().hex
    now = time.time()
    labels = predictions or [3] * len(rows)
    ids = [f"{request_id}-{i}" for i in range(len(rows))]
    log.append(
        [
            {
                "type": "prediction",
                "id": ids[i],
                "request_id": request_id,
                "ts": now,
                "model": MODEL,
                "features": rows[i],
                "prediction": labels[i],
                "probabilities": np.full(10, 0.1).round(6),
            }
            for i in range(len(rows))
        ]
    )
    return ids


def feedback(log: InferenceLog, pid: str, label: Any, ts: float | None = None) -> None:
    """A feedback record as services/service.py's feedback() writes it."""
    log.append([{"type": "feedback", "id": pid, "label": label, "ts": ts or time.time()}])


def run(proj: Project, log_dir: Path, **kw: Any) -> harvesting.Harvested:
    return harvesting.harvest(config.load(proj.params_path), root=proj.root, log_dir=log_dir, **kw)


def labelled(proj: Project) -> pd.DataFrame:
    return pd.read_parquet(proj.root / "data/production/labelled.parquet").set_index(
        "prediction_id"
    )


def test_labels_join_after_rotation_deleted_their_predictions(
    proj: Project, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    rng = np.random.default_rng(0)
    writer = InferenceLog(log_dir, max_bytes=2_000, max_files=2)
    rows = [digit(rng) for _ in range(12)]
    ids = [pid for row in rows for pid in predict(writer, [row])]  # ~600 bytes a record
    first = harvesting.log_files(log_dir)
    assert len(first) >= 3

    done = run(proj, log_dir)
    assert (done.new, done.pending, done.rows) == (0, 12, 0)
    state = log_dir / ".harvest"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "pending.parquet").stat().st_mode) == 0o600

    for _ in range(8):  # more traffic: the writer rotates and prunes what harvest consumed
        predict(writer, [digit(rng)])
    # harvested files past max_files are deleted (the last one too, unless the writer still
    # appended to it after the harvest: then it stays, up to hard_max_files)
    assert not any(p.exists() for p in first[:-1])
    for i, pid in enumerate(ids):
        feedback(writer, pid, i % 10)
    writer.close()

    done = run(proj, log_dir)
    assert (done.new, done.replaced, done.rejected, done.orphans) == (12, 0, 0, 0)
    assert done.pending == 8  # the later predictions, still unlabelled
    table = labelled(proj)
    assert list(table.loc[ids, "label"]) == [i % 10 for i in range(12)]
    names = config.load(proj.params_path).data.feature_names
    np.testing.assert_array_equal(table.loc[ids, names].to_numpy(), np.array(rows))
    assert set(table["log_file"]) <= {p.name for p in first}  # provenance: the deleted files
    assert table["model"].unique().tolist() == [MODEL]
    assert table.dtypes[names].unique().tolist() == [np.float64]
    assert harvesting.labelled_after(proj.root, config.Paths(), 0) == 12
    assert harvesting.labelled_after(proj.root, config.Paths(), done.newest_label or 0) == 0

    # pending_days later the unlabelled predictions are forgotten; a label for one is an orphan
    later = time.time() + 31 * 86_400
    assert run(proj, log_dir, now=later).pending == 0


def test_a_label_before_its_prediction_waits_as_an_orphan(proj: Project, tmp_path: Path) -> None:
    """Pods write their own folders: pod b's feedback file can be read before pod a has
    written (or harvest has read) the prediction."""
    writer_b = InferenceLog(tmp_path / "log" / "pod-b")
    feedback(writer_b, "req-0", 4)
    writer_b.close()
    done = run(proj, tmp_path / "log")
    assert (done.new, done.orphans) == (0, 1)
    writer_a = InferenceLog(tmp_path / "log" / "pod-a")
    writer_a.append(
        [{"type": "prediction", "id": "req-0", "request_id": "req", "ts": time.time(),
          "model": MODEL, "features": digit(np.random.default_rng(1)), "prediction": 4}]
    )  # fmt: skip
    writer_a.close()
    done = run(proj, tmp_path / "log")
    assert (done.new, done.orphans, done.rows) == (1, 0, 1)
    assert (
        labelled(proj).loc["req-0", "log_file"]
        == "pod-a/" + harvesting.log_files(tmp_path / "log" / "pod-a")[0].name
    )


def test_last_label_wins_and_conflicts_are_counted(proj: Project, tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    writer = InferenceLog(log_dir)
    rng = np.random.default_rng(2)
    a, b, c = predict(writer, [digit(rng) for _ in range(3)])
    t = time.time()
    feedback(writer, a, 3, t)
    feedback(writer, a, 3, t + 1)  # repeated: not a conflict
    feedback(writer, b, 5, t + 3)  # written first, but later by its time: it wins
    feedback(writer, b, 4, t + 2)
    feedback(writer, c, 1, t)
    done = run(proj, log_dir)
    assert (done.new, done.replaced, done.conflicts) == (3, 0, 1)
    first = labelled(proj)
    assert first.loc[[a, b, c], "label"].tolist() == [3, 5, 1]
    assert first.loc[a, "labelled_at"] == t + 1  # the last label, same as the first

    feedback(writer, a, 7, t + 10)  # re-labelled: replaced
    feedback(writer, b, 2, t + 2.5)  # older than b's label: a conflict that does not win
    feedback(writer, c, 1, t + 10)  # the same again: nothing
    writer.close()
    done = run(proj, log_dir, now=t + 20)
    assert (done.new, done.replaced, done.conflicts, done.rows) == (0, 1, 2, 3)
    table = labelled(proj)
    assert table.loc[[a, b, c], "label"].tolist() == [7, 5, 1]
    assert table.loc[a, "labelled_at"] == t + 10
    assert table.loc[c, "labelled_at"] == t  # the repeat changed nothing
    assert table.loc[a, "harvested_at"] != first.loc[a, "harvested_at"]
    assert table.loc[c, "harvested_at"] == first.loc[c, "harvested_at"]
    assert list(table.index) == list(first.index)  # replaced in place, nothing appended


def test_rows_the_contract_refuses_are_kept_with_the_reason_and_a_rerun_adds_nothing(
    proj: Project, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    writer = InferenceLog(log_dir)
    rng = np.random.default_rng(3)
    hot = digit(rng)
    hot[5] = 17
    odd = digit(rng)
    odd[0] = 3  # in range, but the GX suite says pixel_0 is always 0
    ids = predict(writer, [hot, digit(rng), digit(rng), digit(rng, 63), odd, digit(rng)])
    for pid, label in zip(ids, [1, 11, True, 2, 6, "7"], strict=True):
        feedback(writer, pid, label)
    good = predict(writer, [digit(rng)])[0]
    feedback(writer, good, 8)
    writer.close()

    done = run(proj, log_dir)
    assert (done.new, done.rejected, done.rows) == (1, 6, 1)
    rejected = pd.read_parquet(proj.root / "data/production/rejected.parquet").set_index(
        "prediction_id"
    )
    reasons = rejected.loc[ids, "reason"].tolist()
    assert reasons[0] == "range(pixel_5): 17 is outside [0, 16]"
    assert reasons[1].startswith("label(label): 11 is not one of the classes [0, 1, 2")
    assert reasons[2].startswith("label(label): true is not one of the classes")
    assert reasons[3] == "width(features): 63 values, expected 64"
    assert (
        reasons[4]
        == "expect_column_values_to_be_in_set(pixel_0): 3.0 is unexpected (validate.suite)"
    )
    assert reasons[5].startswith('label(label): "7" is not one of the classes')
    assert rejected.loc[ids, "label"].tolist() == ["1", "11", "true", "2", "6", '"7"']
    assert len(json.loads(rejected.loc[ids[3], "logged_features"])) == 63
    assert rejected.loc[ids[0], "pixel_5"] == 17
    assert labelled(proj).index.tolist() == [good]

    out = proj.root / "data/production"
    before = {name: files.sha256(out / name) for name in ("labelled.parquet", "rejected.parquet")}
    again = run(proj, log_dir)
    assert (again.new, again.replaced, again.rejected, again.files_read) == (0, 0, 0, 0)
    assert {name: files.sha256(out / name) for name in before} == before
    assert json.loads((out / "harvest.json").read_text())["rows"] == 1

    writer = InferenceLog(log_dir)
    feedback(writer, ids[1], 9)  # the wrong label corrected: its prediction was kept pending
    writer.close()
    assert run(proj, log_dir).new == 1
    assert ids[1] in labelled(proj).index


@pytest.mark.parametrize(
    ("label", "ok"), [(7, True), (7.0, False), ("7", False), (True, False), (None, False)]
)
def test_labels_must_have_the_classes_type(label: Any, ok: bool) -> None:
    data = config.load(Path(__file__).resolve().parents[2] / "params.yaml").data
    _, reasons = harvesting.check_row([0.0] * WIDTH, label, data)
    assert (not reasons) is ok, reasons


def test_each_reason_names_the_rule_and_the_column() -> None:
    data = config.load(Path(__file__).resolve().parents[2] / "params.yaml").data
    row: list[Any] = [0.0] * WIDTH
    row[3], row[4], row[9] = "x", None, -1
    values, reasons = harvesting.check_row(row, 7, data)
    assert reasons == [
        'finite(pixel_3): "x" is not a finite number',
        "finite(pixel_4): null is not a finite number",
        "range(pixel_9): -1 is outside [0, 16]",
    ]
    assert values is not None and values[9] == -1
    assert harvesting.check_row({"pixel_0": 1}, 7, data)[1] == [
        'width(features): expected a list of 64 numbers, got {"pixel_0":1}'
    ]


def test_a_torn_last_line_is_read_next_time(proj: Project, tmp_path: Path) -> None:
    log_dir = tmp_path / "log"
    writer = InferenceLog(log_dir)
    a, b = predict(writer, [digit(np.random.default_rng(4)) for _ in range(2)])
    feedback(writer, a, 1)
    writer.close()
    (path,) = harvesting.log_files(log_dir)
    line = json.dumps({"type": "feedback", "id": b, "label": 2, "ts": time.time()}).encode() + b"\n"
    with open(path, "ab") as fh:
        fh.write(line[:20])  # a write in flight when harvest reads
    done = run(proj, log_dir)
    assert (done.new, done.malformed) == (1, 0)
    with open(path, "ab") as fh:
        fh.write(line[20:])  # ... and finished
    done = run(proj, log_dir)
    assert (done.new, done.malformed, done.rows) == (1, 0, 2)
    manifest = json.loads((log_dir / ".harvest/manifest.json").read_text())
    assert manifest["files"] == {path.name: path.stat().st_size}

    with open(path, "ab") as fh:
        fh.write(b'{"type": "feedback", "id": "cut')  # a crash's leftover: never finished
    old = time.time() - 2 * harvesting.TORN_FINAL_SECONDS
    os.utime(path, (old, old))
    done = run(proj, log_dir)
    assert done.malformed == 1
    manifest = json.loads((log_dir / ".harvest/manifest.json").read_text())
    assert manifest["files"] == {path.name: path.stat().st_size}  # consumed: may be pruned


def test_the_writer_keeps_unharvested_files_and_deletes_harvested_ones(
    proj: Project, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    rng = np.random.default_rng(5)
    writer = InferenceLog(log_dir, max_bytes=1_500, max_files=2, hard_max_files=8)
    for _ in range(5):
        predict(writer, [digit(rng), digit(rng)])  # one file each
    kept = harvesting.log_files(log_dir)
    assert len(kept) == 5, "no harvest yet: nothing is harvested, so nothing is deleted"
    run(proj, log_dir)
    predict(writer, [digit(rng), digit(rng)])  # rotation: prune
    writer.close()
    left = harvesting.log_files(log_dir)
    assert len(left) == 2
    assert not any(p.exists() for p in kept[:4])


def test_a_dead_pods_folder_goes_after_it_was_read_and_a_live_writer_recovers(
    proj: Project, tmp_path: Path
) -> None:
    """Issue 23: folders of pods that are gone piled up on the shared volume. After a
    harvest read every file of a pod's folder, and none was written for
    harvest.dead_folder_days, the folder goes; a recently written one stays. A writer
    whose folder was removed under it opens a new one."""
    log_dir = tmp_path / "log"
    rng = np.random.default_rng(7)
    gone, alive = InferenceLog(log_dir / "api-a"), InferenceLog(log_dir / "api-b")
    ids = [predict(writer, [digit(rng)])[0] for writer in (gone, alive)]
    long_ago = time.time() - 8 * 86_400
    for path in (log_dir / "api-a").glob("*.jsonl"):
        os.utime(path, (long_ago, long_ago))
    proj.set_params(harvest={"dead_folder_days": 7})
    result = run(proj, log_dir)
    assert result.removed_folders == 1
    assert sorted(p.name for p in log_dir.iterdir() if not p.name.startswith(".")) == ["api-b"]
    manifest = json.loads(inference_log_manifest(log_dir).read_text())["files"]
    assert manifest and all(k.startswith("api-b/") for k in manifest)
    # Its prediction was read before the folder went: a late label still joins it.
    feedback(alive, ids[0], 3)
    assert run(proj, log_dir).new == 1

    with gone._lock:
        gone._check_linked()  # what its fsync thread does every second
    predict(gone, [digit(rng)])
    gone.close()
    alive.close()
    assert len(list((log_dir / "api-a").glob("*.jsonl"))) == 1  # a new folder and file


def test_a_folder_with_unread_bytes_or_other_files_is_not_dead(tmp_path: Path) -> None:
    pod = tmp_path / "api-c"
    pod.mkdir()
    log = pod / "inference-20261201T000000-1-0001.jsonl"
    log.write_text('{"id": 1}\n')
    old = time.time() - 30 * 86_400
    os.utime(log, (old, old))
    size = log.stat().st_size
    now, idle = time.time(), 7 * 86_400
    assert harvesting.dead_folders(tmp_path, {"api-c/" + log.name: size}, now=now, idle_s=idle)
    assert not harvesting.dead_folders(
        tmp_path, {"api-c/" + log.name: size - 1}, now=now, idle_s=idle
    )
    assert not harvesting.dead_folders(tmp_path, {}, now=now, idle_s=idle)
    (pod / "notes.txt").write_text("an operator's")
    assert not harvesting.dead_folders(tmp_path, {"api-c/" + log.name: size}, now=now, idle_s=idle)


def test_dvc_add_tracks_the_harvest_and_a_failure_says_what_to_do(
    e2e_tier: None, tmp_path: Path
) -> None:
    proj = new_project(tmp_path / "repo")
    git(proj.root, "init", "-q")
    dvc(proj.root, "init", "-q")
    git(proj.root, "add", "-A")
    git(proj.root, "commit", "-qm", "init")
    log_dir = tmp_path / "log"
    writer = InferenceLog(log_dir)
    rng = np.random.default_rng(6)
    a, b = predict(writer, [digit(rng), digit(rng)])
    feedback(writer, a, 1)
    writer.close()
    run(proj, log_dir)
    pointer = proj.root / "data/production/labelled.parquet.dvc"
    first = pointer.read_text()
    assert "md5:" in first and (proj.root / "data/production/rejected.parquet.dvc").exists()
    assert "labelled.parquet" in (proj.root / "data/production/.gitignore").read_text()

    writer = InferenceLog(log_dir)
    feedback(writer, b, 2)
    writer.close()
    run(proj, log_dir)
    assert pointer.read_text() != first, "a new label changes the pointer: ingest re-runs"

    # git tracks the file: dvc add refuses, harvest says why and what to do, and will retry
    git(proj.root, "add", "-f", "data/production/labelled.parquet")
    writer = InferenceLog(log_dir)
    feedback(writer, b, 3)
    writer.close()
    with pytest.raises(PipelineFailed, match=r"git rm --cached.*run `modelyard harvest` again"):
        run(proj, log_dir)
    manifest = json.loads((log_dir / ".harvest/manifest.json").read_text())
    assert sum(manifest["files"].values()) < sum(
        p.stat().st_size for p in harvesting.log_files(log_dir)
    )

    # a fresh clone without `dvc pull`, and a log whose harvest state lost its copy:
    # harvest refuses to start the dataset afresh (with the copy it restores it: below)
    git(proj.root, "rm", "-qf", "--cached", "data/production/labelled.parquet")
    (proj.root / "data/production/labelled.parquet").unlink()
    (log_dir / ".harvest/labelled.parquet").unlink()
    with pytest.raises(DataError, match=r"no copy of it: run `dvc pull .*labelled\.parquet\.dvc`"):
        run(proj, log_dir)


@dataclass
class Checkout:
    """A project whose harvest kept labels a, b (c rejected), then a clean checkout (the
    workspace's datasets gone, the log volume with its harvest state kept), then label d
    and the harvest after it."""

    proj: Project
    log_dir: Path
    rng: np.random.Generator
    ids: dict[str, str]
    first: bytes  # the dataset after the first harvest (a, b)
    done: harvesting.Harvested  # the harvest after the checkout

    @property
    def out(self) -> Path:
        return self.proj.root / "data/production"

    @property
    def state(self) -> Path:
        return self.log_dir / ".harvest"

    def label(self, n: int, *labels: Any) -> list[str]:
        writer = InferenceLog(self.log_dir)
        ids = predict(writer, [digit(self.rng) for _ in range(n)])
        for pid, value in zip(ids, labels, strict=False):
            feedback(writer, pid, value)
        writer.close()
        return ids


def clean_checkout(tmp_path: Path, *, with_dvc: bool) -> Checkout:
    """monitor.yml's checkout cleans the workspace every run, while the log volume (and
    the manifest saying which lines were consumed) persists."""
    proj = new_project(tmp_path / "repo")
    if with_dvc:
        git(proj.root, "init", "-q")
        dvc(proj.root, "init", "-q")
        git(proj.root, "add", "-A")
        git(proj.root, "commit", "-qm", "init")
    at = Checkout(proj, tmp_path / "log", np.random.default_rng(8), {}, b"", None)  # type: ignore[arg-type]
    out, state = at.out, at.state

    a, b, c = at.label(3, 1, 2, 11)  # c: rejected
    assert run(proj, at.log_dir).rows == 2
    assert run(proj, at.log_dir).restored == 0  # the project and the copy agree
    at.first = (out / "labelled.parquet").read_bytes()
    for name in ("labelled.parquet", "rejected.parquet"):
        assert (state / name).read_bytes() == (out / name).read_bytes()
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    if with_dvc:  # the pointers are committed, as after a developer's harvest
        git(proj.root, "add", "data/production")
        git(proj.root, "commit", "-qm", "labels")
        git(proj.root, "clean", "-ffdxq")  # what actions/checkout does
        assert (out / "labelled.parquet.dvc").exists()
    else:
        for name in ("labelled.parquet", "rejected.parquet", "harvest.json"):
            (out / name).unlink()
    assert not (out / "labelled.parquet").exists()

    (d,) = at.label(1, 3)
    at.ids = {"a": a, "b": b, "c": c, "d": d}
    at.done = run(proj, at.log_dir)
    return at


def check_nothing_lost(at: Checkout) -> None:
    """The harvest state's copies brought a and b back; the dataset holds them and d."""
    ids = at.ids
    assert (at.done.new, at.done.restored, at.done.rows) == (1, 2, 3)
    assert labelled(at.proj).loc[[ids["a"], ids["b"], ids["d"]], "label"].tolist() == [1, 2, 3]
    rejected = pd.read_parquet(at.out / "rejected.parquet")
    assert rejected["prediction_id"].tolist() == [ids["c"]]


def test_a_clean_checkout_loses_no_label(tmp_path: Path) -> None:
    check_nothing_lost(clean_checkout(tmp_path, with_dvc=False))


def test_a_clean_dvc_checkout_loses_no_label_and_the_pointer_has_every_label(
    e2e_tier: None, tmp_path: Path
) -> None:
    at = clean_checkout(tmp_path, with_dvc=True)
    check_nothing_lost(at)
    # the pointer monitor.py pushes and sends to train.yml: every label
    md5 = next(
        line.split()[-1]
        for line in (at.out / "labelled.parquet.dvc").read_text().splitlines()
        if "md5:" in line
    )
    cached = pd.read_parquet(at.proj.root / ".dvc/cache/files/md5" / md5[:2] / md5[2:])
    assert sorted(cached["prediction_id"]) == sorted(at.ids[k] for k in "abd")


def test_an_older_dataset_in_the_project_is_replaced_by_the_copy_then_merged(
    tmp_path: Path,
) -> None:
    """An old pointer pulled (the first harvest's dataset): the copy replaces it."""
    at = clean_checkout(tmp_path, with_dvc=False)
    (at.out / "labelled.parquet").write_bytes(at.first)
    (e,) = at.label(1, 4)
    done = run(at.proj, at.log_dir)
    assert (done.new, done.restored, done.rows) == (1, 1, 4)
    ids = [at.ids["a"], at.ids["b"], at.ids["d"], e]
    assert labelled(at.proj).loc[ids, "label"].tolist() == [1, 2, 3, 4]


def test_a_copy_behind_the_project_takes_nothing_away(tmp_path: Path) -> None:
    """A harvest stopped before keeping its copy: the project's newer dataset stays, and
    the copy catches up with it."""
    at = clean_checkout(tmp_path, with_dvc=False)
    now = (at.out / "labelled.parquet").read_bytes()
    (at.state / "labelled.parquet").write_bytes(at.first)
    done = run(at.proj, at.log_dir)
    assert (done.new, done.restored, done.rows) == (0, 0, 3)
    assert (at.out / "labelled.parquet").read_bytes() == now
    assert (at.state / "labelled.parquet").read_bytes() == now


def test_when_project_and_copy_each_lack_rows_both_are_kept(tmp_path: Path) -> None:
    """The project's dataset is the older one with b re-labelled later; the copy has d:
    the merge keeps b's newer label and d."""
    at = clean_checkout(tmp_path, with_dvc=False)
    older = pd.read_parquet(io.BytesIO(at.first))
    b = at.ids["b"]
    older.loc[older["prediction_id"] == b, ["label", "labelled_at"]] = [5, time.time() + 60]
    older.to_parquet(at.out / "labelled.parquet", index=False)
    done = run(at.proj, at.log_dir)
    assert (done.new, done.restored, done.rows) == (0, 1, 3)
    assert labelled(at.proj).loc[[at.ids["a"], b, at.ids["d"]], "label"].tolist() == [1, 5, 3]


def test_harvest_command_prints_the_summary_and_a_missing_log_dir_is_2(
    proj: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_dir = tmp_path / "log"
    writer = InferenceLog(log_dir)
    rng = np.random.default_rng(7)
    ids = predict(writer, [digit(rng) for _ in range(4)])
    feedback(writer, ids[0], 1)
    feedback(writer, ids[1], 11)
    feedback(writer, ids[2], 2)
    writer.close()
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("MODELYARD_LOG_DIR", str(log_dir))  # the default, as for `monitor run`
    result = proj.cli("harvest")
    assert result.exit_code == 0, result.output
    # words, not lines: the console's width is whatever it was when first imported
    assert (
        "harvested 2 labels: 2 new, 0 replaced (0 conflicts); 1 rejected "
        "(data/production/rejected.parquet); 2 predictions wait for a label"
    ) in " ".join(result.output.split())
    result = proj.cli("harvest", "--log-dir", str(log_dir))
    assert result.exit_code == 0, result.output
    assert "harvested 0 labels: 0 new" in result.output

    result = proj.cli("harvest", "--log-dir", str(tmp_path / "nowhere"))
    assert result.exit_code == 2, result.output
    assert "no inference log at" in " ".join(result.output.split())
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_harvest_stops_on_what_it_cannot_use(proj: Project, tmp_path: Path) -> None:
    """No log, a harvest already running, a dataset of another contract: an error that
    says what to do, and nothing written."""
    with pytest.raises(DataError, match="no inference log at"):
        run(proj, tmp_path / "nowhere")
    state = tmp_path / "log" / ".harvest"
    state.mkdir(parents=True)
    busy = pytest.raises(DataError, match="another `modelyard harvest` is running")
    with harvesting._locked(state / "lock"), busy:
        run(proj, tmp_path / "log")
    assert not (proj.root / "data/production").exists()

    out = proj.root / "data/production"
    out.mkdir(parents=True)
    pd.DataFrame({"x": [1.0]}).to_parquet(out / "labelled.parquet")
    with pytest.raises(DataError, match="another data contract"):
        run(proj, tmp_path / "log")
    assert not (state / "manifest.json").exists() and not (out / "harvest.json").exists()


def inference_log_manifest(log_dir: Path) -> Path:
    from services import inference_log

    return inference_log.manifest_path(log_dir)


def labelled_count(proj: Project) -> int:
    path = proj.root / "data/production/labelled.parquet"
    return len(pd.read_parquet(path)) if path.exists() else 0
