"""pipelines.tracking: a run that is not in the store is "missing"; a store that cannot
be read is an error (never "the training run is missing, register from a new one")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import ConfigError, RegistryError
from pipelines import tracking
from tests.conftest import free_port

MISSING_RUN = "0" * 32


@pytest.fixture
def no_retries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    yield


def use(uri: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(uri)


def test_a_run_missing_from_a_readable_store(tmp_path: Path) -> None:
    use(f"sqlite:///{tmp_path}/mlflow.db")
    assert tracking.run_exists(MISSING_RUN) is False
    with pytest.raises(ConfigError, match="is not in"), tracking.resume(MISSING_RUN):
        pass


def test_an_unreachable_store_is_an_error(no_retries: None) -> None:
    use(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RegistryError, match=f"cannot read MLflow run {MISSING_RUN}"):
        tracking.run_exists(MISSING_RUN)
    with pytest.raises(RegistryError, match="Connection refused"), tracking.resume(MISSING_RUN):
        pass
