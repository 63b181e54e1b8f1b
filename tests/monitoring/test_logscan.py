"""The log window scan (``monitoring.logscan.scan``) counts exactly what a full JSON parse
of every line counts, keeps a uniform sample, and holds no more than the sample and a block.

Logs are written with the service's own writer (``services.inference_log.InferenceLog``);
malformed, torn and foreign lines are written the way they reach a real log: appended raw.
"""

from __future__ import annotations

import gc
import os
import random
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import MonitoringError
from monitoring import logscan
from services.inference_log import InferenceLog, ReadStats, read

NOW = time.time()
SINCE, UNTIL = NOW - 3600, NOW + 60


def prediction(n: int, ts: float, model: str = "digits/2", width: int = 64) -> dict[str, Any]:
    """A prediction record as services/service.py `predict` writes it (same key order)."""
    return {
        "type": "prediction",
        "id": f"p{n}",
        "request_id": f"r{n // 4}",
        "ts": ts,
        "model": model,
        "features": np.arange(width, dtype=np.float32) + n % 17,
        "prediction": n % 10,
        "probabilities": np.full(10, 0.1),
    }


def reference(log_dir: Path, since: float, until: float) -> dict[str, Any]:
    """What a full parse of every line gives: the old scan's rules, one record at a time."""
    stats = ReadStats()
    out: dict[str, Any] = {"rows": {}, "models": Counter(), "feedback": {}, "shadow": []}
    skipped = 0
    for record in read(log_dir, stats, newer_than=since):
        ts = record.get("ts")
        if not isinstance(ts, (int, float)) or not since <= ts < until:
            continue
        if record.get("type") == "feedback":
            out["feedback"][str(record.get("id"))] = record.get("label")
        elif record.get("type") == "shadow":
            out["shadow"].append((str(record.get("id")), record.get("prediction")))
        elif record.get("type") != "prediction" or not isinstance(record.get("features"), list):
            skipped += 1
        else:
            out["rows"][str(record["id"])] = record
            out["models"][str(record.get("model"))] += 1
    out.update(skipped=skipped, records=stats.records, malformed=stats.malformed)
    out["files"] = stats.files
    return out


def write_mixed(log_dir: Path) -> None:
    """Every kind of line the scan meets, in two files and a pod's subfolder."""
    old = InferenceLog(log_dir / "pod-a")
    old.append([prediction(n, NOW - 7200) for n in range(30)])  # before the window
    old.close()
    old_file = next((log_dir / "pod-a").glob("*.jsonl"))
    os.utime(old_file, (NOW - 7000, NOW - 7000))  # last written before --since: skipped

    log = InferenceLog(log_dir, max_bytes=40_000)  # small files: several rotations
    n = 100
    for i in range(300):
        batch = [prediction(n + j, NOW - 100 + i * 0.1) for j in range(3)]
        n += 3
        if i % 5 == 0:
            batch.append({"type": "feedback", "id": f"p{n - 1}", "label": i % 10, "ts": NOW})
        if i % 7 == 0:
            batch.append(
                {
                    "type": "shadow",
                    "id": f"p{n - 2}",
                    "ts": NOW,
                    "model": "digits/3",
                    "champion": "digits/2",
                    "prediction": i % 10,
                    "champion_prediction": (i + 1) % 10,
                    "error": None,
                }
            )
        if i % 11 == 0:  # another key order (another writer): the full parse decides
            record = prediction(n, NOW - 50)
            n += 1
            batch.append({k: record[k] for k in reversed(record)})
        if i % 13 == 0:  # outside the window, on both sides
            batch += [prediction(n, NOW - 4000), prediction(n + 1, NOW + 600)]
            n += 2
        if i % 17 == 0:  # another model; one name only a full parse reads (an escape)
            batch += [prediction(n, NOW - 10, "digits/1"), prediction(n + 1, NOW - 10, "dígits/1")]
            n += 2
        if i % 19 == 0:  # usable JSON, unusable records: no features, a null ts, a bool ts
            batch += [
                {"type": "prediction", "id": f"x{i}", "ts": NOW, "model": "digits/2"},
                {**prediction(n, NOW), "features": None},
                {**prediction(n + 1, NOW), "ts": None},
                {**prediction(n + 2, NOW), "ts": True},
                {"type": "nonsense", "ts": NOW},
            ]
            n += 3
        if i % 23 == 0:  # fewer features, a null feature: counted (screening is later)
            batch += [prediction(n, NOW, width=10), {**prediction(n + 1, NOW), "features": [None]}]
            n += 2
        log.append(batch)
        if i % 29 == 0:
            raw(log, b"not json at all\n[1, 2, 3]\n\n   \n")
            raw(log, b'{"type":"prediction","id":"dup","request_id":"r","ts":1,"model":"m"}\n')
            glued = orjson_line(prediction(n, NOW))
            raw(log, glued[:200] + orjson_line(prediction(n + 1, NOW)))  # torn, then glued
            raw(log, glued[:300] + b"\n")  # cut short, newline after
            n += 2
    log.close()
    with open(sorted(log_dir.glob("*.jsonl"))[-1], "ab") as fh:
        fh.write(orjson_line(prediction(n, NOW))[:123])  # the last write, torn: no newline


def orjson_line(record: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)


def raw(log: InferenceLog, data: bytes) -> None:
    """Bytes into the writer's current file, past its framing (a foreign or broken write)."""
    os.write(log._fd, data)
    log._size += len(data)


@pytest.mark.parametrize("block", [logscan.BLOCK, 4096, 701])
def test_counts_match_a_full_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """Small blocks: lines cut across block boundaries are read whole, in every path."""
    write_mixed(tmp_path)
    monkeypatch.setattr(logscan, "BLOCK", block)
    want = reference(tmp_path, SINCE, UNTIL)
    got = logscan.scan(tmp_path, SINCE, UNTIL, 50, seed=3)

    assert got.rows == len(want["rows"]) > 900
    assert got.models == want["models"] and len(got.models) == 3
    assert got.feedback == want["feedback"] and len(got.feedback) == 60
    assert [(s.id, s.prediction) for s in got.shadow] == want["shadow"]
    assert got.skipped == want["skipped"] > 0
    assert got.stats.malformed == want["malformed"] == 4 * 11 + 1
    assert got.stats.records == want["records"]
    assert got.stats.files == want["files"] and len(got.stats.files) > 3
    assert len(got.sample) == 50
    assert len({r["id"] for r in got.sample}) == 50
    for record in got.sample:  # parsed whole, exactly as the full parse reads them
        assert record == want["rows"][record["id"]]
    assert gc.isenabled()


def test_a_small_window_keeps_every_row(tmp_path: Path) -> None:
    write_mixed(tmp_path)
    want = reference(tmp_path, SINCE, UNTIL)
    got = logscan.scan(tmp_path, SINCE, UNTIL, 10_000, seed=1)
    assert sorted(r["id"] for r in got.sample) == sorted(want["rows"])
    assert logscan.scan(tmp_path, NOW + 3600, NOW + 7200, 100, seed=1).rows == 0


def test_no_log_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MonitoringError, match="MODELYARD_LOG_DIR"):
        logscan.scan(tmp_path / "missing", SINCE, UNTIL, 10, seed=1)


def test_the_sample_is_uniform_over_the_window(tmp_path: Path) -> None:
    """Chi-square over where the sampled rows sit in the window, and over which path read
    them (one prediction in eight is in another key order: the full parse's path)."""
    rows, size, bins, seeds = 8000, 400, 20, 10
    log = InferenceLog(tmp_path, max_bytes=600_000)
    for first in range(0, rows, 16):
        batch = []
        for n in range(first, first + 16):
            record = prediction(n, NOW - 100, width=8)
            batch.append({k: record[k] for k in reversed(record)} if n % 8 == 3 else record)
        batch.append({"type": "feedback", "id": f"p{first}", "label": 1, "ts": NOW})
        log.append(batch)
    log.close()

    counts = np.zeros(bins)
    slow = 0
    for seed in range(seeds):
        window = logscan.scan(tmp_path, SINCE, UNTIL, size, seed=seed)
        assert window.rows == rows and len(window.sample) == size
        positions = [int(r["id"][1:]) for r in window.sample]
        assert len(set(positions)) == size
        counts += np.bincount(np.array(positions) * bins // rows, minlength=bins)
        slow += sum(p % 8 == 3 for p in positions)
    expected = size * seeds / bins
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 43.8, (chi2, counts)  # 19 degrees of freedom, p = 0.001
    share = size * seeds / 8
    chi2_path = (slow - share) ** 2 / share + (slow - share) ** 2 / (size * seeds - share)
    assert chi2_path < 10.8, (slow, share)  # 1 degree of freedom, p = 0.001


def test_reservoir_keeps_each_item_with_equal_chance() -> None:
    """The reservoir alone: 40 items, 5 kept, 20,000 draws; inclusion 1/8 for every item."""
    hits = Counter[int]()
    rng = random.Random(0)
    draws = 20_000
    for _ in range(draws):
        reservoir = logscan.Reservoir(5, rng)
        for i in range(40):
            if reservoir.next == i:
                reservoir.take({"i": i})
        assert len(reservoir.items) == 5
        hits.update(item["i"] for item in reservoir.items)
    expected = draws * 5 / 40
    chi2 = sum((hits[i] - expected) ** 2 / expected for i in range(40))
    assert chi2 < 72.1, chi2  # 39 degrees of freedom, p = 0.001


def test_memory_is_the_sample_and_a_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log 40x the block: the scan's peak allocation is a few blocks and the sample."""
    log = InferenceLog(tmp_path)
    for first in range(0, 12_000, 100):
        log.append([prediction(n, NOW - 10) for n in range(first, first + 100)])
    log.close()
    size = sum(p.stat().st_size for p in tmp_path.glob("*.jsonl"))
    block = 128 * 1024
    monkeypatch.setattr(logscan, "BLOCK", block)
    tracemalloc.start()
    try:
        window = logscan.scan(tmp_path, SINCE, UNTIL, 100, seed=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert window.rows == 12_000 and len(window.sample) == 100
    assert size > 40 * block
    assert peak < 6 * block + 100 * 8_000, (peak, size)  # a sampled record is ~5 kB here
