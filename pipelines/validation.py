"""Great Expectations adapter: the only module that imports great_expectations.

Expectations are plain dicts in GX's own JSON form (``{"type": ..., "kwargs": ...}``),
so a checked-in suite file and the ones derived from params look the same. Each named
table is validated as a whole-dataframe batch in an ephemeral context (nothing is
written to disk); results come back as plain ``Check`` records.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core import files
from core.errors import ConfigError

log = logging.getLogger(__name__)

Expectation = dict[str, Any]


@dataclass(frozen=True)
class Check:
    table: str
    expectation: str
    column: str | None
    success: bool
    observed: Any = None
    unexpected_count: int | None = None
    sample: list[Any] = field(default_factory=list)
    sample_rows: list[Any] = field(default_factory=list)
    error: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate(
    tables: dict[str, tuple[pd.DataFrame, list[Expectation]]], sample_size: int = 5
) -> list[Check]:
    """Run each table's expectations; return one Check per expectation, in order."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # The CLI shows its own progress; GX's per-metric tqdm bars would flood DVC's log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("modelyard")
    checks: list[Check] = []
    for name, (frame, expectations) in tables.items():
        # An expectation on a column the table lacks fails here, in plain words: GX's own
        # errors for it vary by expectation (one of them is "list index out of range").
        columns = {str(c) for c in frame.columns}
        absent = {
            i: _missing_column(name, e)
            for i, e in enumerate(expectations)
            if _column(e) is not None and _column(e) not in columns
        }
        present = [e for i, e in enumerate(expectations) if i not in absent]
        ran: list[Check] = []
        if present:
            asset = source.add_dataframe_asset(name=name)
            batch = asset.add_batch_definition_whole_dataframe(f"{name}-whole").get_batch(
                batch_parameters={"dataframe": frame}
            )
            suite = gx.ExpectationSuite(name=name, expectations=[_build(e) for e in present])
            result = batch.validate(
                suite,
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": sample_size},
            )
            ran = [_check(name, r, sample_size) for r in result.results]
        results = iter(ran)
        checks.extend(absent[i] if i in absent else next(results) for i in range(len(expectations)))
    return checks


def _column(spec: Expectation) -> str | None:
    column = spec.get("kwargs", {}).get("column")
    return None if column is None else str(column)


def _missing_column(table: str, spec: Expectation) -> Check:
    kwargs = {k: _plain(v) for k, v in spec.get("kwargs", {}).items() if k != "column"}
    return Check(
        table=table,
        expectation=spec["type"],
        column=_column(spec),
        success=False,
        error=f"column {_column(spec)!r} is not in the table",
        kwargs=kwargs,
    )


def _build(spec: Expectation) -> Any:
    """A GX Expectation object from ``{"type": "expect_...", "kwargs": {...}}``."""
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    config = ExpectationConfiguration(type=spec["type"], kwargs=dict(spec.get("kwargs", {})))
    return config.to_domain_obj()


def _check(table: str, r: Any, sample_size: int) -> Check:
    config = r.expectation_config
    kwargs = dict(config.kwargs)
    details = r.result or {}
    info = r.exception_info or {}
    error = None
    if info.get("raised_exception"):
        error = str(info.get("exception_message") or "raised an exception")
    elif isinstance(info, dict):
        # Some failures (e.g. a missing column) are reported per metric.
        for value in info.values():
            if isinstance(value, dict) and value.get("raised_exception"):
                error = str(value.get("exception_message"))
                break
    return Check(
        table=table,
        expectation=config.type,
        column=kwargs.get("column"),
        success=bool(r.success),
        observed=_plain(details.get("observed_value")),
        unexpected_count=details.get("unexpected_count"),
        sample=[_plain(v) for v in details.get("partial_unexpected_list", [])[:sample_size]],
        sample_rows=[
            _plain(v) for v in details.get("partial_unexpected_index_list", [])[:sample_size]
        ],
        error=error,
        kwargs={k: _plain(v) for k, v in kwargs.items() if k not in {"column", "batch_id"}},
    )


def _plain(value: Any) -> Any:
    """JSON-friendly form of what GX returns (numpy scalars, NaN, sets)."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return "NaN"
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        try:
            return _plain(value.item())
        except (ValueError, AttributeError):
            return str(value)
    if isinstance(value, (set, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (int, float, str, bool)):
        return value
    return str(value)


def load_suite(path: Path) -> list[Expectation]:
    """The checked-in, user-editable suite: GX's JSON form of an ExpectationSuite."""
    if not path.exists():
        raise ConfigError(
            f"validate.suite {path} does not exist: `modelyard init --source FILE --target "
            "COLUMN` writes one from your data, or write your own (see data/expectations/)"
        )
    try:
        suite = files.read_json(path)
        expectations = suite["expectations"]
        assert isinstance(expectations, list)
        for spec in expectations:
            assert isinstance(spec, dict) and isinstance(spec["type"], str)
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ConfigError(
            f'{path}: expected {{"name": ..., "expectations": [{{"type": ..., "kwargs": {{...}}}}]}}'
        ) from exc
    return [{"type": s["type"], "kwargs": s.get("kwargs", {})} for s in expectations]
