"""The shadow challenger inside the service (``modelyard serve --shadow``): a worker thread
that scores, off the response path, the rows the champion already answered, and logs one
``"shadow"`` record per row. Only the stdlib, numpy and (lazily) prometheus_client: this
module ships in the Bento."""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.inference_log import InferenceLog

log = logging.getLogger("modelyard.service")


@dataclass(frozen=True)
class _Job:
    """One answered request: its rows and what the champion said about each."""

    x: np.ndarray
    ids: list[str]
    champion: list[Any]
    ts: float


_STOP = None  # the last item of the queue: score what came before, then end
SHADOW_DRAIN_SECONDS = 10.0  # at shutdown, the longest the queue's rest is scored for


@functools.cache
def _shadow_counters() -> tuple[Any, Any, Any]:
    """Rows scored (by agreement), failed (by kind), dropped: one set per process."""
    # Imported here: prometheus_client reads PROMETHEUS_MULTIPROC_DIR on import (see
    # Classifier._metrics).
    from prometheus_client import Counter

    return (
        Counter(
            "modelyard_shadow_predictions",
            "Rows the shadow challenger scored, by whether it agreed with the champion",
            labelnames=["model", "champion", "agree"],
        ),
        Counter(
            "modelyard_shadow_errors",
            "Rows the shadow challenger failed to score, by kind of failure",
            labelnames=["model", "kind"],
        ),
        Counter(
            "modelyard_shadow_dropped",
            "Rows not shadow-scored because the shadow queue was full (or closed)",
            labelnames=["model"],
        ),
    )


class ShadowScorer:
    """The challenger, scoring each request the champion already answered.

    ``submit`` is all the request path does: a non-blocking put on a bounded queue (full:
    the request is dropped and counted). One worker thread takes what has queued up
    (waiting ``GATHER_SECONDS`` for more when the queue was empty), scores it in as few
    ONNX Runtime calls as it can (one per ``CHUNK_ROWS`` rows) and appends one
    ``"shadow"`` record per row to the inference log in one write. A failure
    of the challenger (an exception from ORT, an output of the wrong shape) becomes the
    records' ``error`` and a count, logged once per kind of failure; it never reaches the
    client, whose answer was sent without waiting for any of this.
    """

    CHUNK_ROWS = 4096  # rows per ORT call when requests have queued up
    GATHER_SECONDS = 0.05  # after a request arrives on an empty queue, wait for others
    MAX_ERROR = 300  # characters of the reason kept in a record

    def __init__(
        self,
        session: Any,
        *,
        model: str,
        champion: str,
        classes: list[Any],
        log: InferenceLog,
        queue_size: int,
    ) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.model = model
        self.champion = champion
        self.classes = classes
        self.log = log
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._closing = False
        self._kinds_seen: set[str] = set()
        predictions, self._errors, dropped = _shadow_counters()
        self._agreed = predictions.labels(model=model, champion=champion, agree="true")
        self._disagreed = predictions.labels(model=model, champion=champion, agree="false")
        self._dropped = dropped.labels(model=model)
        self._thread = threading.Thread(target=self._run, name="modelyard-shadow", daemon=True)
        self._thread.start()

    def submit(self, x: np.ndarray, ids: list[str], champion: list[Any], ts: float) -> None:
        """Queue an answered request for the challenger; never waits."""
        if self._closing:
            self._dropped.inc(len(ids))
            return
        try:
            self._queue.put_nowait(_Job(x, ids, champion, ts))
        except queue.Full:
            self._dropped.inc(len(ids))

    def close(self, timeout: float) -> None:
        """Stop taking requests, score what is queued (for at most ``timeout`` s), end."""
        self._closing = True
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("shadow: the queue did not drain in %.0f s", timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("shadow: %d queued requests left unscored at shutdown", self._queue.qsize())
        else:
            log.info("shadow: queue drained")

    # -- the worker thread -------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is not _STOP and self._queue.empty() and not self._closing:
                # Let requests gather: one wake-up, one ORT call and one write for many
                # requests takes the GIL from the serving thread far less often than one
                # per request would.
                time.sleep(self.GATHER_SECONDS)
            jobs: list[_Job] = []
            rows = 0
            while True:
                if item is _STOP:
                    stop = True
                    break
                jobs.append(item)
                rows += len(item.ids)
                if rows >= self.CHUNK_ROWS:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if jobs:
                # A bug in building the records must not end shadow scoring for good.
                try:
                    self._record(jobs)
                except Exception as exc:
                    self._failed(exc, "internal", rows)

    def _record(self, jobs: list[_Job]) -> None:
        records = []
        agreed = disagreed = 0
        for job, (labels, error) in zip(jobs, self._score(jobs), strict=True):
            for i, pid in enumerate(job.ids):
                prediction = labels[i] if labels is not None else None
                records.append(
                    {
                        "type": "shadow",
                        "id": pid,
                        "ts": job.ts,
                        "model": self.model,
                        "champion": self.champion,
                        "prediction": prediction,
                        "champion_prediction": job.champion[i],
                        "error": error,
                    }
                )
                if labels is not None:
                    if prediction == job.champion[i]:
                        agreed += 1
                    else:
                        disagreed += 1
        for count, child in ((agreed, self._agreed), (disagreed, self._disagreed)):
            if count:
                child.inc(count)
        try:
            self.log.append(records)
        except OSError as exc:  # a full disk must not end the thread: count and go on
            self._failed(exc, "log-write", len(records))

    def _score(self, jobs: list[_Job]) -> list[tuple[list[Any] | None, str | None]]:
        """Each job's labels (or None) and error (or None). All jobs in one ORT call; if
        that fails, one call per job, so a failure is recorded only where it happens."""
        # Whatever the challenger raises is caught here, on purpose: it must never end
        # the thread or reach a client. It is counted, logged once per kind, and recorded.
        try:
            labels = self._predict(
                np.concatenate([j.x for j in jobs]) if len(jobs) > 1 else jobs[0].x
            )
        except Exception as exc:
            if len(jobs) > 1:
                return [self._score([job])[0] for job in jobs]
            return [(None, self._failed(exc, type(exc).__name__, len(jobs[0].ids)))]
        out: list[tuple[list[Any] | None, str | None]] = []
        start = 0
        for job in jobs:
            out.append((labels[start : start + len(job.ids)], None))
            start += len(job.ids)
        return out

    def _predict(self, x: np.ndarray) -> list[Any]:
        probs = self.session.run(["probabilities"], {self.input_name: x})[0]
        if getattr(probs, "shape", None) != (len(x), len(self.classes)):
            raise ValueError(
                f"the challenger answered probabilities of shape {getattr(probs, 'shape', None)} "
                f"for {len(x)} rows; expected ({len(x)}, {len(self.classes)})"
            )
        return [self.classes[i] for i in probs.argmax(axis=1)]

    def _failed(self, exc: BaseException, kind: str, rows: int) -> str:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[: self.MAX_ERROR]
        self._errors.labels(model=self.model, kind=kind).inc(rows)
        if kind not in self._kinds_seen:
            self._kinds_seen.add(kind)
            log.warning(
                "shadow: %s failed (%s); later %s failures are counted "
                "(modelyard_shadow_errors_total) and recorded in the log, not logged here",
                self.model,
                reason,
                kind,
            )
        return reason
