"""registry.client over a real (embedded SQLite) MLflow registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import RegistryError
from registry.client import Registry


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path}/mlflow.db")


def test_register_find_and_alias(registry: Registry, tmp_path: Path) -> None:
    assert registry.versions("m") == []  # an unknown model is simply empty
    assert registry.by_alias("m", "challenger") is None
    assert registry.find_by_tag("m", "onnx.sha256", "abc") is None

    source = (tmp_path / "model").as_uri()
    v1 = registry.register("m", source, run_id="", tags={"onnx.sha256": "abc", "n": 1})
    v2 = registry.register("m", source, run_id="", tags={"onnx.sha256": "def"})
    assert (v1.version, v2.version) == ("1", "2")
    assert v1.tags == {"onnx.sha256": "abc", "n": "1"}

    registry.set_alias("m", "challenger", "2")
    found = registry.by_alias("m", "challenger")
    assert found is not None and found.version == "2" and found.aliases == ["challenger"]
    assert registry.find_by_tag("m", "onnx.sha256", "abc") == registry.versions("m")[0]


def test_pipeline_cannot_set_champion(registry: Registry, tmp_path: Path) -> None:
    registry.register("m", (tmp_path / "model").as_uri(), run_id="", tags={})
    with pytest.raises(RegistryError, match="review gate"):
        registry.set_alias("m", "champion", "1")
    assert registry.by_alias("m", "champion") is None
