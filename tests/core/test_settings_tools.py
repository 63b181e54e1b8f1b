"""Settings from the environment and the venv's tools, as pure functions."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from core import settings, tools
from core.errors import ConfigError


def test_settings_read_the_environment_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    monkeypatch.setenv("MODELYARD_API_KEYS", " , key-1 ,key-2")
    monkeypatch.setenv("MODELYARD_LOG_DIR", "/var/log/modelyard")
    env = settings.current()
    assert env.github_repository == "acme/models"
    assert env.github_token is not None and env.github_token.get_secret_value() == "ghp_secret"
    assert "ghp_secret" not in repr(env)  # secrets never reach a log line
    assert env.first_api_key == "key-1"
    assert env.log_dir == Path("/var/log/modelyard")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/other")
    assert settings.current().github_repository == "acme/other"  # no stale cache


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    env = settings.current()
    assert env.github_token is None
    assert env.mlflow_tracking_uri is None
    assert env.github_api_url == settings.GITHUB_API


def test_actor_prefers_the_given_name_then_ci_then_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USER", "alice")
    monkeypatch.delenv("GITHUB_ACTOR", raising=False)
    assert settings.current().actor() == "alice"
    monkeypatch.setenv("GITHUB_ACTOR", "ci-bot")
    assert settings.current().actor() == "ci-bot"
    assert settings.current().actor("carol") == "carol"


def test_tools_are_found_beside_this_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert tools.binary("dvc") == str(Path(sys.executable).parent / "dvc")
    path = tools.env()["PATH"].split(os.pathsep)
    assert path[0] == str(Path(sys.executable).parent)
    assert path[1:] == ["/usr/bin", "/bin"]
    assert tools.env({"PATH": str(Path(sys.executable).parent)})["PATH"] == str(
        Path(sys.executable).parent
    )  # already first: not added twice


def test_a_missing_tool_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match=r"no-such-tool not found .* `make setup`"):
        tools.binary("no-such-tool")
