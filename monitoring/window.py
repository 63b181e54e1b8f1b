"""The window of the inference log a drift run reads (``read_window``, through
``monitoring.logscan``) and the screening of its sample (``screen``): records with the
wrong width or a non-numeric feature are left out and counted."""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import (
    MonitoringError,
)
from monitoring import drift, logscan

log = logging.getLogger(__name__)


DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")


UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, now: float) -> float:
    """``30m``/``24h``/``7d`` before ``now``, or an ISO 8601 time (UTC if no zone)."""
    text = text.strip()
    match = DURATION.match(text)
    if match:
        return now - float(match[1]) * UNIT_S[match[2]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MonitoringError(
            f"{text!r} is not a time: use a duration (30m, 24h, 7d) or ISO 8601 (2026-11-25T10:00)"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def aligned(since: str, now: float) -> tuple[str, str]:
    """The last whole period of length ``since`` (a duration) before ``now``, as ISO times:
    ``1h`` at 10:17 is 09:00..10:00 (UTC; periods are counted from the epoch, so ``1d`` is
    a UTC day). Runs on a schedule then read windows that touch, never overlap and leave
    no gap, however late each starts within its period."""
    match = DURATION.match(since.strip())
    if not match:
        raise MonitoringError(f"--align takes a duration (30m, 1h, 1d), not {since!r}")
    length = float(match[1]) * UNIT_S[match[2]]
    if length <= 0:
        raise MonitoringError(f"--align needs a window longer than zero, not {since!r}")
    end = (now // length) * length
    return tuple(  # type: ignore[return-value]
        datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") for t in (end - length, end)
    )


def contiguous(start: float, last_until: float | None, cap_s: float) -> float:
    """The window's start, moved back to where the last checked window ended when runs
    were missed in between (never further back than ``cap_s`` before ``start``, never
    forward: rows are read twice rather than not at all)."""
    if last_until is None or last_until >= start:
        return start
    return max(last_until, start - cap_s)


def read_window(
    log_dir: Path, since: float, until: float, sample_rows: int, seed: int
) -> logscan.WindowSample:
    """One pass over the log (``monitoring.logscan``): count, sample, join feedback."""
    return logscan.scan(log_dir, since, until, sample_rows, seed)


@dataclass(frozen=True)
class Screened:
    """The sampled records that fit the reference, and what was left out."""

    records: list[dict[str, Any]]
    wrong_width: Counter[int]  # feature count -> records with that many (not the reference's)
    not_numeric: int  # records holding a null, a non-number or an infinity

    @property
    def left_out(self) -> int:
        return sum(self.wrong_width.values()) + self.not_numeric


def _is_number(value: Any) -> bool:
    # bool is an int to Python, not a feature value; NaN is written as null by the log
    return type(value) is int or (type(value) is float and math.isfinite(value))


def screen(sample: list[dict[str, Any]], width: int) -> Screened:
    """Keep the records with exactly ``width`` features, all of them finite numbers."""
    kept: list[dict[str, Any]] = []
    wrong: Counter[int] = Counter()
    not_numeric = 0
    for record in sample:
        features = record["features"]
        if len(features) != width:
            wrong[len(features)] += 1
        elif not all(_is_number(v) for v in features):
            not_numeric += 1
        else:
            kept.append(record)
    return Screened(kept, wrong, not_numeric)


def describe_left_out(screened: Screened, width: int) -> str:
    """'12 have 10 features (the reference has 64), 3 have null or non-numeric features'."""
    parts = [
        f"{n} have {w} features (the reference has {width})"
        for w, n in sorted(screened.wrong_width.items())
    ]
    if screened.not_numeric:
        parts.append(f"{screened.not_numeric} have null or non-numeric features")
    return ", ".join(parts)


def to_frame(records: list[dict[str, Any]], features: list[str]) -> pd.DataFrame:
    """Prediction records (``screen``ed: the right width, numbers only) -> the features,
    PREDICTION (as text) and the prediction id."""
    frame = pd.DataFrame(
        np.asarray([r["features"] for r in records], dtype=np.float64).reshape(
            len(records), len(features)
        ),
        columns=features,
    )
    frame[drift.PREDICTION] = [str(r.get("prediction")) for r in records]
    frame["id"] = [str(r.get("id")) for r in records]
    return frame
