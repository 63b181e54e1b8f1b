"""Every MLflow tag key modelyard writes on a registered version or a run, in one place: the
contract between the layers (register writes what the gate, the card, the build, the drift
job and the deploy side read). Each group says who writes it and who reads it; a key is a
``StrEnum`` member, so it is the plain string wherever MLflow or a dict needs one.

tests/test_layout.py fails when a product module spells one of these keys as a string
literal instead of importing it (``"git.commit"`` in two places is how the same tag came to
be defined twice). Per-item families (``data.rows.<split>``, ``gate.<name>``,
``audit.<n>``) are built from their prefix here.
"""

from __future__ import annotations

from enum import StrEnum


class LineageTag(StrEnum):
    """Where a candidate version came from: written by ``register`` (pipelines/stages/
    register.py) on the version; read by the gate (policy, evidence, cards), ``build``,
    ``deploy commit`` and the card."""

    GIT_COMMIT = "git.commit"
    GIT_DIRTY = "git.dirty"
    GIT_AUTHOR = "git.author"  # the commit's author email
    GIT_AUTHOR_NAME = "git.author_name"
    DVC_DATA_MD5 = "dvc.data_md5"
    DVC_PREPARED_MD5 = "dvc.prepared_md5"
    DVC_PARAMS_SHA256 = "dvc.params_sha256"
    DATA_SOURCE = "data.source"
    VALIDATION_SUCCESS = "validation.success"  # also on the training run (train)
    VALIDATION_EVALUATED = "validation.evaluated"
    VALIDATION_FAILED = "validation.failed"
    ONNX_SHA256 = "onnx.sha256"  # also on the gate's production copy
    ONNX_OPSET = "onnx.opset"
    MODEL_FAMILY = "model.family"
    MODEL_VARIANT = "model.variant"
    GATES_PASSED = "gates.passed"
    TRAINING_RUN_MISSING = "training.run_missing"


class DataTag(StrEnum):
    """The data a version saw: written by ``register``; read by the drift job (its
    reference) and the retrain decision (which labels are new)."""

    TEST_URI = "data.test_uri"
    REFERENCE_URI = "data.reference_uri"
    PRODUCTION_TEST_URI = "data.production_test_uri"
    PRODUCTION_ROWS = "data.production_rows"
    PRODUCTION_LABELLED_UNTIL = "data.production_labelled_until"


DATA_ROWS_PREFIX = "data.rows."  # data.rows.<split>: rows per split (register)
PRODUCTION_ROWS_PREFIX = "data.production_rows."  # data.production_rows.<split>
GATE_PREFIX = "gate."  # gate.<name>: pass | fail (register; the gate's policy reads them)


class RunTag(StrEnum):
    """On the training run: written by ``train`` and ``register``; read by the gate's
    evidence (policy)."""

    STAGE = "modelyard.stage"
    AUTHOR = "modelyard.author"  # the verified identity CI trained for (GITHUB_ACTOR)
    REGISTERED_ONNX_SHA256 = "registered.onnx_sha256"
    REGISTERED_VERSION = "registered.version"


class CopyTag(StrEnum):
    """On the gate's production copy of an approved candidate: written by the gate only;
    read by its cards and reconcile."""

    SOURCE_MODEL = "source.model"
    SOURCE_VERSION = "source.version"
    SOURCE_RUN_ID = "source.run_id"


class ApprovalTag(StrEnum):
    """The review's outcome on a production version: written by the gate (or, single-user,
    ``promote``); read by ``registry verify``, ``build``, reconcile and the webhooks."""

    RECORD = "approval.record"  # the signed fields, canonical JSON
    SIGNATURE = "approval.signature"  # ed25519:<key id>:<signature>
    REVIEWER = "approval.reviewer"
    AT = "approval.at"
    COMMENT = "approval.comment"
    MANIFEST_SHA256 = "manifest.sha256"  # the approved folder's manifest digest (signed too)


class DeployTag(StrEnum):
    """What was deployed where: written by promotion, ``deploy containerize``/``record``
    and ``record-failure``; read by reconcile, rollback and the card."""

    REQUESTED = "deploy.requested"
    IMAGE_REQUESTED = "deploy.image"
    IMAGE_AT = "deploy.at"
    VERSION = "deployed.version"
    IMAGE = "deployed.image"
    IMAGE_DIGEST = "deployed.image_digest"
    AT = "deployed.at"
    TARGET = "deployed.target"
    FAILED_ENV = "deploy.failed.env"
    FAILED_AT = "deploy.failed.at"
    FAILED_REASON = "deploy.failed.reason"


class RetrainTag(StrEnum):
    """On the drift job's run and the retraining run: written by the drift job and
    ``modelyard run`` (a retrain); read by the next drift job and the loop's report."""

    STATUS = "retrain.status"
    VERSION = "retrain.version"
    MODEL = "retrain.model"


class TuneTag(StrEnum):
    """On `modelyard tune`'s runs (the study's parent run and each trial's child run):
    written by pipelines/tune.py; read by whoever compares trials in the MLflow UI."""

    STUDY = "tune.study"
    STATE = "tune.state"  # complete | pruned | failed (a trial)
    ERROR = "tune.error"
    BEST = "tune.best"  # the best values so far, JSON (the parent)
    COMPLETE = "tune.complete"
    PRUNED = "tune.pruned"
    FAILED = "tune.failed"


ALL: tuple[type[StrEnum], ...] = (
    LineageTag,
    DataTag,
    RunTag,
    CopyTag,
    ApprovalTag,
    DeployTag,
    RetrainTag,
    TuneTag,
)
