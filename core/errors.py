"""The one exception tree of modelyard.

    ModelyardError               anything the CLI reports as a clean error (exit 1)
    ├── ConfigError              params.yaml or the environment is wrong (exit 2)
    ├── DataError                the input data cannot be read or used
    │   └── DataValidationError  the expectation suite failed
    ├── TrainingError            a model could not be trained
    ├── ExportParityError        ONNX and native predictions disagree
    ├── GateFailed               an evaluation gate failed; nothing is registered
    ├── RegistryError            the MLflow registry cannot be read, or its state is
    │   │                        missing or inconsistent
    │   ├── PromotionRefused     the review gate said no (reasons in the message)
    │   └── SchemaMismatch       a model's features/classes differ from its registered name's
    ├── DeployError              containerize / push / kubectl failed or is unavailable
    ├── ExternalServiceError     GitHub or an alert webhook refused or was unreachable
    ├── MonitoringError          the drift job cannot run (no reference, unreadable log)
    ├── PipelineFailed           `dvc repro` or `dvc push` failed (the stage said why)
    └── PortInUse                a server command cannot listen on its port

Messages say what was wrong, where, and what to do.
"""

from __future__ import annotations


class ModelyardError(Exception):
    exit_code = 1


class ConfigError(ModelyardError):
    exit_code = 2


class DataError(ModelyardError):
    """The input data cannot be read or used."""


class DataValidationError(DataError):
    """The expectation suite failed on the data."""


class TrainingError(ModelyardError):
    """A model could not be trained."""


class ExportParityError(ModelyardError):
    """ONNX and native predictions disagree."""


class GateFailed(ModelyardError):
    """An evaluation gate failed; nothing is registered."""


class RegistryError(ModelyardError):
    """The MLflow registry cannot be read, or its state is missing or inconsistent."""


class PromotionRefused(RegistryError):
    """The review gate refused to move `champion`."""


class SchemaMismatch(RegistryError):
    """A model's input features or classes differ from those registered under its name."""


class DeployError(ModelyardError):
    """Containerizing, pushing or applying a deployment failed or cannot run here."""


class ExternalServiceError(ModelyardError):
    """GitHub or an alert webhook refused a request or could not be reached."""


class MonitoringError(ModelyardError):
    """The drift job cannot run: no reference data, no log, bad window."""


class PipelineFailed(ModelyardError):
    """`dvc repro` (or `dvc push`) failed; the failing stage printed why."""


class PortInUse(ModelyardError):
    """A server command cannot listen on the port it was given."""
