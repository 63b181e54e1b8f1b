"""validate: the data contract, checked with Great Expectations before anything trains.

Reads ``paths.raw``, ``paths.raw_production`` (the harvested production rows ingest
took), the prepared splits, ``data`` and ``validate`` params and the checked-in suite
(``validate.suite``, GX JSON a user can edit). Checks:

- schema: exact column set, numeric feature dtypes;
- values: feature ranges and no nulls;
- labels: only declared labels;
- size: row-count bounds, and each class's share of rows within bounds;
- leakage: no feature row appears in two splits (the production test split included).

Production rows (when there are any) get the same contract: the tables ``production``
(their features and label: the checks derived from params plus the suite's per-row and
column-structure expectations) and ``production_provenance`` (the columns harvest
writes, a unique prediction id, a label time). Row-count bounds, class shares and the
suite's aggregate expectations (a column mean, the share of unique values) describe the
base table, not a small slice of live traffic that is expected to drift: they are not
applied to production rows. A failure there fails validate as a base failure does.

Writes ``validate.json`` (a DVC metric; ``production_rows`` and ``production_failed``
apart) and ``validate.html`` under ``paths.reports``, then raises DataValidationError
naming each failed expectation with sample bad values.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core import files
from core.errors import DataError, DataValidationError
from pipelines import validation
from pipelines.config import PRODUCTION_TEST, PROVENANCE, SPLITS, Data, Paths, Validate

log = logging.getLogger(__name__)

NUMERIC = [
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "Int64",
    "Float64",
]
TEXT = ["object", "str", "string", "category"]
PRODUCTION_TABLES = ("production", "production_provenance")
SOURCE = "source"  # the train/val column prepare adds ("base" | "production")
# Suite expectations that judge each row or the table's columns, so they hold for any
# slice of good rows; the others (means, unique shares, row counts) describe the base.
ROW_LEVEL_PREFIXES = ("expect_column_values_to_", "expect_column_to_exist")
COLUMN_STRUCTURE = {
    "expect_table_column_count_to_equal",
    "expect_table_column_count_to_be_between",
    "expect_table_columns_to_match_set",
    "expect_table_columns_to_match_ordered_list",
}


@dataclass(frozen=True)
class Result:
    success: bool
    evaluated: int
    failed: int
    checks: list[validation.Check]
    production_rows: int = 0
    production_failed: int = 0


def run(cfg: Validate, data: Data, paths: Paths, root: Path) -> Result:
    raw = _read_csv(root / paths.raw)
    production = _read_parquet(root / paths.raw_production, "ingest")
    splits = {name: _read_parquet(root / paths.split(name)) for name in (*SPLITS, PRODUCTION_TEST)}
    suite = validation.load_suite(root / cfg.suite)
    tables = {
        "raw": (raw, raw_expectations(cfg, data) + suite),
        "class_balance": (class_balance(raw, data), balance_expectations(cfg)),
    }
    if len(production):
        tables.update(production_tables(production, data, suite))
    for name, frame in splits.items():
        if name == PRODUCTION_TEST:
            # Empty without production rows; its rows were checked as "production".
            tables[name] = (frame, [_columns([*data.feature_names, data.target, *PROVENANCE])])
        else:
            tables[name] = (frame, split_expectations(data, source=name in ("train", "val")))
    if cfg.leakage:
        tables["leakage"] = (leakage_table(splits, data), leakage_expectations())

    checks = validation.validate(tables, cfg.sample_size)
    failed = [c for c in checks if not c.success]
    production_failed = sum(1 for c in failed if c.table in PRODUCTION_TABLES)
    result = Result(
        not failed, len(checks), len(failed), checks, len(production), production_failed
    )
    _write_reports(result, raw, splits, root / paths.reports)
    if failed:
        raise DataValidationError(failure_message(failed, data))
    log.info("validation passed: %d expectations", len(checks))
    return result


def raw_expectations(cfg: Validate, data: Data) -> list[validation.Expectation]:
    label_types = NUMERIC if all(isinstance(x, int) for x in data.labels) else TEXT
    out: list[validation.Expectation] = [
        _e(
            "expect_table_columns_to_match_set",
            column_set=[*data.feature_names, data.target],
            exact_match=True,
        ),
        _e("expect_table_row_count_to_be_between", min_value=cfg.min_rows, max_value=cfg.max_rows),
        _e("expect_column_values_to_not_be_null", column=data.target),
        _e("expect_column_values_to_be_in_type_list", column=data.target, type_list=label_types),
        _e("expect_column_values_to_be_in_set", column=data.target, value_set=list(data.labels)),
    ]
    for col in data.feature_names:
        out.append(_e("expect_column_values_to_be_in_type_list", column=col, type_list=NUMERIC))
        out.append(_e("expect_column_values_to_not_be_null", column=col))
        bounds = data.range_for(col)
        if bounds is not None:
            out.append(
                _e(
                    "expect_column_values_to_be_between",
                    column=col,
                    min_value=bounds[0],
                    max_value=bounds[1],
                )
            )
    return out


def split_expectations(data: Data, *, source: bool = False) -> list[validation.Expectation]:
    """A prepared split: the contract's columns (train/val: and ``source``), some rows."""
    columns = [*data.feature_names, data.target, *([SOURCE] if source else [])]
    return [_columns(columns), _e("expect_table_row_count_to_be_between", min_value=1)]


def production_tables(
    production: pd.DataFrame, data: Data, suite: list[validation.Expectation]
) -> dict[str, tuple[pd.DataFrame, list[validation.Expectation]]]:
    """The production rows under the base contract (see the module docstring)."""
    contract = [*data.feature_names, data.target]
    rows = production[[c for c in production.columns if c in contract]]
    # The base table's checks without its row-count bounds (min_rows is for the base).
    derived = [
        e
        for e in raw_expectations(Validate(), data)
        if e["type"] != "expect_table_row_count_to_be_between"
    ]
    per_row = [
        e
        for e in suite
        if e["type"].startswith(ROW_LEVEL_PREFIXES) or e["type"] in COLUMN_STRUCTURE
    ]
    provenance = production[[c for c in production.columns if c not in contract]]
    return {
        "production": (rows, [*derived, *per_row]),
        "production_provenance": (
            provenance,
            [
                _columns(list(PROVENANCE)),
                _e("expect_column_values_to_not_be_null", column="prediction_id"),
                _e("expect_column_values_to_be_unique", column="prediction_id"),
                _e("expect_column_values_to_not_be_null", column="labelled_at"),
            ],
        ),
    }


def _columns(names: list[str]) -> validation.Expectation:
    return _e("expect_table_columns_to_match_set", column_set=names, exact_match=True)


def balance_expectations(cfg: Validate) -> list[validation.Expectation]:
    lo, hi = cfg.class_share
    return [_e("expect_column_values_to_be_between", column="share", min_value=lo, max_value=hi)]


def leakage_expectations() -> list[validation.Expectation]:
    return [_e("expect_column_values_to_be_unique", column="row_hash")]


def class_balance(raw: pd.DataFrame, data: Data) -> pd.DataFrame:
    """One row per declared label (indexed by it), with its share of the raw rows."""
    if data.target not in raw.columns or raw.empty:
        return pd.DataFrame({"share": [0.0] * len(data.labels)}, index=list(map(str, data.labels)))
    shares = raw[data.target].value_counts(normalize=True)
    return pd.DataFrame(
        {"share": [float(shares.get(label, 0.0)) for label in data.labels]},
        index=[str(label) for label in data.labels],
    )


def leakage_table(splits: dict[str, pd.DataFrame], data: Data) -> pd.DataFrame:
    """A content hash of each split's distinct feature rows, indexed by "split:row".

    Duplicates inside one split are not leakage; the same input in two splits is.
    """
    parts = []
    for name, frame in splits.items():
        cols = [c for c in data.feature_names if c in frame.columns]
        if not cols or frame.empty:
            continue
        # As float64: a pixel read as int64 from the CSV equals the same harvested float.
        values = frame[cols].apply(pd.to_numeric, errors="coerce").astype("float64")
        hashes = pd.util.hash_pandas_object(values, index=False).astype("uint64")
        part = pd.DataFrame({"row_hash": hashes.map(lambda h: f"{h:016x}").to_numpy()})
        part.index = [f"{name}:{i}" for i in range(len(frame))]
        parts.append(part.drop_duplicates(subset="row_hash"))
    return pd.concat(parts) if parts else pd.DataFrame({"row_hash": []})


def failure_message(failed: list[validation.Check], data: Data) -> str:
    lines = [f"data validation failed: {len(failed)} expectation(s)"]
    for c in failed:
        lines.append("  - " + describe(c, data))
    lines.append(
        "Fix the data (or the bounds in params.yaml: data, validate) and re-run `dvc repro`."
    )
    return "\n".join(lines)


def describe(c: validation.Check, data: Data) -> str:
    where = f"{c.table}" + (f".{c.column}" if c.column else "")
    head = f"{where}: {c.expectation}"
    if c.error:
        return f"{head}: {c.error}"
    if c.expectation == "expect_table_columns_to_match_set" and isinstance(c.observed, list):
        want = [*data.feature_names, data.target]
        missing = [x for x in want if x not in c.observed]
        extra = [x for x in c.observed if x not in want]
        return f"{head}: missing columns {missing}, unexpected columns {extra}"
    if c.table == "leakage":
        return (
            f"{head}: {c.unexpected_count} feature row(s) appear in more than one split, "
            f"e.g. rows {c.sample_rows}"
        )
    if c.table == "class_balance":
        return (
            f"{head}: class share outside {c.kwargs.get('min_value')}..{c.kwargs.get('max_value')} "
            f"for labels {c.sample_rows} (shares {c.sample})"
        )
    bits = []
    if c.unexpected_count:
        bits.append(f"{c.unexpected_count} bad value(s)")
    if c.sample:
        bits.append(f"sample {c.sample}")
    if c.sample_rows:
        bits.append(f"at rows {c.sample_rows}")
    if not bits and c.observed is not None:
        bits.append(f"observed {c.observed}")
    expected = {
        k: v
        for k, v in c.kwargs.items()
        if k in {"min_value", "max_value", "value_set", "type_list"}
    }
    if expected:
        bits.append(f"expected {expected}")
    return f"{head}: " + ", ".join(bits)


def _write_reports(
    result: Result, raw: pd.DataFrame, splits: dict[str, pd.DataFrame], reports: Path
) -> None:
    summary: dict[str, Any] = {
        "success": result.success,
        "evaluated": result.evaluated,
        "failed": result.failed,
        "rows": {"raw": len(raw), **{k: len(v) for k, v in splits.items()}},
        "production_rows": result.production_rows,
        "production_failed": result.production_failed,
    }
    files.write_metrics(reports / "validate.json", summary)
    files.write_text(reports / "validate.html", _html(result, summary))


def _html(result: Result, summary: dict[str, Any]) -> str:
    status = "PASSED" if result.success else "FAILED"
    color = "#1a7f37" if result.success else "#cf222e"
    rows = []
    ordered = sorted(result.checks, key=lambda c: c.success)  # failures first
    for c in ordered:
        mark = "✓" if c.success else "✗"
        if c.error:
            detail = c.error
        elif c.unexpected_count:
            detail = f"{c.unexpected_count} unexpected; sample {c.sample}; rows {c.sample_rows}"
        elif c.observed is not None:
            detail = f"observed {c.observed}"
        else:
            detail = "every value as expected" if c.success else "failed"
        rows.append(
            f"<tr class={'ok' if c.success else 'bad'}><td>{mark}</td><td>{html.escape(c.table)}</td>"
            f"<td>{html.escape(c.column or '')}</td><td>{html.escape(c.expectation)}</td>"
            f"<td>{html.escape(_short(c.kwargs))}</td><td>{html.escape(_short(detail))}</td></tr>"
        )
    tables = sorted({c.table for c in result.checks})
    per_table = ", ".join(
        f"{t}: {sum(1 for c in result.checks if c.table == t and not c.success)} failed "
        f"of {sum(1 for c in result.checks if c.table == t)}"
        for t in tables
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>modelyard data validation</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}}
tr.bad{{background:#ffebe9}}h1 span{{color:{color}}}</style></head><body>
<h1>Data validation: <span>{status}</span></h1>
<p>{result.evaluated} expectations evaluated (Great Expectations), {result.failed} failed.
Rows: {html.escape(str(summary["rows"]))}</p>
<p>{html.escape(_production_line(result))}</p>
<p>By table: {html.escape(per_table)}. Failures are listed first.</p>
<table><tr><th></th><th>table</th><th>column</th><th>expectation</th><th>arguments</th><th>result</th></tr>
{"".join(rows)}</table></body></html>
"""


def _production_line(result: Result) -> str:
    if not result.production_rows:
        return "Production rows: none (nothing harvested, or ingest.production disabled)."
    checked = sum(1 for c in result.checks if c.table in PRODUCTION_TABLES)
    verdict = "all passed" if not result.production_failed else f"{result.production_failed} FAILED"
    return (
        f"Production rows: {result.production_rows}, checked against the same contract: "
        f"{checked} expectations, {verdict} (tables {', '.join(PRODUCTION_TABLES)})."
    )


def _short(value: object, limit: int = 240) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _e(type_: str, **kwargs: Any) -> validation.Expectation:
    return {"type": type_, "kwargs": kwargs}


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}. Run `modelyard ingest` first.") from exc


def _read_parquet(path: Path, stage: str = "prepare") -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}. Run `modelyard {stage}` first.") from exc
