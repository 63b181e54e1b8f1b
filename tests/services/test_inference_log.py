"""The inference log loses nothing, never tears a record, and stays bounded."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from services.inference_log import InferenceLog, ReadStats, read


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
    log = InferenceLog(tmp_path, max_bytes=1_000, max_files=3)
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


def test_kill_9_loses_no_acknowledged_record(tmp_path: Path) -> None:
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
