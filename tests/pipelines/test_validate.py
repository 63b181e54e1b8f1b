"""Data tests: corrupted data fails at validate, naming the problem and bad values."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from pipelines.stages.validate import class_balance, leakage_table
from tests.conftest import Project


def digits_frame() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    frame.columns = [*(f"pixel_{i}" for i in range(64)), "label"]
    return frame


def drop_column(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["pixel_10"])


def out_of_range(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[[3, 7], "pixel_20"] = [99, 42]
    return df


def nans(df: pd.DataFrame) -> pd.DataFrame:
    df["pixel_30"] = df["pixel_30"].astype(float)
    df.loc[[5, 11, 12], "pixel_30"] = np.nan
    return df


def unknown_label(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[[0, 1], "label"] = 11
    return df


CORRUPTIONS: list[tuple[Callable[[pd.DataFrame], pd.DataFrame], list[str]]] = [
    (drop_column, ["missing columns ['pixel_10']"]),
    (
        out_of_range,
        ["raw.pixel_20: expect_column_values_to_be_between", "2 bad value(s)", "99", "42"],
    ),
    (nans, ["raw.pixel_30: expect_column_values_to_not_be_null", "3 bad value(s)"]),
    (unknown_label, ["raw.label: expect_column_values_to_be_in_set", "sample [11, 11]"]),
]


@pytest.mark.parametrize(
    ("corrupt", "expected"), CORRUPTIONS, ids=lambda c: getattr(c, "__name__", "")
)
def test_corrupted_data_fails_at_validate(
    project: Project, corrupt: Callable[[pd.DataFrame], pd.DataFrame], expected: list[str]
) -> None:
    corrupt(digits_frame()).to_csv(project.root / "data/sources/digits.csv", index=False)
    project.set_params(ingest={"source": "data/sources/digits.csv"})
    project.stages("ingest", "prepare")

    result = project.cli("validate")

    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())  # rich wraps long lines
    assert "validate failed: data validation failed" in out
    for needle in expected:
        assert needle in out, f"{needle!r} not in:\n{result.output}"
    summary = project.report("validate.json")
    assert summary["success"] is False and summary["failed"] >= 1
    html = (project.root / "data/reports/validate.html").read_text()
    assert "FAILED" in html
    # Nothing downstream runs on it, even when called by hand.
    train = project.cli("train")
    assert train.exit_code == 1
    assert "validation failed" in train.output


def test_duplicates_across_splits_are_leakage(project: Project) -> None:
    frame = digits_frame()
    leaked = pd.concat([frame, frame.iloc[:40]], ignore_index=True)  # 40 repeated images
    leaked.to_csv(project.root / "data/sources/digits.csv", index=False)
    project.set_params(ingest={"source": "data/sources/digits.csv"}, prepare={"dedupe": False})
    project.stages("ingest", "prepare")

    result = project.cli("validate")

    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "leakage.row_hash: expect_column_values_to_be_unique" in out
    assert "appear in more than one split" in out


def test_class_imbalance_is_reported(project: Project) -> None:
    frame = digits_frame()
    skewed = pd.concat([frame[frame.label != 7], frame[frame.label == 7].head(20)])
    skewed.to_csv(project.root / "data/sources/digits.csv", index=False)
    project.set_params(ingest={"source": "data/sources/digits.csv"})
    project.stages("ingest", "prepare")
    result = project.cli("validate")
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert "class_balance.share" in out
    assert "'7'" in out  # the under-represented label is named


def test_clean_data_passes(project: Project) -> None:
    project.stages("ingest", "prepare", "validate")
    summary = project.report("validate.json")
    assert summary == {**summary, "success": True, "failed": 0}
    assert summary["evaluated"] > 190  # 3 per pixel + table-level + suite + splits
    assert summary["rows"]["raw"] == 1797


def test_user_suite_is_applied(project: Project) -> None:
    suite = project.root / "data/expectations/digits.json"
    suite.write_text(
        '{"name": "x", "expectations": [{"type": "expect_column_mean_to_be_between",'
        ' "kwargs": {"column": "pixel_36", "min_value": 100, "max_value": 200}}]}'
    )
    project.stages("ingest", "prepare")
    result = project.cli("validate")
    assert result.exit_code == 1
    assert "raw.pixel_36: expect_column_mean_to_be_between" in " ".join(result.output.split())


def test_class_balance_and_leakage_tables() -> None:
    frame = pd.DataFrame({"a": [1, 2, 3, 4], "label": [0, 0, 0, 1]})
    from pipelines.config import Data

    data = Data(features=["a"], labels=[0, 1, 2])
    balance = class_balance(frame, data)
    assert balance["share"].tolist() == [0.75, 0.25, 0.0]
    assert balance.index.tolist() == ["0", "1", "2"]

    splits = {"train": frame.iloc[:3], "test": pd.DataFrame({"a": [3, 3, 9], "label": [0, 0, 1]})}
    table = leakage_table(splits, data)
    # "3" is in both splits (once after within-split dedupe): exactly one repeated hash
    assert table["row_hash"].duplicated().sum() == 1
    assert table.index[table["row_hash"].duplicated(keep=False)].tolist() == ["train:2", "test:0"]


def test_a_missing_column_is_named_not_an_internal_error() -> None:
    """Every expectation on a column the table lacks says so (GX's own message for
    expect_column_values_to_be_in_type_list was "list index out of range")."""
    from pipelines import validation
    from pipelines.config import Data, Validate
    from pipelines.stages.validate import describe, raw_expectations

    data = Data(target="species", features=["a", "b"], labels=["x", "y"], feature_range=(0, 10))
    raw = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "species": ["x", "y", "x", "y"]})
    suite = [
        {
            "type": "expect_column_mean_to_be_between",
            "kwargs": {"column": "b", "min_value": 0, "max_value": 5},
        }
    ]
    expectations = raw_expectations(Validate(min_rows=1), data) + suite

    checks = validation.validate({"raw": (raw, expectations)})

    assert len(checks) == len(expectations)  # one check per expectation, still
    on_b = [c for c in checks if c.column == "b"]
    assert len(on_b) == 4 and not any(c.success for c in on_b)
    messages = [describe(c, data) for c in checks if not c.success]
    assert "list index out of range" not in " ".join(messages)
    for c in on_b:
        assert describe(c, data) == f"raw.b: {c.expectation}: column 'b' is not in the table"
    assert any("missing columns ['b']" in m for m in messages)
    # The columns that are there are still checked.
    assert all(c.success for c in checks if c.column in {"a", "species"})
