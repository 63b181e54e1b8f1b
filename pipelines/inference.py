"""ONNX Runtime adapter: load a model file, predict probabilities, measure latency.

The one place the pipelines open ONNX files with onnxruntime; serving has its own
copy of the few lines it needs, so it never imports training code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.models import INPUT_NAME, OUTPUT_NAME


def session(path: Path, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict_proba(sess: Any, x: np.ndarray) -> np.ndarray:
    out = sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
    return np.asarray(out[0])


@dataclass(frozen=True)
class Latency:
    batch: int
    p50_ms: float
    p99_ms: float
    rows_per_s: float


def latency(sess: Any, x: np.ndarray, batch: int, runs: int, warmup: int = 20) -> Latency:
    """Wall time per call of ``batch`` rows (rows tiled from ``x`` if it is smaller)."""
    times = timings(sess, x, batch, runs, warmup)
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    return Latency(batch, float(p50), float(p99), float(batch / times.mean()))


@dataclass(frozen=True)
class CpuLatency:
    """CPU time per call of this process (every thread): what the model costs. Other
    processes' load stretches wall time (a 15 us call read 0.4 -> 17 ms p99 with load
    1 -> 8 on 2 cores) but not the CPU time the call itself spends. Each statistic is the
    median over ``rounds`` rounds of that round's percentile, so one noisy round moves
    nothing."""

    batch: int
    rounds: int
    p50_ms: float
    p99_ms: float


def cpu_latency(
    sess: Any, x: np.ndarray, batch: int, runs: int, *, rounds: int = 5, warmup: int = 20
) -> CpuLatency:
    """CPU time per call of ``batch`` rows, ``runs`` calls split into ``rounds`` rounds."""
    reps = -(-batch // len(x))
    rows = np.ascontiguousarray(np.tile(x, (reps, 1))[:batch], dtype=np.float32)
    feed = {INPUT_NAME: rows}
    for _ in range(warmup):
        sess.run([OUTPUT_NAME], feed)
    per_round = max(1, runs // rounds)
    p50s, p99s = [], []
    for _ in range(rounds):
        times = np.empty(per_round)
        for i in range(per_round):
            start = time.process_time_ns()
            sess.run([OUTPUT_NAME], feed)
            times[i] = time.process_time_ns() - start
        p50, p99 = np.percentile(times, [50, 99]) / 1e6
        p50s.append(p50)
        p99s.append(p99)
    return CpuLatency(batch, rounds, float(np.median(p50s)), float(np.median(p99s)))


def timings(sess: Any, x: np.ndarray, batch: int, runs: int, warmup: int = 20) -> np.ndarray:
    """Seconds per call of ``batch`` rows, ``runs`` calls after ``warmup`` untimed ones."""
    reps = -(-batch // len(x))
    rows = np.ascontiguousarray(np.tile(x, (reps, 1))[:batch], dtype=np.float32)
    feed = {INPUT_NAME: rows}
    for _ in range(warmup):
        sess.run([OUTPUT_NAME], feed)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        sess.run([OUTPUT_NAME], feed)
        times[i] = time.perf_counter() - start
    return times


def opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def runtime_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)
