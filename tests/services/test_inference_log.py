"""The inference log loses nothing, never tears a record, and stays bounded."""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from services.inference_log import (
    HARVEST_DIR,
    Health,
    InferenceLog,
    LogFile,
    ReadStats,
    Retention,
    harvested,
    manifest_path,
    plan_prune,
    read,
)


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path, max_bytes=50_000)  # small files: rotation under load too
    per_thread, threads = 400, 8

    def work(t: int) -> None:
        for i in range(per_thread):
            log.append([{"id": f"{t}-{i}-{j}", "x": [1.5] * 8} for j in range(2)])

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    log.close()
    stats = ReadStats()
    ids = [r["id"] for r in read(tmp_path, stats)]
    assert len(ids) == len(set(ids)) == per_thread * threads * 2
    assert stats.malformed == 0 and len(stats.files) > 1


def test_files_stay_bounded(tmp_path: Path) -> None:
    """Never harvested: hard_max_files bounds the folder (the tests below: max_files)."""
    log = InferenceLog(tmp_path, max_bytes=1_000, max_files=2, hard_max_files=3)
    for i in range(200):
        log.append([{"id": i, "pad": "x" * 50}])
    log.close()
    files = list(tmp_path.glob("inference-*.jsonl"))
    assert len(files) == 3
    assert sum(f.stat().st_size for f in files) <= 3 * 1_100
    kept = [r["id"] for r in read(tmp_path)]
    assert kept == sorted(kept) and kept[-1] == 199  # the newest records are the ones kept


def test_torn_tail_is_skipped_and_never_glued(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path)
    log.append([{"id": 1}])
    log.close()
    (path,) = tmp_path.glob("inference-*.jsonl")
    with open(path, "ab") as fh:
        fh.write(b'{"id": 2, "cut off he')  # what a crash mid-write could leave
    os.utime(path, (time.time() - 10, time.time() - 10))  # keep file order stable
    log = InferenceLog(tmp_path)
    log.append([{"id": 3}])
    log.close()
    stats = ReadStats()
    assert [r["id"] for r in read(tmp_path, stats)] == [1, 3]
    assert stats.malformed == 1


WRITER = """
import sys
from pathlib import Path
from services.inference_log import InferenceLog
log = InferenceLog(Path(sys.argv[1]))
i = 0
while True:
    log.append([{"id": i, "features": [0.5] * 64}])
    print(i, flush=True)  # acknowledged only after append returned
    i += 1
"""


def test_kill_9_loses_no_acknowledged_record(e2e_tier: None, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    acked = -1
    while acked < 3000:
        acked = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stats = ReadStats()
    ids = [r["id"] for r in read(tmp_path, stats)]
    assert ids[: acked + 1] == list(range(acked + 1))  # every acknowledged record, in order
    assert stats.malformed <= 1  # at most the one write in flight when killed


def test_log_is_private_to_its_owner(tmp_path: Path) -> None:
    """The records hold raw inputs: directory 0700, files 0600, whatever the umask, and an
    existing directory or file with looser modes is tightened."""
    old = os.umask(0o000)  # the loosest umask: nothing may rely on it
    try:
        fresh = tmp_path / "fresh" / "log"
        InferenceLog(fresh).close()
        existing = tmp_path / "existing"
        existing.mkdir(mode=0o777)
        existing.chmod(0o777)
        log = InferenceLog(existing)
        log.append([{"id": 1}])
        log.close()
    finally:
        os.umask(old)
    for directory in (fresh, existing):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        files = list(directory.glob("inference-*.jsonl"))
        assert files and {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}


def test_read_covers_every_pods_folder(tmp_path: Path) -> None:
    """Several replicas share one volume, each writing its own folder (MODELYARD_LOG_DIR=
    /var/log/modelyard/<pod> in services/k8s); the drift job reads the volume's root."""
    for pod, ids in (("api-7d9-a", [1, 2]), ("api-7d9-b", [3])):
        log = InferenceLog(tmp_path / pod)
        log.append([{"id": i} for i in ids])
        log.close()
    stray = tmp_path / "api-7d9-a" / "deeper"
    stray.mkdir()
    (stray / "inference-x.jsonl").write_text('{"id": 99}\n')  # not a pod's folder: ignored
    stats = ReadStats()
    assert sorted(r["id"] for r in read(tmp_path, stats)) == [1, 2, 3]
    assert sorted(f.split("/")[0] for f in stats.files) == ["api-7d9-a", "api-7d9-b"]


def _manifest(log_dir: Path, offsets: dict[str, int]) -> None:
    """What `modelyard harvest` leaves: bytes consumed per file, relative to the log folder."""
    (log_dir / HARVEST_DIR).mkdir(exist_ok=True)
    manifest_path(log_dir).write_text(json.dumps({"version": 1, "files": offsets}))


def _fill(log: InferenceLog, files: int) -> None:
    for i in range(files):  # max_bytes=1_000: one record per file
        log.append([{"id": i, "pad": "x" * 900}])


def test_unharvested_files_are_kept_past_max_files(tmp_path: Path) -> None:
    """No manifest (harvest never ran): nothing is harvested, nothing is deleted before
    hard_max_files."""
    log = InferenceLog(tmp_path, max_bytes=1_000, max_files=2, hard_max_files=6)
    _fill(log, 5)
    log.close()
    assert len(list(tmp_path.glob("inference-*.jsonl"))) == 5
    assert [r["id"] for r in read(tmp_path)] == [0, 1, 2, 3, 4]


def test_only_files_harvested_to_their_size_are_deleted(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path, max_bytes=1_000, max_files=2, hard_max_files=20)
    _fill(log, 4)
    files = sorted(tmp_path.glob("inference-*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))
    sizes = {p.name: p.stat().st_size for p in files}
    # the oldest read to its end, the second only partly, the third to its end
    _manifest(tmp_path, {files[0].name: sizes[files[0].name], files[1].name: 10,
                         files[2].name: sizes[files[2].name]})  # fmt: skip
    _fill(log, 1)  # a rotation: prune
    log.close()
    assert [p.exists() for p in files] == [False, True, False, True]


def test_past_hard_max_files_the_oldest_goes_with_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = InferenceLog(tmp_path, max_bytes=1_000, max_files=2, hard_max_files=3)
    with caplog.at_level(logging.ERROR, logger="services.inference_log"):
        _fill(log, 6)
    log.close()
    assert len(list(tmp_path.glob("inference-*.jsonl"))) == 3
    assert [r["id"] for r in read(tmp_path)] == [3, 4, 5]  # the newest kept
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert "labels of its predictions may be lost" in errors[0]
    assert "Run `modelyard harvest` more often" in errors[0]


def test_a_pods_writer_reads_the_manifest_of_the_shared_volume(tmp_path: Path) -> None:
    """Each pod writes a subfolder; harvest reads the volume's root, its manifest there."""
    pod = tmp_path / "api-7d9-a"
    log = InferenceLog(pod, max_bytes=1_000, max_files=1)
    _fill(log, 2)
    old = sorted(pod.glob("inference-*.jsonl"))[0]
    _manifest(tmp_path, {f"{pod.name}/{old.name}": old.stat().st_size, old.name: 0})
    assert harvested(pod) == {old.name: old.stat().st_size}
    _fill(log, 1)
    log.close()
    assert not old.exists()


def test_an_unreadable_manifest_harvests_nothing(tmp_path: Path) -> None:
    (tmp_path / HARVEST_DIR).mkdir()
    manifest_path(tmp_path).write_text("{not json")
    assert harvested(tmp_path) == {}
    manifest_path(tmp_path).unlink()
    manifest_path(tmp_path).mkdir()  # not a file: reading it fails (as another user's 0600 would)
    assert harvested(tmp_path) == {}


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """The kernel refuses writes past ``limit`` bytes in any file this process writes
    (EFBIG, as a full disk refuses with ENOSPC): a real failing write, in process. SIGXFSZ
    is ignored meanwhile (its default action ends the process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_refused_write_raises_and_the_log_goes_on_without_a_glued_record(
    tmp_path: Path,
) -> None:
    log = InferenceLog(tmp_path)
    log.append([{"id": "before", "pad": "x" * 40}])
    size = next(tmp_path.glob("inference-*.jsonl")).stat().st_size
    with file_size_limit(size + 30):  # room for part of the next record only
        with pytest.raises(OSError) as refused:
            log.append([{"id": "lost", "pad": "x" * 40}])
        assert refused.value.errno == errno.EFBIG
        with pytest.raises(OSError):  # still full: refused again, nothing else written
            log.append([{"id": "lost-too", "pad": "x" * 40}])
    log.append([{"id": "after", "pad": "x" * 40}])  # room again: logged
    log.close()
    stats = ReadStats()
    assert [r["id"] for r in read(tmp_path, stats)] == ["before", "after"]
    assert stats.malformed == 1  # the cut-off part of "lost", on a line of its own


def test_a_log_that_cannot_open_its_file_at_start_is_built_and_opens_it_later(
    tmp_path: Path,
) -> None:
    """At start the file cannot be opened (here: no file descriptor left, EMFILE): the
    service must still start and answer; appends raise until the file can be opened."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)  # the number the next open would get
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # ... is now refused
    try:
        log = InferenceLog(tmp_path)
        with pytest.raises(OSError) as refused:
            log.append([{"id": "lost"}])
        assert refused.value.errno == errno.EMFILE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not list(tmp_path.glob("inference-*.jsonl"))
    log.append([{"id": "after"}])
    log.close()
    assert [r["id"] for r in read(tmp_path)] == ["after"]


def test_health_says_degraded_from_the_first_failure_until_a_write_works() -> None:
    """What /v1/metadata shows and what the service logs: the first failure at once, then
    at most one a minute, and the end of the spell."""
    now = [100.0]
    health = Health(say_every=60.0, clock=lambda: now[0])
    assert health.state == {"status": "ok"} and health.recovered() is None
    full = OSError(errno.ENOSPC, "No space left on device")
    said = health.failed(full)
    assert said is not None and "predictions are answered but not logged" in said
    since = health.state["since"]
    assert health.state == {
        "status": "degraded",
        "since": since,
        "last_error": "ENOSPC: No space left on device",
    }
    now[0] += 59
    assert health.failed(OSError(errno.EIO, "Input/output error")) is None  # said already
    assert health.state["since"] == since and health.state["last_error"].startswith("EIO")
    now[0] += 2
    assert health.failed(full) is not None  # a minute on: said again
    assert (
        health.recovered() == "inference log: writing again after ENOSPC: No space left on device"
    )
    assert health.state == {"status": "ok"} and health.recovered() is None
    assert Health.kind(OSError(errno.EROFS, "Read-only file system")) == "EROFS"


# -- retention by count, bytes and age (issue 23): the plan as a pure function -----------------

DAY = 86_400.0


def files(*specs: tuple[int, float, bool]) -> list[LogFile]:
    """(size, age in days, harvested) per file, oldest first."""
    now = 100 * DAY
    return [
        LogFile(f"inference-20261201T000000-7-{i:04d}.jsonl", size, now - age * DAY, done)
        for i, (size, age, done) in enumerate(specs)
    ]


def deleted(plan: list[tuple[LogFile, str, bool]]) -> list[int]:
    return [int(f.name[-10:-6]) for f, _, _ in plan]


def test_a_byte_budget_deletes_the_oldest_harvested_files() -> None:
    r = Retention(max_files=50, hard_max_files=200, max_total_bytes=1_000, max_age_s=30 * DAY)
    plan = plan_prune(files((400, 3, True), (400, 2, False), (400, 1, True), (400, 0, False)),
                      keep={"none"}, retention=r, now=100 * DAY)  # fmt: skip
    assert deleted(plan) == [0, 2] and "over 1000" in plan[0][1]
    # unharvested: kept until twice the budget, then the oldest goes, flagged as lost
    big = files((900, 2, False), (900, 1, False), (900, 0, False))
    plan = plan_prune(big, keep=set(), retention=r, now=100 * DAY)
    assert deleted(plan) == [0] and plan[0][2] is True


def test_an_age_limit_deletes_only_harvested_files() -> None:
    r = Retention(max_files=50, hard_max_files=200, max_total_bytes=1 << 30, max_age_s=30 * DAY)
    plan = plan_prune(files((10, 40, True), (10, 40, False), (10, 5, True)),
                      keep=set(), retention=r, now=100 * DAY)  # fmt: skip
    assert deleted(plan) == [0] and "older than 30 days" in plan[0][1]


def test_a_file_a_writer_may_have_open_is_never_deleted() -> None:
    r = Retention(max_files=1, hard_max_files=1, max_total_bytes=1, max_age_s=0)
    listed = files((10, 40, True), (10, 40, True))
    plan = plan_prune(listed, keep={listed[0].name}, retention=r, now=100 * DAY)
    assert deleted(plan) == [1]


def test_another_workers_newest_file_survives_a_prune(tmp_path: Path) -> None:
    """Two writers (pids) in one folder: a prune by one never deletes the other's newest
    file, which it may still be writing (an unlinked open file loses what follows)."""
    other = tmp_path / "inference-20261201T000000-99999-0007.jsonl"
    other.write_text('{"id": "other"}\n')
    os.utime(other, (time.time() - 90 * DAY, time.time() - 90 * DAY))
    _manifest(tmp_path, {other.name: other.stat().st_size})
    log = InferenceLog(tmp_path, max_bytes=1_000, max_files=1, max_age_s=DAY)
    _fill(log, 3)
    log.close()
    assert other.exists()
