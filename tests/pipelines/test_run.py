"""`modelyard run` checks the files params name before DVC runs anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from pipelines import config
from pipelines.run import check_inputs
from tests.conftest import REPO


def params(**sections: dict[str, str]) -> config.Params:
    base = config.load(REPO / "params.yaml").model_dump(by_alias=True)
    for name, values in sections.items():
        base[name] = {**base[name], **values}
    return config.Params.model_validate(base)


def test_the_shipped_params_name_files_that_exist() -> None:
    check_inputs(params(), REPO)


def test_a_missing_suite_and_source_are_named_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "data/sources").mkdir(parents=True)
    p = params(
        validate={"suite": "data/expectations/mine.json"},
        ingest={"source": "data/sources/mine.csv"},
    )
    with pytest.raises(ConfigError) as missing:
        check_inputs(p, tmp_path)
    message = str(missing.value)
    assert "validate.suite: data/expectations/mine.json does not exist" in message
    assert "modelyard init --source data/sources/FILE --target COLUMN" in message
    assert "ingest.source: data/sources/mine.csv does not exist" in message
    assert missing.value.exit_code == 2
