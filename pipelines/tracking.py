"""MLflow adapter for runs and logging: the only pipelines module that imports mlflow.

One MLflow run per pipeline execution: ``train`` starts it and records its id next
to the native model; ``export``, ``evaluate`` and ``register`` resume it.

Where MLflow lives is read here and nowhere else: ``MLFLOW_TRACKING_URI`` if set (a
team server), else the embedded SQLite store in ``<project>/.modelyard/``. Tracking and
the registry always use the same URI, and the same credentials (MLflow's client reads
``MLFLOW_TRACKING_USERNAME``/``PASSWORD``; the DVC stages inherit them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core import settings
from core.errors import ConfigError, RegistryError

log = logging.getLogger(__name__)

STORE_DIR = ".modelyard"


def embedded_uri(root: Path) -> str:
    return f"sqlite:///{(root / STORE_DIR).resolve()}/mlflow.db"


def tracking_uri(root: Path) -> str:
    """The MLflow tracking (and registry) URI for a project rooted at ``root``."""
    return settings.current().mlflow_tracking_uri or embedded_uri(root)


def on_server(root: Path) -> bool:
    """Whether runs go to an MLflow server (a team's, with its users) rather than a file
    store of this project: a run must then be on that server to count as evidence."""
    return tracking_uri(root).startswith(("http://", "https://"))


def artifact_root(root: Path) -> str | None:
    """Where the embedded store keeps artifacts (None: the server decides).

    Compared by value, because ``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI.
    """
    if tracking_uri(root) != embedded_uri(root):
        return None
    return (root / STORE_DIR / "artifacts").resolve().as_uri()


def configure(root: Path) -> str:
    """Point mlflow at this project's store (creating the local folder if embedded)."""
    import mlflow

    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        (root / STORE_DIR).mkdir(exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str, root: Path) -> str:
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    return str(mlflow.create_experiment(name, artifact_location=artifact_root(root)))


@contextlib.contextmanager
def new_run(experiment: str, root: Path, run_name: str) -> Iterator[str]:
    import mlflow

    experiment_id = ensure_experiment(experiment, root)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        yield str(run.info.run_id)


@contextlib.contextmanager
def child_run(parent_id: str, run_name: str) -> Iterator[str]:
    """A run under ``parent_id`` (the MLflow UI nests it there), in the parent's
    experiment; any process may start one, the parent need not be active."""
    import mlflow

    parent = mlflow.get_run(parent_id)
    with mlflow.start_run(
        experiment_id=parent.info.experiment_id, run_name=run_name, parent_run_id=parent_id
    ) as run:
        yield str(run.info.run_id)


def run_exists(run_id: str) -> bool:
    """Whether the store holds the run. Only "does not exist" is False: a store that
    cannot be read (auth, 5xx, network) raises RegistryError."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise _unreadable(run_id, exc) from exc
    return True


def run_in_experiment(run_id: str, experiment: str) -> bool:
    """Whether ``experiment`` holds the run. Searched within the experiment: a team server
    (basic-auth) answers 403, not "does not exist", for the id of a run it lacks. A store
    that cannot be read raises RegistryError."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            return False
        runs = mlflow.MlflowClient().search_runs(
            [found.experiment_id], filter_string=f"attributes.run_id = '{run_id}'", max_results=1
        )
    except MlflowException as exc:
        raise _unreadable(run_id, exc) from exc
    return len(runs) == 1


@contextlib.contextmanager
def resume(run_id: str) -> Iterator[str]:
    """Re-open the pipeline's run; a clear error if the store no longer has it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise _unreadable(run_id, exc) from exc
        raise ConfigError(
            f"MLflow run {run_id} (recorded by `train`) is not in {mlflow.get_tracking_uri()}. "
            "The store was reset or switched: re-run from training with `dvc repro -f train`."
        ) from exc
    with mlflow.start_run(run_id=run_id) as run:
        yield str(run.info.run_id)


def _unreadable(run_id: str, exc: Exception) -> RegistryError:
    import mlflow

    return RegistryError(
        f"cannot read MLflow run {run_id} at {mlflow.get_tracking_uri()}: {exc}. Check "
        "MLFLOW_TRACKING_URI, that the server is up, and the credentials."
    )


def log_params(params: Mapping[str, Any], prefix: str = "") -> None:
    import mlflow

    mlflow.log_params({f"{prefix}{k}": v for k, v in _flatten(params).items()})


def log_metrics(metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
    import mlflow

    clean = {f"{prefix}{k}": float(v) for k, v in _flatten(metrics).items() if _is_number(v)}
    mlflow.log_metrics(clean, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_dict(obj: Mapping[str, Any], artifact_file: str) -> None:
    import mlflow

    mlflow.log_dict(dict(obj), artifact_file)


def log_onnx_model(
    onnx_path: Path, example: np.ndarray, metadata: dict[str, Any]
) -> tuple[str, str]:
    """Log the ONNX file as the run's model; return (model_uri, model_id).

    One self-contained file (no external data), CPU provider only, with a signature
    and an input example, and ``metadata`` (the feature schema) in its MLmodel.
    """
    import mlflow
    import onnx
    from mlflow.models import infer_signature

    model = onnx.load(str(onnx_path))
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: example})
    names = [o.name for o in session.get_outputs()]
    signature = infer_signature(example, dict(zip(names, outputs, strict=True)))
    info = mlflow.onnx.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example,
        save_as_external_data=False,
        onnx_execution_providers=["CPUExecutionProvider"],
        metadata=metadata,
    )
    return str(info.model_uri), str(info.model_id)


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
