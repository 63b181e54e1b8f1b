"""What people give the web app, turned into rows the model API takes (pure functions).

**Drawings.** An image model is one whose features are ``pixel_0 .. pixel_{n-1}`` with n a
square (the digits model: 64 = 8x8). Its rows are made the way scikit-learn's digits
were (UCI optdigits): the digit is size-normalized into a 32x32 bitmap, which is cut into
non-overlapping 4x4 blocks, and each value is the number of "on" pixels in its block,
0..16. Here the strokes the person drew are

1. scaled, keeping their aspect ratio, so the longer side fills the bitmap (less a margin
   for the pen) and centered, as the NIST normalization did (digits fill the full height);
2. drawn with the pen width that turns ~30% of the bitmap on: the share every digit class
   of the training data has (the NIST bitmaps carry a near-constant amount of ink, so a
   thin or thick pen on the canvas gives the same input);
3. counted per 4x4 block. A model whose pixels range over [0, M] gets count * M / 16.

**Forms** name each feature's field ``f<i>``; **CSV files** carry a header with the
feature names (any order, other columns kept) or no header and exactly the features.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from services.client import Feature, Prediction

BLOCK = 4  # each value counts a BLOCK x BLOCK block of the bitmap (16 pixels: 0..16)
INK = 0.30  # share of the bitmap that is on: the training data's, for every class
PEN_MARGIN = 4  # bitmap pixels kept free around the scaled strokes for the pen's width
MAX_POINTS = 5_000
MAX_STROKES = 200
_PIXEL = re.compile(r"^pixel_(\d+)$")


class InputError(ValueError):
    """Something a person entered cannot be used; ``field`` says where, the message what."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Image:
    """An image model's input: ``side`` x ``side`` values in [0, ``high``]."""

    side: int
    high: float

    @property
    def bitmap(self) -> int:
        return self.side * BLOCK


def image_of(features: Sequence[Feature]) -> Image | None:
    """The image geometry if the features are the pixels of a square image, else None.

    The value range comes from the schema; without one, it is 0..16 (scikit-learn digits).
    """
    n = len(features)
    side = math.isqrt(n)
    if n < 4 or side * side != n:
        return None
    for i, f in enumerate(features):
        match = _PIXEL.match(f.name)
        if not match or int(match[1]) != i:
            return None
    highs = {f.max for f in features}
    lows = {f.min for f in features}
    if len(highs) != 1 or lows - {0.0, None}:
        return None
    high = highs.pop()
    return Image(side, 16.0 if high is None else high)


def parse_strokes(text: str) -> list[list[tuple[float, float]]]:
    """The canvas's strokes, sent as JSON ``[[[x, y], ...], ...]`` (any units)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise InputError("strokes", "the drawing did not arrive (not JSON)") from None
    except RecursionError:  # lists nested thousands deep: no drawing looks like that
        raise InputError(
            "strokes", "nested too deep: [[[x, y], ...], ...] is three levels"
        ) from None
    if not isinstance(data, list) or len(data) > MAX_STROKES:
        raise InputError("strokes", f"expected a list of at most {MAX_STROKES} strokes")
    strokes: list[list[tuple[float, float]]] = []
    total = 0
    for stroke in data:
        if not isinstance(stroke, list):
            raise InputError("strokes", "each stroke is a list of [x, y] points")
        points = []
        for p in stroke:
            if (
                not isinstance(p, list)
                or len(p) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in p)
                or not all(math.isfinite(v) for v in p)
            ):
                raise InputError("strokes", "each point is [x, y] with two finite numbers")
            points.append((float(p[0]), float(p[1])))
        total += len(points)
        if points:
            strokes.append(points)
    if total > MAX_POINTS:
        raise InputError("strokes", f"{total} points; at most {MAX_POINTS}")
    if not strokes:
        raise InputError("strokes", "draw something first")
    return strokes


def rasterize(strokes: Sequence[Sequence[tuple[float, float]]], image: Image) -> list[float]:
    """The model's row for a drawing: ``image.side``² values, row by row (see the module)."""
    size = image.bitmap
    points = np.array([p for s in strokes for p in s], dtype=np.float64)
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = float((hi - lo).max())
    scale = (size - 2 * PEN_MARGIN) / extent if extent > 0 else 1.0
    offset = size / 2 - (lo + hi) / 2 * scale
    # Segments in bitmap coordinates; a single-point stroke is a segment of length 0.
    segs = []
    for s in strokes:
        xy = _thin(np.array(s, dtype=np.float64) * scale + offset)
        if len(xy) == 1:
            xy = np.vstack([xy, xy])
        segs.append(np.stack([xy[:-1], xy[1:]], axis=1))
    seg = np.concatenate(segs)  # [S, 2 (ends), 2 (x, y)]
    centers = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5), -1).reshape(-1, 2)
    # Rounded so that equal distances stay equal whatever the canvas's size or offset.
    dist = np.round(_distance_to_segments(centers, seg), 6)  # [size*size]
    # The pen width that turns INK of the bitmap on: threshold at that quantile.
    on_count = round(INK * size * size)
    threshold = np.partition(dist, on_count - 1)[on_count - 1]
    bitmap = (dist <= threshold).reshape(size, size)
    counts = bitmap.reshape(image.side, BLOCK, image.side, BLOCK).sum(axis=(1, 3))
    values = counts * (image.high / (BLOCK * BLOCK))
    return [float(v) for v in values.reshape(-1)]


def _thin(xy: np.ndarray, step: float = 0.5) -> np.ndarray:
    """The stroke without points closer than ``step`` bitmap pixels to the last kept one
    (a mouse reports several per bitmap pixel; the pen is ~10 pixels wide, so this changes
    nothing the model sees). The first and last points always stay."""
    points = xy.tolist()
    keep = [0]
    for i in range(1, len(points)):
        last = points[keep[-1]]
        if math.hypot(points[i][0] - last[0], points[i][1] - last[1]) >= step:
            keep.append(i)
    if keep[-1] != len(points) - 1:
        keep.append(len(points) - 1)
    return xy[keep]


def _distance_to_segments(p: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Each point's distance to the nearest segment: one pass over the segments, each a
    vector operation over the points (a drawing has hundreds of segments, the bitmap
    a thousand points)."""
    px, py = p[:, 0], p[:, 1]
    best = np.full(len(p), np.inf)
    for (ax, ay), (bx, by) in seg:
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        if length2 > 0:
            t = np.clip(((px - ax) * dx + (py - ay) * dy) / length2, 0.0, 1.0)
        else:
            t = np.zeros_like(px)
        np.minimum(best, (px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2, out=best)
    return np.sqrt(best)


def parse_form(form: Mapping[str, str], features: Sequence[Feature]) -> list[float]:
    """The row from a generated form: field ``f<i>`` holds feature i."""
    row = []
    for i, f in enumerate(features):
        raw = (form.get(f"f{i}") or "").strip()
        if not raw:
            raise InputError(f.name, "enter a number")
        row.append(_number(raw, f.name))
    return row


@dataclass(frozen=True)
class Table:
    """A parsed CSV: the original header and rows, and the model's rows from them."""

    header: list[str]
    rows: list[list[str]]
    inputs: list[list[float]]
    first_line: int  # the file's line number of rows[0]


def read_csv(data: bytes, features: Sequence[Feature], *, max_rows: int) -> Table:
    names = [f.name for f in features]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("file", "not UTF-8 text; save the sheet as CSV (UTF-8)") from None
    try:
        lines = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InputError("file", f"not a readable CSV ({exc})") from None
    lines = [line for line in lines if any(cell.strip() for cell in line)]
    if not lines:
        raise InputError("file", "the file is empty")
    first = [c.strip() for c in lines[0]]
    if all(_is_number(c) for c in first):
        header, body, first_line = names, lines, 1
        if len(first) != len(names):
            raise InputError(
                "file",
                f"no header and {len(first)} columns; expected a header with the feature names "
                f"or exactly {len(names)} columns ({names[0]} .. {names[-1]})",
            )
        columns = list(range(len(names)))
    else:
        header, body, first_line = first, lines[1:], 2
        missing = [n for n in names if n not in header]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise InputError("file", f"the header lacks {len(missing)} features: {shown}")
        columns = [header.index(n) for n in names]
    if not body:
        raise InputError("file", "the file has a header but no rows")
    if len(body) > max_rows:
        raise InputError("file", f"{len(body)} rows; at most {max_rows} per file")
    inputs = []
    for k, line in enumerate(body):
        if len(line) != len(header):
            raise InputError(
                f"line {first_line + k}", f"{len(line)} cells; the header has {len(header)}"
            )
        inputs.append(
            [
                _number(line[c].strip(), f"line {first_line + k}, {names[j]}")
                for j, c in enumerate(columns)
            ]
        )
    return Table(header, body, inputs, first_line)


def write_csv(table: Table, predictions: Sequence[Prediction], classes: Sequence[object]) -> bytes:
    """The input columns, then prediction, one probability per class, and the id that
    /v1/feedback takes."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*table.header, "prediction", *(f"p_{c}" for c in classes), "prediction_id"])
    for row, p in zip(table.rows, predictions, strict=True):
        probs = [f"{p.probabilities[c]:.6f}" for c in classes]  # type: ignore[index]
        writer.writerow([*row, p.label, *probs, p.id])
    return out.getvalue().encode()


def _number(raw: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise InputError(where, f"{raw[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(where, f"{raw!r} is not a finite number")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
