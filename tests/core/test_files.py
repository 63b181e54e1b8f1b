"""core.files: a metrics file takes numbers and booleans only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core import files


def test_write_metrics_takes_nested_numbers_and_booleans(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    metrics = {"accuracy": 0.9, "passed": True, "rows": {"train": np.int64(7), "val": 2}}
    files.write_metrics(path, metrics)
    assert json.loads(path.read_text()) == {
        "accuracy": 0.9,
        "passed": True,
        "rows": {"train": 7, "val": 2},
    }


@pytest.mark.parametrize(
    ("metrics", "key"),
    [
        ({"chosen": "fp32"}, "chosen"),
        ({"cpu": {"flags": ["avx2"]}}, "cpu.flags"),
        ({"champion": {"version": None}}, "champion.version"),
    ],
)
def test_write_metrics_refuses_text_and_lists(
    tmp_path: Path, metrics: dict[str, object], key: str
) -> None:
    path = tmp_path / "m.json"
    with pytest.raises(ValueError, match=rf"m.json: {key} = .* is not a number"):
        files.write_metrics(path, metrics)
    assert not path.exists()
