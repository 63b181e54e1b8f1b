"""One pass over a window of the inference log: counts, a seeded sample, labels, shadows.

``scan`` is what ``monitor run`` reads the log with. It counts every prediction in the
window (per model version), keeps a seeded uniform sample of ``sample_rows`` of them
(reservoir sampling), remembers every feedback label by prediction id, and every shadow
record (``modelyard serve --shadow``: the challenger's answer to the same request, which
holds the champion's answer too, so agreement needs no join). Memory is bounded by the
sample, the labels, the shadow answers (no features) and one read block, not by the log.

Log records (services/service.py writes them, one JSON object per line):

- ``{"type": "prediction", "id", "request_id", "ts", "model", "features", "prediction",
  "probabilities"}``
- ``{"type": "feedback", "id", "label", "ts"}``
- ``{"type": "shadow", "id", "ts", "model" (the challenger), "champion", "prediction"
  (null when the challenger failed), "champion_prediction", "error" (null or the reason)}``

Why it is fast (10M rows x 64 features in seconds, not minutes): parsing a prediction's
JSON (64 features, 10 probabilities) is most of the cost of reading it, and all but the
sampled ones are only counted. So:

- Files are read in large binary blocks, and one regular expression (``_LINE``) splits a
  block into lines, recognising the service's own prediction lines (orjson, fixed key
  order, plain-ASCII strings, arrays of numbers) and capturing ``ts`` and ``model``
  without parsing the rest.
- The sample is drawn first (Li's reservoir "Algorithm L": the index of the next row to
  keep is drawn in advance, so it is still uniform over the window), and only the rows it
  keeps are parsed (about ``sample_rows * (1 + ln(rows / sample_rows))`` of them).
- Every other line (feedback, shadow, a different key order or spacing, escapes, blank,
  malformed) falls back to the full JSON parse, with the same rules as
  ``services.inference_log.read``: a line without its newline or that is not a JSON
  object is counted as malformed, a blank line is ignored.

What the fast path trusts: a line matching ``_LINE``'s prediction pattern is the
service's record (the exact keys in order, string values without escapes, the arrays
holding only number characters and ``null``). A line corrupted *inside* a number (say
``1.2.3``) would still match and be counted; if the sample keeps it, its parse fails and
it is then counted as malformed instead. A torn or glued line never matches.
"""

from __future__ import annotations

import gc
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core.errors import MonitoringError
from services import inference_log

BLOCK = 8 * 1024 * 1024  # bytes read at a time: the scan's memory, beyond the sample

_STR = rb'"[ !#-\[\]-~]*"'  # printable ASCII, no quote, no backslash: no unescaping needed
_NUM = rb"-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]+)?"  # what float() and orjson read alike
_ARRAY = rb"\[[-0-9.eE+,nul]*\]"
# One line of a block: when it is the service's prediction record, group 1 its ts and
# group 2 its model (the rest is not captured: copying it is half the cost); else group 3,
# the line as it is (parsed with orjson).
_PREDICTION = (
    rb'\{"type":"prediction","id":%s,"request_id":%s,"ts":(%s),"model":"([ !#-\[\]-~]*)",'
    rb'"features":%s,"prediction":(?:%s|%s)(?:,"probabilities":%s)?\}'
) % (_STR, _STR, _NUM, _ARRAY, _NUM, _STR, _ARRAY)
_LINE = re.compile(rb"^(?:" + _PREDICTION + rb"|([^\n]*))$", re.MULTILINE)


@dataclass(frozen=True)
class Shadow:
    """One shadow record: the challenger's answer beside the champion's."""

    id: str
    model: str  # the challenger, NAME/VERSION
    champion: str  # the champion, NAME/VERSION
    prediction: Any  # None when the challenger failed on this request
    champion_prediction: Any
    error: str | None = None


@dataclass
class WindowSample:
    since: float
    until: float
    rows: int = 0  # predictions in the window
    sample: list[dict[str, Any]] = field(default_factory=list)
    feedback: dict[str, Any] = field(default_factory=dict)
    models: Counter[str] = field(default_factory=Counter)
    shadow: list[Shadow] = field(default_factory=list)
    stats: inference_log.ReadStats = field(default_factory=inference_log.ReadStats)
    skipped: int = 0  # complete JSON lines that are not usable records


class Reservoir:
    """A uniform sample of ``size`` items of a stream whose length is unknown, drawing
    *which* items to keep before seeing them (Li 1994, "Algorithm L"): ``next`` is the
    0-based index of the next item to keep, so the caller can skip (not parse) the rest.
    Every item has the same chance, ``size / n``, to be in the sample after ``n`` items."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size = max(0, size)
        self.items: list[dict[str, Any]] = []
        self.next: float = 0 if self.size else math.inf
        self._rng = rng
        self._w = 1.0

    def take(self, item: dict[str, Any]) -> None:
        """Keep ``item``, the one at index ``next``, and draw the next index."""
        if len(self.items) < self.size:
            self.items.append(item)
            if len(self.items) < self.size:
                self.next += 1
                return
        else:
            self.items[int(self._rng.random() * self.size)] = item
        self._w *= math.exp(math.log(self._uniform()) / self.size)
        self.next += math.floor(math.log(self._uniform()) / math.log1p(-self._w)) + 1

    def _uniform(self) -> float:
        return self._rng.random() or 5e-324  # in (0, 1): log() needs > 0


def scan(log_dir: Path, since: float, until: float, sample_rows: int, seed: int) -> WindowSample:
    """One pass over the log: count, sample (reservoir), join feedback, collect shadows.
    Files last written before ``since`` are skipped whole (none of their records can be
    in the window); the others are read oldest first, as ``inference_log.read`` does."""
    if not log_dir.is_dir():
        raise MonitoringError(
            f"no inference log at {log_dir}: point MODELYARD_LOG_DIR (or --log-dir) at the "
            "service's log folder"
        )
    window = WindowSample(since, until)
    reservoir = Reservoir(sample_rows, random.Random(seed))
    models: Counter[bytes] = Counter()
    # The scan makes no reference cycles, only short-lived tuples by the million: with the
    # collector on, each burst of them walks the whole sample again (3.7x slower at 1M rows).
    collecting = gc.isenabled()
    gc.disable()
    try:
        _files(log_dir, window, reservoir, models)
    finally:
        if collecting:
            gc.enable()
    for model, n in models.items():
        if n:
            window.models[model.decode()] += n
    window.sample = reservoir.items
    return window


def _files(
    log_dir: Path, window: WindowSample, reservoir: Reservoir, models: Counter[bytes]
) -> None:
    pattern = f"{inference_log.PREFIX}*{inference_log.SUFFIX}"
    found = [*log_dir.glob(pattern), *log_dir.glob(f"*/{pattern}")]
    for path in sorted(found, key=lambda p: (p.stat().st_mtime, p.name)):
        if path.stat().st_mtime < window.since:
            continue
        window.stats.files.append(str(path.relative_to(log_dir)))
        # Unbuffered: each read() is one system call that returns what is there (up to a
        # block), so Ctrl-C stops a scan even where a log blocks (a FIFO, a stalled mount)
        # and the kernel gave the signal to one of ONNX Runtime's threads.
        with open(path, "rb", buffering=0) as fh:
            rest = b""
            while chunk := fh.read(BLOCK):
                block = rest + chunk if rest else chunk
                end = block.rfind(b"\n") + 1
                rest = block[end:]
                if end:
                    _block(window, reservoir, models, block, end)
            if rest:
                window.stats.malformed += 1  # the tail of a write cut short


def _block(
    window: WindowSample, reservoir: Reservoir, models: Counter[bytes], block: bytes, end: int
) -> None:
    """The complete lines ``block[:end]``: the service's prediction lines counted (and
    the sampled ones parsed), every other line parsed and handled by ``_record``."""
    # One tuple per line, then one for the empty match after the block's last newline.
    stamps, names, other = zip(*_LINE.findall(block, 0, end), strict=True)
    stamps, names, other = stamps[:-1], names[:-1], other[:-1]
    numbers: list[int] | None = None  # line numbers of the predictions (None: every line)
    if any(other):  # not only the service's predictions: split the two kinds
        numbers = [i for i, ts in enumerate(stamps) if ts]
        stamps, names = tuple(stamps[i] for i in numbers), tuple(names[i] for i in numbers)
    if stamps:
        _predictions(window, reservoir, models, _Lines(block, end), numbers, stamps, names)
    if numbers is None:
        return
    for line in other:
        if not line or not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            window.stats.malformed += 1
            continue
        if not isinstance(record, dict):
            window.stats.malformed += 1
            continue
        window.stats.records += 1
        _record(window, reservoir, record)


class _Lines:
    """Line ``n`` of a block, by number (the newlines are found once, on first use)."""

    def __init__(self, block: bytes, end: int) -> None:
        self.block = block
        self.end = end
        self._newlines: Any = None

    def __getitem__(self, n: int) -> bytes:
        if self._newlines is None:
            self._newlines = np.flatnonzero(np.frombuffer(self.block, np.uint8, self.end) == 10)
        return self.block[self._newlines[n - 1] + 1 if n else 0 : self._newlines[n]]


def _predictions(
    window: WindowSample,
    reservoir: Reservoir,
    models: Counter[bytes],
    lines: _Lines,
    numbers: list[int] | None,
    stamps: Sequence[bytes],
    names: Sequence[bytes],
) -> None:
    """Prediction lines in the service's format: their line numbers in the block (None:
    0, 1, ...), ts and model (as bytes). Those in the window are counted; only the ones
    the reservoir keeps are parsed."""
    window.stats.records += len(stamps)
    since, until = window.since, window.until
    ts = list(map(float, stamps))
    if not (since <= min(ts) and max(ts) < until):  # mostly, the whole block is in
        keep = [i for i, t in enumerate(ts) if since <= t < until]
        numbers = [numbers[i] for i in keep] if numbers is not None else keep
        names = [names[i] for i in keep]
    if not names:
        return
    models.update(names)
    base, bad = window.rows, 0
    j = int(min(reservoir.next - base, len(names)))
    while j < len(names):
        try:
            record = orjson.loads(lines[numbers[j] if numbers is not None else j])
        except orjson.JSONDecodeError:  # corrupted inside a number: malformed after all
            window.stats.malformed += 1
            window.stats.records -= 1
            models[names[j]] -= 1
            bad += 1
            j += 1  # the next line takes its place as item `reservoir.next`
            continue
        reservoir.take(record)
        j = int(min(reservoir.next - base + bad, len(names)))
    window.rows += len(names) - bad


def _record(window: WindowSample, reservoir: Reservoir, record: dict[str, Any]) -> None:
    """One parsed record (any type, any key order), by the scan's rules."""
    kind = record.get("type")
    ts = record.get("ts")
    if not isinstance(ts, (int, float)) or not window.since <= ts < window.until:
        return
    if kind == "feedback":
        window.feedback[str(record.get("id"))] = record.get("label")
        return
    if kind == "shadow":
        window.shadow.append(
            Shadow(
                str(record.get("id")),
                str(record.get("model")),
                str(record.get("champion")),
                record.get("prediction"),
                record.get("champion_prediction"),
                record.get("error"),
            )
        )
        return
    if kind != "prediction" or not isinstance(record.get("features"), list):
        window.skipped += 1
        return
    if reservoir.next == window.rows:
        reservoir.take(record)
    window.rows += 1
    window.models[str(record.get("model"))] += 1
