"""`modelyard run` checks the files params name before DVC runs anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from pipelines import config, sources
from pipelines.run import check_inputs
from tests.conftest import REPO


def params(**sections: dict[str, str]) -> config.Params:
    base = config.load(REPO / "params.yaml").model_dump(by_alias=True)
    for name, values in sections.items():
        base[name] = {**base[name], **values}
    return config.Params.model_validate(base)


def test_the_shipped_params_name_files_that_exist() -> None:
    shipped = params()
    assert (REPO / shipped.validate_.suite).is_file(), shipped.validate_.suite
    source = shipped.ingest.source
    assert sources.is_bundled(source) or (REPO / source).is_file(), source
    check_inputs(shipped, REPO)  # and the check agrees: it raises ConfigError otherwise


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
