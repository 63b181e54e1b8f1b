"""Model families, chosen by ``train.model``.

Every family has the same contract (see ``Family``): fit on encoded labels 0..C-1
(optionally with a per-row ``sample_weight`` in the loss: production rows weigh
``train.production_weight``), predict class probabilities, save/load the native model, and export ONNX with one
float32 input ``features`` [batch, n_features] and an output ``probabilities``
[batch, n_classes]. Scaling is baked into the model, so the ONNX file takes raw
feature values: serving needs nothing but the file and the schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from pipelines.config import Train

INPUT_NAME = "features"
OUTPUT_NAME = "probabilities"

EpochCallback = Callable[["Epoch"], None]


@dataclass(frozen=True)
class Epoch:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    val_accuracy: float


@dataclass
class Fitted:
    model: Any
    history: list[Epoch] = field(default_factory=list)
    best_epoch: int | None = None
    params: int = 0


class Family(Protocol):
    FILE: str

    def fit(
        self,
        cfg: Train,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        n_classes: int,
        seed: int,
        on_epoch: EpochCallback | None,
        *,
        sample_weight: np.ndarray | None = None,
    ) -> Fitted: ...

    def predict_proba(self, model: Any, x: np.ndarray) -> np.ndarray: ...

    def save(self, model: Any, path: Path) -> None: ...

    def load(self, path: Path) -> Any: ...

    def export_onnx(self, model: Any, n_features: int, path: Path, opset: int) -> None: ...


def strip_debug_info(path: Path) -> None:
    """Rewrite the ONNX file at ``path`` without the exporter's debugging aids, so the
    same model gives the same bytes wherever the project and the venv live.

    torch's dynamo exporter writes, on every node, the Python stack trace that made it
    (absolute paths of this checkout and of the venv's site-packages), the FX node and
    module hierarchy, plus graph-level notes naming shape symbols; skl2onnx and the
    quantizer write doc strings. None of it is read by ONNX Runtime: only ``doc_string``
    and ``metadata_props`` fields are cleared, in the graph, its nodes (and subgraphs),
    values, initializers and functions. Weights, operators, names and opsets are untouched.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    _strip(model)
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString(deterministic=True))


def _strip(message: Any) -> None:
    """Clear ``doc_string`` and ``metadata_props`` in ``message`` and every message below it."""
    for fd, value in message.ListFields():
        if fd.name in ("doc_string", "metadata_props"):
            message.ClearField(fd.name)
        elif fd.message_type is not None:
            for item in value if fd.is_repeated else [value]:
                _strip(item)


def family(name: str) -> Family:
    """The module implementing ``train.model`` (torch or scikit-learn, imported lazily)."""
    module: ModuleType
    if name in {"cnn", "mlp"}:
        from pipelines.models import torch_nets as module
    elif name in {"logreg", "gboost"}:
        from pipelines.models import sklearn_models as module
    else:
        raise ValueError(f"unknown model family {name!r}")
    adapter: Family = module.Adapter(name)
    return adapter


def read_meta(native_dir: Path) -> dict[str, Any]:
    """``meta.json`` of the trained model (family, file, MLflow run id), without loading it."""
    from core import files
    from core.errors import ModelyardError

    try:
        return dict(files.read_json(native_dir / "meta.json"))
    except (OSError, ValueError) as exc:
        raise ModelyardError(
            f"cannot read {native_dir / 'meta.json'}: {exc}. Run `modelyard train` first."
        ) from exc


def load_native(native_dir: Path) -> tuple[Family, Any, dict[str, Any]]:
    """The trained model in ``native_dir``: (family adapter, model, meta.json)."""
    from core.errors import ModelyardError

    meta = read_meta(native_dir)
    try:
        adapter = family(meta["family"])
        return adapter, adapter.load(native_dir / meta["file"]), meta
    except (OSError, ValueError, KeyError) as exc:
        raise ModelyardError(
            f"cannot load the trained model from {native_dir}: {exc}. Run `modelyard train` first."
        ) from exc
