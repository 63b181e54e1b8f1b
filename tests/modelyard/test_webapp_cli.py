"""`modelyard webapp`: the usage errors it answers with exit 2 before starting anything.
(Serving is driven for real by tests/services/webapp/test_browser.py, and `webapp build`
by tests/services/webapp/test_package.py.)"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from modelyard.app import app


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {"MODELYARD_API_URL": ""}, "--api must be the model API's base URL"),
        (["--api", "localhost:3000"], {}, "got 'localhost:3000'"),
        ([], {"MODELYARD_API_URL": "ftp://models"}, "got 'ftp://models'"),
    ],
)
def test_a_missing_or_malformed_api_url_is_a_usage_error(
    args: list[str], env: dict[str, str], expected: str
) -> None:
    result = CliRunner().invoke(app, ["webapp", *args], env=env)
    assert result.exit_code == 2
    assert expected in " ".join(result.output.split())


def test_help_names_the_exit_codes() -> None:
    result = CliRunner().invoke(app, ["webapp", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Exit codes: 0 done" in result.output
    assert "webapp build" in result.output
