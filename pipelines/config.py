"""Typed view of ``params.yaml``: the only module that reads it.

Every section is a frozen pydantic model with ``extra="forbid"``, so a typo fails
loudly with the key's path. One section per stage (stage = module = CLI command =
section), plus the shared ``paths``, ``data`` and ``seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import ConfigError

Label = int | str


SPLITS = ("train", "val", "test")  # what prepare writes, in paths.prepared
# The second test set: the held-out slice of production labels (prepare writes it, empty
# when no production rows train). The base "test" split never changes with them.
PRODUCTION_TEST = "test_production"
# What `modelyard harvest` writes beside the features and the label, one row per
# prediction (column -> dtype): where the label came from. Ingest, validate, prepare and
# harvest share it; prepare keeps them on the production test split.
PROVENANCE: dict[str, str] = {
    "prediction_id": "str",
    "model": "str",
    "prediction": "str",
    "predicted_at": "float64",
    "labelled_at": "float64",
    "log_file": "str",
    "harvested_at": "str",
}


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Paths(Section):
    """Every file the stages exchange. dvc.yaml interpolates the same keys."""

    sources: Path = Path("data/sources")
    # `modelyard harvest`'s output: production labels joined to their logged features
    # (labelled.parquet, rejected.parquet, harvest.json; the Parquet files DVC-tracked).
    production: Path = Path("data/production")
    raw: Path = Path("data/raw/dataset.csv")
    # ingest's copy of the harvested rows it trains on (ingest.production), beside raw.
    raw_production: Path = Path("data/raw/production.parquet")
    prepared: Path = Path("data/prepared")
    reports: Path = Path("data/reports")
    native: Path = Path("data/models/native")
    onnx: Path = Path("data/models/model.onnx")  # the exported FP32 model (the reference)
    optimized: Path = Path("data/models/optimized")  # model.onnx (the chosen variant), variants/

    # Files inside the folders above; one place to name them.
    def split(self, name: str) -> Path:
        return self.prepared / f"{name}.parquet"

    @property
    def schema_file(self) -> Path:
        return self.prepared / "schema.json"

    def report(self, name: str) -> Path:
        return self.reports / name

    @property
    def served_model(self) -> Path:
        """What evaluate scores and register registers: optimize's choice."""
        return self.optimized / "model.onnx"


class FeaturePattern(Section):
    """A compact way to name many columns: ``prefix`` + 0..count-1."""

    prefix: str
    count: Annotated[int, Field(gt=0)]

    def names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.count)]


class Data(Section):
    """The dataset's contract: what a valid table looks like."""

    target: str = "label"
    features: list[str] | FeaturePattern
    labels: Annotated[list[Label], Field(min_length=2)]
    # Bounds every feature must stay within (None: unchecked), and per-column overrides.
    feature_range: tuple[float, float] | None = None
    ranges: dict[str, tuple[float, float]] = Field(default_factory=dict)

    @property
    def feature_names(self) -> list[str]:
        if isinstance(self.features, FeaturePattern):
            return self.features.names()
        return list(self.features)

    def range_for(self, column: str) -> tuple[float, float] | None:
        return self.ranges.get(column, self.feature_range)

    @model_validator(mode="after")
    def _check(self) -> Data:
        names = self.feature_names
        if len(set(names)) != len(names):
            raise ValueError("data.features has duplicate names")
        if self.target in names:
            raise ValueError(f"data.target {self.target!r} is also listed as a feature")
        unknown = set(self.ranges) - set(names)
        if unknown:
            raise ValueError(f"data.ranges names columns that are not features: {sorted(unknown)}")
        for col, (lo, hi) in {**self.ranges, "feature_range": self.feature_range or (0, 0)}.items():
            if lo > hi:
                raise ValueError(f"range for {col} has min > max: [{lo}, {hi}]")
        if len(set(map(str, self.labels))) != len(self.labels):
            raise ValueError("data.labels has duplicates")
        return self


class ProductionSource(Section):
    """Harvested production labels as a second training source (`modelyard harvest`)."""

    enabled: bool = True
    # Relative to the project root; a missing file means no production rows (logged).
    path: Path = Path("data/production/labelled.parquet")
    # Only rows labelled within this many days of the newest label (None: all). Counted
    # from the newest label, not from today, so a re-run reproduces the same rows.
    last_days: Annotated[float, Field(gt=0)] | None = None


class Ingest(Section):
    # "sklearn:<name>" for a dataset scikit-learn bundles, else a CSV/Parquet path
    # (put it under paths.sources and track it with `dvc add`).
    source: str = "sklearn:digits"
    production: ProductionSource = ProductionSource()


class Prepare(Section):
    test_size: Annotated[float, Field(gt=0, lt=1)] = 0.2
    val_size: Annotated[float, Field(gt=0, lt=1)] = 0.1
    # Drop rows whose features repeat an earlier row, so no input lands in two splits.
    dedupe: bool = True
    # Production rows: a share held out as the second test set, a share for validation,
    # the rest trains. Assigned by a hash of the prediction id, so a row keeps its split
    # as more labels arrive, and the base test split never changes.
    production_test_size: Annotated[float, Field(gt=0, lt=1)] = 0.3
    production_val_size: Annotated[float, Field(ge=0, lt=1)] = 0.1

    @model_validator(mode="after")
    def _check(self) -> Prepare:
        if self.test_size + self.val_size >= 0.9:
            raise ValueError("prepare.test_size + prepare.val_size leaves under 10% to train")
        return self


class Validate(Section):
    min_rows: Annotated[int, Field(ge=1)] = 100
    max_rows: Annotated[int, Field(ge=1)] = 10_000_000
    # Each class's share of the rows must lie in [min, max].
    class_share: tuple[float, float] = (0.0, 1.0)
    leakage: bool = True
    # The checked-in, user-editable GX suite, applied to the raw table.
    suite: Path = Path("data/expectations/digits.json")
    sample_size: Annotated[int, Field(ge=1, le=100)] = 5


class CNN(Section):
    image_shape: tuple[int, int] = (8, 8)
    channels: tuple[int, int] = (16, 32)
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1


class MLP(Section):
    hidden: Annotated[list[int], Field(min_length=1)] = [128, 64]
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1


class LogReg(Section):
    C: Annotated[float, Field(gt=0)] = 1.0
    max_iter: Annotated[int, Field(gt=0)] = 2000


class GBoost(Section):
    n_estimators: Annotated[int, Field(gt=0)] = 100
    max_depth: Annotated[int, Field(gt=0)] = 3
    learning_rate: Annotated[float, Field(gt=0)] = 0.1


class Train(Section):
    model: Literal["cnn", "mlp", "logreg", "gboost"] = "cnn"
    # torch families
    epochs: Annotated[int, Field(ge=1)] = 60
    batch_size: Annotated[int, Field(ge=1)] = 64
    lr: Annotated[float, Field(gt=0)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    patience: Annotated[int, Field(ge=1)] = 8
    threads: Annotated[int, Field(ge=1)] = 1
    # Weight of a production row against a base row in the training loss.
    production_weight: Annotated[float, Field(gt=0)] = 1.0
    cnn: CNN = CNN()
    mlp: MLP = MLP()
    logreg: LogReg = LogReg()
    gboost: GBoost = GBoost()


class Export(Section):
    opset: Annotated[int, Field(ge=18)] = 18
    # Max |p_native - p_onnx| allowed over the test set; argmax must match exactly.
    parity_tolerance: Annotated[float, Field(ge=0)] = 1e-4


Variant = Literal["fp32", "fp32-ort", "int8-dynamic", "int8-static", "pruned", "pruned-int8-static"]


class Optimize(Section):
    variants: list[Variant] = [
        "fp32",
        "fp32-ort",
        "int8-dynamic",
        "int8-static",
        "pruned",
        "pruned-int8-static",
    ]
    # The selection: lowest value of this metric within the accuracy budget.
    metric: Literal[
        "p99_ms_batch1",
        "p50_ms_batch1",
        "p99_ms_batch256",
        "p50_ms_batch256",
        "neg_rows_per_s",
        "size_bytes",
    ] = "p50_ms_batch1"
    accuracy_budget: Annotated[float, Field(ge=0)] = 0.5  # max drop vs fp32, accuracy points
    tie_tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.02  # relative; ties -> smaller file
    threads: Annotated[int, Field(ge=1)] = 1
    runs: Annotated[int, Field(ge=20)] = 2000  # timed calls at batch 1 (batch 256: a quarter)
    rounds: Annotated[int, Field(ge=1)] = 10  # interleaved rounds the runs are split into
    warmup: Annotated[int, Field(ge=1)] = 50
    calibration_rows: Annotated[int, Field(ge=1)] = 256  # static int8: sample of the train split
    graph_level: Literal["basic", "extended", "all"] = "extended"
    sparsity: Annotated[float, Field(ge=0, lt=1)] = 0.5  # pruned: share of weights set to zero
    finetune_epochs: Annotated[int, Field(ge=0)] = 5


class Evaluate(Section):
    min_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.95
    min_macro_f1: Annotated[float, Field(ge=0, le=1)] = 0.95
    max_p99_ms: Annotated[float, Field(gt=0)] = 5.0  # batch-1 p99 CPU time per call (ORT)
    min_class_recall: Annotated[float, Field(ge=0, le=1)] = 0.85
    # Gaussian noise with std = noise_scale * (feature std on train); predictions must stay.
    noise_scale: Annotated[float, Field(ge=0)] = 0.05
    min_noise_invariance: Annotated[float, Field(ge=0, le=1)] = 0.97
    # Challenger vs champion: fail if worse and McNemar's exact p-value < alpha.
    champion_alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05
    latency_runs: Annotated[int, Field(ge=10)] = 300
    threads: Annotated[int, Field(ge=1)] = 1
    # Production test rows needed before the production gates and comparison apply.
    min_production_rows: Annotated[int, Field(ge=1)] = 30


class Register(Section):
    model_name: str = "digits-classifier"
    alias: str = "challenger"
    # The registered model whose `champion` evaluate compares with (the champion pointer,
    # `modelyard champion`). Unset: model_name. Team mode: the production model
    # (team.yaml: models.production), where only the gate moves `champion`.
    champion_model: str = ""

    @model_validator(mode="before")
    @classmethod
    def _champion_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("champion_model"):
            name = data.get("model_name") or cls.model_fields["model_name"].default
            return {**data, "champion_model": name}
        return data


class Tracking(Section):
    experiment: str = "modelyard"


class Harvest(Section):
    """`modelyard harvest`: feedback labels joined to their logged predictions."""

    # Predictions not yet labelled are remembered this long (features included), so a
    # label that arrives after log rotation deleted its prediction's file still joins.
    pending_days: Annotated[float, Field(gt=0)] = 30
    dvc_add: bool = True  # `dvc add` the written Parquet files when the project uses DVC
    # A pod's folder of the shared log whose files were all read to their end and none
    # written for this long is a dead pod's: removed after the harvest (never before).
    dead_folder_days: Annotated[float, Field(gt=0)] = 7


class Monitor(Section):
    """The drift job (`modelyard monitor run`) over the inference log."""

    window: str = "24h"  # default --since: a duration (30m, 24h, 7d) or an ISO time
    min_rows: Annotated[int, Field(ge=1)] = 200  # fewer predictions: "not enough data"
    # Rows of the window the drift tests use (a seeded uniform sample); the counts and
    # the data-quality checks see every row.
    sample_rows: Annotated[int, Field(ge=100)] = 20_000
    # Dataset drift when at least this share of the features drifted (Evidently).
    drift_share: Annotated[float, Field(gt=0, le=1)] = 0.3
    method: str | None = None  # Evidently stattest for every feature; None: its defaults
    threshold: float | None = None  # that test's threshold; None: its default
    # The predicted class's drift test. Jensen-Shannon distance (what Evidently picks above
    # 1000 reference rows) at every size: its p-value tests (chi-square below 1000 rows,
    # e.g. a version's few hundred production rows) raise a chance alarm in 5% of
    # unchanged windows. None: Evidently's choice by size.
    prediction_method: str | None = "jensenshannon"
    prediction_threshold: float | None = 0.1
    min_feedback: Annotated[int, Field(ge=1)] = 50  # labelled rows for classification quality
    output: Path = Path(".modelyard/monitoring")  # reports, summary.json, Evidently workspace
    project: str = "modelyard"  # Evidently UI project
    retrain: Literal["auto", "off"] = "auto"  # on drift: GitHub `retrain` dispatch, else dvc repro
    # Retrain on drift only when at least this many labelled rows arrived since the data
    # the last registered version trained on; else say so and retrain nothing.
    min_new_labels: Annotated[int, Field(ge=1)] = 1
    # Retention of runs/ and the Evidently workspace's snapshots: a run is deleted when it
    # is older than keep_days or beyond the newest keep_runs. Evidently reads every kept
    # snapshot when the workspace opens (~0.2 s each here): 48 hourly runs ~ 20 s.
    keep_days: Annotated[float, Field(gt=0)] = 30
    keep_runs: Annotated[int, Field(ge=1)] = 48


class TuneRange(Section):
    """One parameter's search space: a range (``low``..``high``, ``log`` scale, an integer
    ``step``) or a list of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None


class Tune(Section):
    """`modelyard tune`: the search space over ``train`` parameters (dotted keys, e.g.
    ``train.lr``), what to optimize (a validation metric: the test split is never read
    while tuning), the budget, and where the study lives."""

    space: dict[str, TuneRange] = {}
    objective: Literal["val_accuracy", "val_macro_f1", "val_loss"] = "val_accuracy"
    trials: Annotated[int, Field(ge=0)] = 20
    minutes: Annotated[float | None, Field(ge=0)] = None  # a time budget too (None: none)
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "none"] = "median"
    # An Optuna storage URL shared by every worker (default: SQLite in .modelyard/).
    storage: str | None = None
    study: str | None = None  # default: <tracking.experiment>-<train.model>


class Params(Section):
    seed: int = 42
    paths: Paths = Paths()
    data: Data
    ingest: Ingest = Ingest()
    prepare: Prepare = Prepare()
    validate_: Validate = Field(default=Validate(), alias="validate")
    train: Train = Train()
    export: Export = Export()
    optimize: Optimize = Optimize()
    evaluate: Evaluate = Evaluate()
    register_: Register = Field(default=Register(), alias="register")
    tracking: Tracking = Tracking()
    harvest: Harvest = Harvest()
    monitor: Monitor = Monitor()
    tune: Tune = Tune()


def load(path: Path) -> Params:
    """Read and check ``params.yaml``; raise ConfigError naming the bad key."""
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} not found: run from the project root or pass --params") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"{path} has invalid parameters:\n" + "\n".join(lines)) from exc
