"""What `modelyard build` and `serve` use when no --model is named (issue 21, item 4):
in team mode only the production model's `champion`, which only the review gate moves;
never an alias on the candidates model, which the trainer can set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.errors import RegistryError
from modelyard.serving import default_ref
from pipelines.config import Register
from registry.client import Registry


@pytest.fixture(scope="module")
def store(e2e_tier: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MLflow store (SQLite) where the trainer set `champion` on its candidates
    (MLflow runs `uname -p` on start: not the fast tier). Made once: tests copy it."""
    base = tmp_path_factory.mktemp("default-ref")
    made = Registry(f"sqlite:///{base / 'mlflow.db'}")
    folder = base / "model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"onnx")
    for name in ("candidates", "production"):
        made.ensure_model(name)
        made.create_version(name, str(folder), tags={})
    made.client.set_registered_model_alias("candidates", "champion", "1")  # the trainer
    return base / "mlflow.db"


@pytest.fixture
def registry(store: Path, tmp_path: Path) -> Registry:
    shutil.copy(store, tmp_path / "mlflow.db")
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")


TEAM = Register(model_name="candidates", champion_model="production")


def test_team_mode_without_a_production_champion_serves_nothing_by_default(
    registry: Registry,
) -> None:
    with pytest.raises(RegistryError, match="production has no @champion yet") as refused:
        default_ref(registry, TEAM)
    assert "candidates is the trainer's to set" in str(refused.value)


def test_team_mode_serves_the_production_champion(registry: Registry) -> None:
    registry.set_champion("production", "1")
    assert default_ref(registry, TEAM) == "production@champion"


def test_one_person_serves_the_candidates_champion(registry: Registry) -> None:
    assert default_ref(registry, Register(model_name="candidates")) == "candidates@champion"
