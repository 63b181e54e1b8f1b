"""register and the registry's truth: the alias names this commit's model, and a model
with another contract (features, classes) is never a new version of the old name.

Real stages, driven through the CLI, on the small wine dataset (logistic regression:
seconds), with the project's embedded MLflow store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from pipelines.stages.register import schema_difference
from tests.conftest import REPO, Project

WINE = REPO / "pipelines/examples/wine.params.yaml"
NAME = "wine-classifier"
STAGES = ("ingest", "prepare", "validate", "train", "export", "optimize", "evaluate")


def schema(features: list[str], classes: list[Any]) -> dict[str, Any]:
    return {"target": "y", "classes": classes, "features": [{"name": f} for f in features]}


@pytest.mark.parametrize(
    ("registered", "candidate", "expected"),
    [
        (schema(["a", "b"], [0, 1]), schema(["a", "b"], [0, 1]), []),
        # JSON/YAML round trips may turn 1 into "1": the same class.
        (schema(["a", "b"], [0, 1]), schema(["a", "b"], ["0", "1"]), []),
        (
            schema(["a", "b", "c"], [0, 1]),
            schema(["a", "d"], [0, 1]),
            [
                "features: 3 registered, 2 now",
                "features removed (2): b, c",
                "features added (1): d",
            ],
        ),
        (
            schema(["a", "b"], [0, 1]),
            schema(["b", "a"], [0, 1]),
            ["features reordered: position 0 was a, is b"],
        ),
        (
            schema(["a"], list(range(10))),
            schema(["a"], [0, 1]),
            ["classes: 0, 1, 2, 3, 4, 5, 6, 7, ... 2 more registered; 0, 1 now"],
        ),
    ],
    ids=["same", "same-classes-as-text", "added-removed", "reordered", "classes"],
)
def test_schema_difference(
    registered: dict[str, Any], candidate: dict[str, Any], expected: list[str]
) -> None:
    assert schema_difference(registered, candidate) == expected


@pytest.fixture
def wine(e2e_tier: None, make_project: Callable[..., Project]) -> Project:
    """A wine project, run up to evaluate (no champion yet)."""
    project = make_project(WINE)
    project.stages("champion", *STAGES)
    return project


def test_reregistering_a_registered_model_makes_it_the_challenger_again(
    wine: Project, caplog: pytest.LogCaptureFixture
) -> None:
    registry = wine.registry()
    wine.stages("register")
    served = wine.root / "data/models/optimized/model.onnx"
    first = served.read_bytes()

    # Another model (weaker regularization) becomes v2 and the challenger.
    wine.set_params(train={"logreg": {"C": 0.05, "max_iter": 2000}})
    wine.stages("train", "export", "optimize", "evaluate", "register")
    assert registry.by_alias(NAME, "challenger").version == "2"

    # Back to the first commit's model (as `git checkout` + `dvc checkout` would).
    served.write_bytes(first)
    caplog.clear()
    result = wine.cli("register")

    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "already registered wine-classifier v1 (@challenger)" in out
    assert "@challenger of wine-classifier moved from v2 back to v1" in caplog.text
    assert registry.by_alias(NAME, "challenger").version == "1"
    assert [v.version for v in registry.versions(NAME)] == ["1", "2"]  # nothing new

    caplog.clear()
    again = wine.cli("register")  # already where it should be: no move, no line
    assert again.exit_code == 0 and "moved" not in caplog.text


def test_a_model_with_another_schema_is_refused_under_the_same_name(wine: Project) -> None:
    registry = wine.registry()
    wine.stages("register")

    # Two cultivars only, two measurements dropped, one new: another contract.
    from sklearn.datasets import load_wine

    frame = load_wine(as_frame=True).frame.rename(
        columns={
            "target": "cultivar",
            "od280/od315_of_diluted_wines": "od280_od315_of_diluted_wines",
        }
    )
    frame = frame[frame["cultivar"] < 2].drop(columns=["magnesium", "proline"])
    frame["hue_ratio"] = frame["hue"] / frame["color_intensity"]
    frame.to_csv(wine.root / "data/sources/wine2.csv", index=False)
    features = [c for c in frame.columns if c != "cultivar"]
    params = wine.params()
    params["data"].update(features=features, labels=[0, 1], ranges={})
    wine.params_path.write_text(yaml.safe_dump(params))
    wine.set_params(
        ingest={"source": "data/sources/wine2.csv"},
        validate={"min_rows": 100, "class_share": [0.2, 0.8]},
    )
    wine.stages(*STAGES)
    served = wine.root / "data/models/optimized/model.onnx"

    refused = wine.cli("register")

    assert refused.exit_code == 1, refused.output
    out = " ".join(refused.output.split())
    assert "refusing to register this model as wine-classifier" in out
    assert "schema differs from wine-classifier v1's" in out
    assert "features removed (2): magnesium, proline" in out
    assert "features added (1): hue_ratio" in out
    assert "classes: 0, 1, 2 registered; 0, 1 now" in out
    assert "register.model_name" in out
    assert [v.version for v in registry.versions(NAME)] == ["1"]  # nothing was registered
    assert registry.by_alias(NAME, "challenger").version == "1"

    # Under a name of its own, it registers.
    wine.set_params(register={"model_name": "wine-two-cultivars"})
    accepted = wine.cli("register")
    assert accepted.exit_code == 0, accepted.output
    assert "registered wine-two-cultivars v1" in accepted.output
    (version,) = registry.versions("wine-two-cultivars")
    from core.files import sha256

    assert version.tags["onnx.sha256"] == sha256(served)
