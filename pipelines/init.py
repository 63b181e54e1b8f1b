"""`modelyard init`: params and a data suite for a dataset of your own, from what it holds.

``propose`` is pure: a DataFrame in, a ``Proposal`` out (every params key it sets, with
the value and why, plus the Great Expectations suite). ``apply`` writes it: the suite to
``data/expectations/<name>.json`` and the keys into ``params.yaml`` in place, so the
file's comments and every other key stay as they were. It refuses, without ``force``,
to overwrite a different suite, or params that already describe a dataset of their own
(an ``ingest.source`` that is a file, not a bundled ``sklearn:`` example).

What it sets, from the data:

- ``ingest.source``; ``data``: the target, the features (every other column; they must
  be numeric and complete), the labels, each feature's range (observed, widened by 10%
  of its span);
- ``validate``: row bounds (half to ten times the rows seen), class-share bounds (half
  the smallest share to 1.5 times the largest), the suite file;
- ``train.model``: ``logreg`` (standardized logistic regression: a fast, robust tabular
  baseline that exports to ONNX exactly);
- ``evaluate``: floors that only a useless model fails (accuracy and macro-F1 above
  always answering the most common label); raise them to what your use needs;
- ``register.model_name``.

The suite holds what params cannot say: each feature's mean (within half a standard
deviation of what it is now) and spread (0.5x to 2x), so shifted or rescaled data fails
``validate`` even inside the ranges.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pandas as pd

from core import files
from core.errors import ConfigError, DataError
from pipelines import config, sources

log = logging.getLogger(__name__)

MODEL = "logreg"
MAX_CLASSES = 100
MIN_PER_CLASS = 3  # prepare stratifies train/val/test: each class needs a row in each
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Choice:
    key: str  # dotted params key, e.g. "validate.min_rows"
    value: Any  # plain YAML/JSON value
    why: str


@dataclass(frozen=True)
class Proposal:
    choices: tuple[Choice, ...]
    suite_path: Path  # relative to the project root
    suite: dict[str, Any]

    def value(self, key: str) -> Any:
        return next(c.value for c in self.choices if c.key == key)


@dataclass(frozen=True)
class Written:
    proposal: Proposal
    params_path: Path
    changed: tuple[str, ...]  # params keys whose value changed
    suite_written: bool


def default_name(source: str) -> str:
    """``data/sources/Iris Data.csv`` -> ``iris-data-classifier``."""
    stem = source.removeprefix(sources.PREFIX) if sources.is_bundled(source) else Path(source).stem
    slug = re.sub(r"[^0-9a-zA-Z]+", "-", stem).strip("-").lower() or "model"
    return f"{slug}-classifier"


def propose(
    frame: pd.DataFrame,
    *,
    source: str,
    target: str,
    name: str,
    expectations: Path = Path("data/expectations"),
) -> Proposal:
    """Params and a suite for ``frame``; DataError when the pipeline could not use it."""
    if not NAME.match(name):
        raise ConfigError(
            f"model name {name!r}: use letters, digits, '.', '_' or '-' (it names the suite file)"
        )
    labels, counts = _labels(frame, target, source)
    features = _features(frame, target, source)
    rows = len(frame)
    shares = {label: count / rows for label, count in counts.items()}
    low, high = min(shares.values()), max(shares.values())
    majority = max(shares, key=lambda k: shares[k])
    trivial_f1 = 2 * high / (1 + high) / len(labels)
    ranges = {col: _range(frame[col]) for col in features}
    suite_path = expectations / f"{name}.json"
    choices = (
        Choice("ingest.source", source, "the file ingest copies to data/raw"),
        Choice("data.target", target, f"{len(labels)} labels"),
        Choice(
            "data.features",
            features,
            f"every other column: {len(features)} numeric, none missing",
        ),
        Choice("data.labels", labels, ", ".join(f"{k}: {v}" for k, v in counts.items())),
        Choice("data.feature_range", None, "no shared range: each feature has its own"),
        Choice("data.ranges", ranges, "observed min..max, widened by 10% of the span"),
        Choice("validate.min_rows", max(1, rows // 2), f"half the {rows} rows seen"),
        Choice("validate.max_rows", rows * 10, f"ten times the {rows} rows seen"),
        Choice(
            "validate.class_share",
            [_floor(low / 2, 2), min(1.0, _ceil(high * 1.5, 2))],
            f"shares seen {low:.3f}..{high:.3f}: half the smallest to 1.5x the largest",
        ),
        Choice("validate.suite", str(suite_path), "each feature's mean and spread (see the file)"),
        Choice("train.model", MODEL, "standardized logistic regression, a tabular baseline"),
        Choice(
            "evaluate.min_accuracy",
            min(1.0, _ceil(high + 0.01, 2)),
            f"beat always answering {majority!r} ({high:.3f}); raise it for your use",
        ),
        Choice(
            "evaluate.min_macro_f1",
            min(1.0, _ceil(trivial_f1 + 0.01, 2)),
            f"beat the same trivial answer ({trivial_f1:.3f}); raise it for your use",
        ),
        Choice("evaluate.min_class_recall", 0.0, "no per-class floor yet; set one for your use"),
        Choice("evaluate.min_noise_invariance", 0.9, "9 in 10 predictions survive 5% noise"),
        Choice("register.model_name", name, "the registered model; --name to change"),
    )
    return Proposal(choices, suite_path, suite(frame, features, name=name, source=source))


def suite(frame: pd.DataFrame, features: list[str], *, name: str, source: str) -> dict[str, Any]:
    """A GX suite of each feature's mean and standard deviation, as seen in ``frame``."""
    expectations: list[dict[str, Any]] = []
    for col in features:
        values = frame[col].astype("float64")
        mean, std = float(values.mean()), float(values.std())
        if not std > 0:  # a constant column: its value, give or take rounding
            tol = max(abs(mean) * 0.01, 1e-6)
            digits = _digits(tol)
            expectations.append(
                _between("mean", col, _floor(mean - tol, digits), _ceil(mean + tol, digits))
            )
            continue
        digits = _digits(std / 10)
        lo, hi = _floor(mean - std / 2, digits), _ceil(mean + std / 2, digits)
        expectations.append(_between("mean", col, lo, hi))
        expectations.append(_between("stdev", col, _floor(std / 2, digits), _ceil(std * 2, digits)))
    return {
        "name": name,
        "notes": (
            f"Written by `modelyard init` from {source} ({len(frame)} rows): each feature's "
            "mean within half a standard deviation of what it was, its standard deviation "
            "within 0.5x..2x. The column set, dtypes, ranges, labels, row count and class "
            "shares come from params.yaml (data, validate). Edit freely; GX's JSON format."
        ),
        "expectations": expectations,
    }


def _between(stat: str, column: str, lo: float, hi: float) -> dict[str, Any]:
    return {
        "type": f"expect_column_{stat}_to_be_between",
        "kwargs": {"column": column, "min_value": lo, "max_value": hi},
    }


def set_values(params_path: Path, values: dict[str, Any]) -> tuple[str, str]:
    """``values`` (dotted keys) written into ``params_path``, its comments, order and flow
    style kept; checked to load as the pipeline loads it, then replaced atomically.
    Returns (the text before, the text after)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.width = 100
    yaml.representer.add_representer(type(None), _represent_null)
    before = params_path.read_text()
    doc = yaml.load(before)
    for key, value in values.items():
        _set(doc, key, _yaml_value(value))
    out = StringIO()
    yaml.dump(doc, out)
    text = out.getvalue()
    _check(text, params_path)
    files.write_text(params_path, text)
    return before, text


def apply(proposal: Proposal, params_path: Path, *, force: bool = False) -> Written:
    """Write the suite and the params; refuse to overwrite without ``force``.

    Checks everything first: on a refusal nothing is written.
    """
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: comments, order and flow style survive
    yaml.width = 100
    yaml.representer.add_representer(type(None), _represent_null)
    try:
        doc = yaml.load(params_path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{params_path} not found: run from the project root or pass --params"
        ) from exc
    root = params_path.resolve().parent
    current = {c.key: _get(doc, c.key) for c in proposal.choices}
    changed = tuple(c.key for c in proposal.choices if _plain(current[c.key]) != _plain(c.value))
    suite_file = root / proposal.suite_path
    suite_differs = not suite_file.exists() or _read_json(suite_file) != proposal.suite
    refusals = []
    if suite_file.exists() and suite_differs and not force:
        refusals.append(f"{proposal.suite_path} exists and differs from what init would write")
    source = current["ingest.source"]
    own_data = source is not None and not sources.is_bundled(str(source))
    if changed and own_data and not force:
        lines = [f"    {k}: {_short(current[k])} -> {_short(proposal.value(k))}" for k in changed]
        refusals.append(
            f"{params_path.name} already describes {source}; init would change:\n"
            + "\n".join(lines)
        )
    if refusals:
        raise ConfigError(
            "init wrote nothing: "
            + "; ".join(refusals)
            + ". Pass --force to overwrite (commit first to keep what you have)."
        )

    for c in proposal.choices:
        _set(doc, c.key, _yaml_value(c.value))
    out = StringIO()
    yaml.dump(doc, out)
    text = out.getvalue()
    _check(text, params_path)
    if suite_differs:
        files.write_text(suite_file, json.dumps(proposal.suite, indent=2) + "\n")
    if changed:
        files.write_text(params_path, text)
    return Written(proposal, params_path, changed, suite_differs)


def run(params_path: Path, *, source: str, target: str, name: str | None, force: bool) -> Written:
    """`modelyard init`: read ``source`` (relative to the project root), propose, apply."""
    params = config.load(params_path)
    root = params_path.resolve().parent
    if not sources.is_bundled(source):
        inside = (root / source).resolve().is_relative_to((root / params.paths.sources).resolve())
        if not inside:
            raise ConfigError(
                f"--source {source}: put the file under {params.paths.sources}/ (ingest "
                "depends on that folder, so DVC re-runs the pipeline when the file changes)"
            )
    frame = sources.read(source, target=target, root=root)
    proposal = propose(frame, source=source, target=target, name=name or default_name(source))
    return apply(proposal, params_path, force=force)


# -- what the data allows ------------------------------------------------------------------


def _labels(frame: pd.DataFrame, target: str, source: str) -> tuple[list[Any], dict[Any, int]]:
    if target not in frame.columns:
        raise DataError(
            f"--target {target!r} is not a column of {source}; its columns: "
            f"{', '.join(map(str, frame.columns))}"
        )
    column = frame[target]
    if column.isna().any():
        raise DataError(
            f"{source}: {int(column.isna().sum())} rows have no {target!r}; "
            "drop or label them, then run init again"
        )
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_float_dtype(column):
        raise DataError(
            f"{source}: {target!r} holds {column.dtype} values; labels must be integers or "
            "text (a continuous target is regression, which modelyard does not train)"
        )
    counts = column.value_counts()
    if len(counts) < 2:
        raise DataError(f"{source}: {target!r} has one label only; a classifier needs two")
    if len(counts) > MAX_CLASSES:
        raise DataError(
            f"{source}: {target!r} has {len(counts)} distinct values; is it an id or a "
            f"continuous value? modelyard trains classifiers (up to {MAX_CLASSES} labels)"
        )
    rare = {k: int(v) for k, v in counts.items() if v < MIN_PER_CLASS}
    if rare:
        raise DataError(
            f"{source}: labels with fewer than {MIN_PER_CLASS} rows cannot be split into "
            f"train/val/test: {rare}; add rows or drop them"
        )
    text = not pd.api.types.is_integer_dtype(column)
    labels = sorted((str(v) if text else int(v)) for v in counts.index)
    by_label = {(str(k) if text else int(k)): int(v) for k, v in counts.items()}
    return labels, {label: by_label[label] for label in labels}


def _features(frame: pd.DataFrame, target: str, source: str) -> list[str]:
    features = [str(c) for c in frame.columns if c != target]
    if not features:
        raise DataError(f"{source}: no columns besides {target!r}")
    numeric = {c for c in features if _numeric(frame[c])}
    other = [f"{c} ({frame[c].dtype})" for c in features if c not in numeric]
    if other:
        raise DataError(
            f"{source}: features must be numbers; these columns are not: {', '.join(other)}. "
            "Drop them or encode them as numbers, then run init again"
        )
    missing = {c: int(frame[c].isna().sum()) for c in features if frame[c].isna().any()}
    if missing:
        raise DataError(
            f"{source}: missing values (validate rejects them) in {missing}; "
            "fill or drop them, then run init again"
        )
    return features


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _range(column: pd.Series) -> list[float]:
    lo, hi = float(column.min()), float(column.max())
    span = hi - lo
    pad = 0.1 * span if span > 0 else max(abs(hi) * 0.1, 1.0)
    low = lo - pad
    if lo >= 0:
        low = max(0.0, low)  # a non-negative quantity stays non-negative
    if pd.api.types.is_integer_dtype(column):
        return [float(math.floor(low)), float(math.ceil(hi + pad))]
    digits = _digits((hi + pad - low) / 100)
    return [_floor(low, digits), _ceil(hi + pad, digits)]


# -- numbers -------------------------------------------------------------------------------


def _digits(scale: float) -> int:
    """Decimal places that resolve ``scale``: 0.03 -> 2, 12.0 -> 0."""
    if not scale > 0:
        return 6
    return max(0, -math.floor(math.log10(scale)))


def _floor(x: float, digits: int) -> float:
    step = 10.0**-digits
    return round(math.floor(x / step + 1e-9) * step, digits)


def _ceil(x: float, digits: int) -> float:
    step = 10.0**-digits
    return round(math.ceil(x / step - 1e-9) * step, digits)


# -- params.yaml ---------------------------------------------------------------------------


def _get(doc: Any, key: str) -> Any:
    node = doc
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(doc: Any, key: str, value: Any) -> None:
    from ruamel.yaml.comments import CommentedMap

    *sections, last = key.split(".")
    node = doc
    for part in sections:
        if part not in node or node[part] is None:
            node[part] = CommentedMap()
        node = node[part]
    node[last] = value


def _yaml_value(value: Any) -> Any:
    """Lists and mappings in flow style (``[a, b]``, ``{a: [0, 1]}``), as params.yaml has them."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    out: CommentedMap | CommentedSeq
    if isinstance(value, list):
        out = CommentedSeq(_yaml_value(v) for v in value)
    elif isinstance(value, dict):
        out = CommentedMap((k, _yaml_value(v)) for k, v in value.items())
    else:
        return value
    out.fa.set_flow_style()
    return out


def _represent_null(representer: Any, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def _plain(value: Any) -> Any:
    """Comparable form: tuples and YAML sequences as lists, mappings as dicts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _check(text: str, params_path: Path) -> None:
    """The written params must load as the pipeline loads them (a bug here, not the user's)."""
    import yaml

    try:
        config.Params.model_validate(yaml.safe_load(text))
    except ValueError as exc:
        raise ConfigError(f"init would write invalid params to {params_path}: {exc}") from exc


def _read_json(path: Path) -> Any:
    try:
        return files.read_json(path)
    except ValueError:
        return None  # not JSON: differs from any suite


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(_plain(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
