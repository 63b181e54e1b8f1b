"""scikit-learn baselines: standardized logistic regression, or gradient boosting.

Exported with skl2onnx, zipmap off, so ONNX returns plain ``label`` and
``probabilities`` tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np

from pipelines.config import Train
from pipelines.models import INPUT_NAME, EpochCallback, Fitted


class Adapter:
    FILE = "model.joblib"

    def __init__(self, name: str) -> None:
        self.name = name

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
    ) -> Fitted:
        from sklearn.ensemble import GradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.name == "logreg":
            clf: Any = LogisticRegression(
                C=cfg.logreg.C, max_iter=cfg.logreg.max_iter, random_state=seed
            )
        else:
            g = cfg.gboost
            clf = GradientBoostingClassifier(
                n_estimators=g.n_estimators,
                max_depth=g.max_depth,
                learning_rate=g.learning_rate,
                random_state=seed,
            )
        model = make_pipeline(StandardScaler(), clf)
        # The weight goes to the classifier's loss; the scaler's statistics stay unweighted.
        weights = (
            {} if sample_weight is None else {f"{model.steps[-1][0]}__sample_weight": sample_weight}
        )
        model.fit(x_train, y_train, **weights)
        missing = set(range(n_classes)) - set(model.classes_.tolist())
        if missing:
            # predict_proba would have fewer columns than the schema's classes.
            from core.errors import TrainingError

            raise TrainingError(f"classes {sorted(missing)} have no training rows")
        return Fitted(model, [], None, _n_params(clf))

    def predict_proba(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_proba(x.astype(np.float32)), dtype=np.float32)

    def save(self, model: Any, path: Path) -> None:
        joblib.dump(model, path)

    def load(self, path: Path) -> Any:
        return joblib.load(path)

    def export_onnx(self, model: Any, n_features: int, path: Path, opset: int) -> None:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        clf = model.steps[-1][1]
        onx = convert_sklearn(
            model,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            options={id(clf): {"zipmap": False}},
            target_opset={"": opset, "ai.onnx.ml": 3},
        )
        path.write_bytes(onx.SerializeToString())


def _n_params(clf: Any) -> int:
    if hasattr(clf, "coef_"):
        return int(clf.coef_.size + clf.intercept_.size)
    if hasattr(clf, "estimators_"):
        return int(sum(t.tree_.node_count for t in clf.estimators_.ravel()))
    return 0
