"""`modelyard tune`: search the training parameters with Optuna, on the validation split only.

The search space is ``params.yaml: tune.space`` (dotted ``train`` keys: a range or a list of
choices). Each trial trains the family on the train split with the trial's values and is
scored on the validation split: the test split is never read here (the pipeline scores the
chosen parameters on it once, in ``evaluate``, so the test accuracy stays an unbiased
estimate instead of the best of N tries on it). Torch families report their validation
curve each epoch and the pruner stops trials below the median; scikit-learn families are
tuned without pruning.

The study lives in an Optuna storage (SQLite in ``.modelyard/`` by default, PostgreSQL for
a team): any number of workers on any machines join it (``--join``) and share one budget.
A trial is counted against the budget by its number, so two workers never run more than
``tune.trials`` between them; a worker that dies loses its current trial only (heartbeats
mark it failed and it is tried again once). The study is one MLflow parent run in
``<tracking.experiment>-tuning``, each trial a child run. Nothing is registered: the best
values go into ``params.yaml`` (a diff to commit) and through ``modelyard run``, its gates
and the review like any commit.

Only this module imports optuna.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from core.errors import ConfigError, TrainingError
from core.tagkeys import RunTag, TuneTag
from pipelines import dataset, tracking
from pipelines.config import Params, Train, TuneRange
from pipelines.models import Epoch, family

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

Direction = Literal["maximize", "minimize"]
DIRECTIONS: dict[str, Direction] = {
    "val_accuracy": "maximize",
    "val_macro_f1": "maximize",
    "val_loss": "minimize",
}
TORCH = ("cnn", "mlp")
FAMILIES = ("cnn", "mlp", "logreg", "gboost")
TORCH_ONLY = ("epochs", "batch_size", "lr", "weight_decay", "patience")
UNTUNABLE = ("model", "threads", "production_weight")
ATTRS = "modelyard"  # the study's user attribute: what it searches, and its MLflow run


@dataclass(frozen=True)
class Dimension:
    key: str  # "train.lr"
    kind: str  # float | int | categorical
    range: TuneRange


@dataclass(frozen=True)
class TrialResult:
    number: int
    state: str  # complete | pruned | failed
    value: float | None
    values: dict[str, Any]
    epochs_run: int
    run_id: str | None
    error: str = ""


@dataclass
class Outcome:
    study: str
    storage: str
    parent_run_id: str
    objective: str
    direction: str
    ran: list[TrialResult] = field(default_factory=list)  # by this worker
    best_value: float | None = None
    best_values: dict[str, Any] = field(default_factory=dict)
    complete: int = 0  # in the whole study
    pruned: int = 0
    failed: int = 0
    budget: int = 0
    pictures: list[Path] = field(default_factory=list)
    pruning_saved_epochs: int = 0  # an estimate: see saved_epochs
    epochs_run: int = 0


# -- the search space -------------------------------------------------------------------------


_MISSING = object()


def _get(tree: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def dimensions(params: Params) -> list[Dimension]:
    """The checked search space; ConfigError names the first bad entry and the fix."""
    cfg, model = params.tune, params.train.model
    if not cfg.space:
        raise ConfigError("tune.space is empty: declare at least one train parameter to search")
    if cfg.trials == 0 and not cfg.minutes:
        raise ConfigError("tune.trials is 0 and tune.minutes is not set: a budget of zero")
    if cfg.objective == "val_loss" and model not in TORCH:
        raise ConfigError(
            f"tune.objective val_loss: the {model} family reports no validation loss; use "
            "val_accuracy or val_macro_f1"
        )
    current = params.train.model_dump(mode="python")
    out = []
    for key, rng in cfg.space.items():
        where = f"tune.space.{key}"
        parts = key.split(".")
        if parts[0] != "train" or len(parts) < 2:
            raise ConfigError(f"{where}: only train parameters are tuned (train.lr, ...)")
        value = _get(current, parts[1:])
        if value is _MISSING or isinstance(value, dict):
            known = sorted(
                f"train.{k}" if not isinstance(v, dict) else f"train.{k}.*"
                for k, v in current.items()
            )
            raise ConfigError(f"{where}: no such parameter (train has {', '.join(known)})")
        if parts[1] in UNTUNABLE:
            raise ConfigError(f"{where}: not a search parameter (tune one family at a time)")
        if parts[1] in FAMILIES and parts[1] != model:
            raise ConfigError(f"{where}: train.model is {model}: this has no effect on it")
        if parts[1] in TORCH_ONLY and model not in TORCH:
            raise ConfigError(f"{where}: the {model} family does not use it")
        dim = Dimension(key, _kind(where, value, rng), rng)
        for candidate in rng.choices if rng.choices is not None else [rng.low, rng.high]:
            try:
                with_values(params.train, {key: candidate})
            except ValueError as exc:
                first = str(exc).splitlines()[-1].strip()
                raise ConfigError(
                    f"{where}: {candidate!r} is not a valid value ({first})"
                ) from None
        out.append(dim)
    return out


def _kind(where: str, value: Any, rng: TuneRange) -> str:
    if rng.choices is not None:
        if not rng.choices:
            raise ConfigError(f"{where}: choices is empty")
        if rng.low is not None or rng.high is not None:
            raise ConfigError(f"{where}: give a range (low, high) or choices, not both")
        return "categorical"
    if rng.low is None or rng.high is None:
        raise ConfigError(f"{where}: give low and high, or choices")
    if not rng.low < rng.high:
        raise ConfigError(f"{where}: empty range {rng.low:g}..{rng.high:g} (low < high)")
    if rng.log and rng.low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0")
    if isinstance(value, bool | list | tuple):
        raise ConfigError(f"{where}: {value!r} is not a number: list its values as choices")
    return "int" if isinstance(value, int) else "float"


def suggest(trial: optuna.Trial, dim: Dimension) -> Any:
    rng = dim.range
    if dim.kind == "categorical":
        assert rng.choices is not None
        if _scalars(rng.choices):
            return trial.suggest_categorical(dim.key, rng.choices)
        index = trial.suggest_categorical(dim.key, list(range(len(rng.choices))))
        return rng.choices[int(index)]  # lists (mlp.hidden) by their index
    assert rng.low is not None and rng.high is not None
    if dim.kind == "int":
        step = int(rng.step or 1)
        return trial.suggest_int(dim.key, int(rng.low), int(rng.high), step=step, log=rng.log)
    return trial.suggest_float(dim.key, rng.low, rng.high, step=rng.step, log=rng.log)


def _scalars(choices: list[Any]) -> bool:
    return all(c is None or isinstance(c, bool | int | float | str) for c in choices)


def with_values(train: Train, values: dict[str, Any]) -> Train:
    """``train`` with the dotted ``train.*`` values set (ValueError: not a valid Train)."""
    data = train.model_dump(mode="python")
    for key, value in values.items():
        *parts, last = key.split(".")[1:]
        node = data
        for part in parts:
            node = node[part]
        node[last] = value
    return Train.model_validate(data)


# -- the study ---------------------------------------------------------------------------------


def storage_url(params: Params, root: Path) -> str:
    if params.tune.storage:
        return params.tune.storage
    (root / ".modelyard").mkdir(exist_ok=True)
    return f"sqlite:///{(root / '.modelyard' / 'tune.db').resolve()}"


def _shown(url: str) -> str:
    """A storage URL without its password."""
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, credentials = head.partition("://")
    return f"{scheme}://{credentials.split(':')[0]}:***@{tail}"


def open_study(
    params: Params, root: Path, *, join: str | None
) -> tuple[optuna.Study, list[Dimension], str]:
    """The study (created, or ``join``ed), its checked space and its MLflow parent run."""
    import warnings

    import optuna
    import sqlalchemy.exc
    from optuna.exceptions import ExperimentalWarning

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by modelyard
    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeats, plots
    dims = dimensions(params) if join is None else []  # a bad space touches no storage
    url = storage_url(params, root)
    try:
        storage = optuna.storages.RDBStorage(
            url,
            heartbeat_interval=30,
            grace_period=120,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=1
            ),
        )
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError) as exc:
        raise ConfigError(f"cannot open the study storage {_shown(url)}: {exc}") from exc
    # The worker that starts a study samples from `seed`: one worker, the same trials every
    # time. A joining worker draws its own seed (the same one would propose the same
    # points), and TPE's constant liar keeps workers off the points still being tried.
    seed = params.seed if join is None else secrets.randbits(32)
    sampler: optuna.samplers.BaseSampler = (
        optuna.samplers.TPESampler(seed=seed, constant_liar=True)
        if params.tune.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3)
        if params.tune.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    base = params.train.model_dump(mode="json")
    if join is not None:
        try:
            study = optuna.load_study(
                study_name=join, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:
            raise ConfigError(
                f"no study {join!r} in {_shown(url)}: start it with `modelyard tune`"
            ) from None
        recorded = _record_of(study)
        if recorded.get("train") != base:
            differ = sorted(k for k in base if base[k] != (recorded.get("train") or {}).get(k))
            raise ConfigError(
                f"study {join!r} tunes other train parameters than this params.yaml "
                f"(differ: {', '.join(differ) or 'all'}): join from the same commit"
            )
        dims = dimensions(params.model_copy(update={"tune": _tune_of(params, recorded)}))
        return study, dims, str(recorded["parent_run_id"])
    name = params.tune.study or f"{params.tracking.experiment}-{params.train.model}"
    direction = DIRECTIONS[params.tune.objective]
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=direction,
        load_if_exists=True,
    )
    existing = study.user_attrs.get(ATTRS)
    if existing:
        if existing.get("train") != base or existing.get("space") != _space_json(params):
            raise ConfigError(
                f"study {name!r} exists with another space or other train parameters: "
                "name a new one (tune.study) or `--join` it from the commit that started it"
            )
        if existing.get("trials") != params.tune.trials:  # run again with a new budget
            study.set_user_attr(ATTRS, {**existing, "trials": params.tune.trials})
        return study, dims, str(existing["parent_run_id"])
    tracking.configure(root)
    with tracking.new_run(
        f"{params.tracking.experiment}-tuning", root, run_name=f"tune {name}"
    ) as parent_id:
        tracking.set_tags({RunTag.STAGE: "tune", TuneTag.STUDY: name})
        tracking.log_params(
            {
                "objective": params.tune.objective,
                "trials": params.tune.trials,
                "sampler": params.tune.sampler,
                "pruner": params.tune.pruner,
                "family": params.train.model,
                "space": json.dumps(_space_json(params)),
            }
        )
    study.set_user_attr(
        ATTRS,
        {
            "parent_run_id": parent_id,
            "train": base,
            "space": _space_json(params),
            "objective": params.tune.objective,
            "trials": params.tune.trials,
        },
    )
    return study, dims, parent_id


def _record_of(study: optuna.Study, wait_s: float = 60.0) -> dict[str, Any]:
    """What the study's first worker recorded (space, budget, MLflow run). It writes that
    just after creating the study, so a worker joining at once waits for it."""
    deadline = time.monotonic() + wait_s
    while True:
        recorded = study.user_attrs.get(ATTRS)  # read from the storage on each call
        if recorded:
            return dict(recorded)
        if time.monotonic() > deadline:
            raise ConfigError(
                f"study {study.study_name!r} was not started by `modelyard tune` (it records "
                "no search space): join a study modelyard started"
            )
        time.sleep(0.5)


def _space_json(params: Params) -> dict[str, Any]:
    return {k: v.model_dump(mode="json") for k, v in params.tune.space.items()}


def _tune_of(params: Params, recorded: dict[str, Any]) -> Any:
    """This worker's tune section, with the space, objective and budget the study was
    started with (a joining worker searches the study's space, not its own file's)."""
    return params.tune.model_copy(
        update={
            "space": {k: TuneRange.model_validate(v) for k, v in recorded["space"].items()},
            "objective": recorded["objective"],
            "trials": recorded["trials"],
        }
    )


# -- the search ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Data:
    x: np.ndarray
    y: np.ndarray
    vx: np.ndarray
    vy: np.ndarray
    n_classes: int
    weight: np.ndarray | None


def _data(params: Params, root: Path) -> _Data:
    """The train and validation splits (never the test split)."""
    paths = params.paths
    schema = dataset.load_schema(paths, root)
    rows = dataset.read_split(paths, "train", root)
    train = dataset.to_arrays(rows, schema)
    val = dataset.load_split(paths, "val", schema, root)
    weight = dataset.sample_weight(rows, params.train.production_weight)
    return _Data(train.x, train.y, val.x, val.y, len(schema.classes), weight)


def search(
    params: Params,
    root: Path,
    *,
    join: str | None = None,
    progress: Callable[[Outcome], None] | None = None,
) -> Outcome:
    """Run trials until the study's budget (trials, and/or minutes for this worker) is
    spent, then summarize the whole study. ConfigError for a bad space or storage."""
    import optuna

    study, dims, parent_id = open_study(params, root, join=join)
    tracking.configure(root)  # the project's store (or the team server's)
    recorded = study.user_attrs[ATTRS]
    objective, budget = str(recorded["objective"]), int(recorded["trials"])
    data = _data(params, root)
    outcome = Outcome(
        study.study_name,
        _shown(storage_url(params, root)),
        parent_id,
        objective,
        DIRECTIONS[objective],
        budget=budget,
    )
    deadline = time.monotonic() + params.tune.minutes * 60 if params.tune.minutes else None
    over: list[int] = []

    def objective_of(trial: optuna.Trial) -> float:
        if budget and _over_budget(study, trial.number, budget):
            trial.set_user_attr("over_budget", True)
            over.append(trial.number)
            raise _OverBudget(trial.number)
        result = _run_trial(params, trial, dims, data, objective, parent_id)
        outcome.ran.append(result)
        if result.state == "pruned":
            raise optuna.TrialPruned()
        if result.state == "failed":
            raise _TrialFailed(result.error)
        assert result.value is not None
        return result.value

    while deadline is None or time.monotonic() < deadline:
        if budget and _spent(study) >= budget:
            break
        # One trial per call: Study.optimize keeps the trial's heartbeat (a worker that
        # dies is noticed by the others) and records a failure instead of raising it.
        study.optimize(objective_of, n_trials=1, catch=(_OverBudget, _TrialFailed))
        if over:
            break
        _summarize(study, outcome)
        if progress:
            progress(outcome)
    _summarize(study, outcome)
    if not outcome.complete:
        first = next((r.error for r in outcome.ran if r.error), "no trial ran")
        raise TrainingError(f"no trial of study {study.study_name!r} completed: {first}")
    return outcome


class _OverBudget(Exception):
    """The trial came after the budget was taken: recorded failed (over_budget), not run."""


class _TrialFailed(Exception):
    """A combination the family could not train (recorded on the trial's run)."""


def _counted(study: optuna.Study) -> list[Any]:
    """The trials the budget counts: done (complete, pruned, failed) or still running; not
    the ones turned away because the budget was taken."""
    from optuna.trial import TrialState

    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING and not t.user_attrs.get("over_budget")
    ]


def _spent(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return sum(t.state != TrialState.RUNNING for t in _counted(study))


def _over_budget(study: optuna.Study, number: int, budget: int) -> bool:
    """Whether trials numbered before ``number`` (done or still running) fill the budget:
    trial numbers are handed out in order by the storage, so two workers agree on which
    trial is the last one."""
    return sum(t.number < number for t in _counted(study)) >= budget


def _run_trial(
    params: Params,
    trial: optuna.Trial,
    dims: list[Dimension],
    data: _Data,
    objective: str,
    parent_id: str,
) -> TrialResult:
    import optuna

    values = {d.key: suggest(trial, d) for d in dims}
    try:
        cfg = with_values(params.train, values)
    except ValueError as exc:
        return TrialResult(trial.number, "failed", None, values, 0, None, f"invalid values: {exc}")
    adapter = family(cfg.model)
    epochs: list[Epoch] = []
    with tracking.child_run(parent_id, f"trial {trial.number}") as run_id:
        tracking.log_params({k.removeprefix("train."): v for k, v in values.items()})

        def on_epoch(epoch: Epoch) -> None:
            epochs.append(epoch)
            tracking.log_metrics(
                {"train_loss": epoch.train_loss, "val_loss": epoch.val_loss,
                 "val_accuracy": epoch.val_accuracy},
                step=epoch.epoch,
            )  # fmt: skip
            # val_macro_f1 has no per-epoch value: the pruner follows val_accuracy then.
            step_value = epoch.val_loss if objective == "val_loss" else epoch.val_accuracy
            trial.report(step_value, epoch.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch.epoch}: below the median")

        try:
            fitted = adapter.fit(
                cfg, data.x, data.y, data.vx, data.vy, data.n_classes, params.seed, on_epoch,
                sample_weight=data.weight,
            )  # fmt: skip
        except optuna.TrialPruned:
            tracking.set_tags({TuneTag.STATE: "pruned"})
            return TrialResult(trial.number, "pruned", None, values, len(epochs), run_id)
        except (ValueError, RuntimeError) as exc:  # a combination the family cannot train
            tracking.set_tags({TuneTag.STATE: "failed", TuneTag.ERROR: str(exc)[:500]})
            return TrialResult(trial.number, "failed", None, values, len(epochs), run_id, str(exc))
        scores = _scores(adapter.predict_proba(fitted.model, data.vx), data.vy, fitted.history)
        tracking.log_metrics(scores)
        tracking.set_tags({TuneTag.STATE: "complete"})
    return TrialResult(
        trial.number, "complete", scores[objective], values, len(fitted.history), run_id
    )


def _scores(proba: np.ndarray, y: np.ndarray, history: list[Epoch]) -> dict[str, float]:
    from sklearn.metrics import f1_score

    pred = proba.argmax(1)
    out = {
        "val_accuracy": float((pred == y).mean()),
        "val_macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }
    if history:
        out["val_loss"] = float(min(e.val_loss for e in history))
    return out


def _summarize(study: optuna.Study, outcome: Outcome) -> None:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    outcome.complete = len(complete)
    outcome.pruned = sum(t.state == TrialState.PRUNED for t in trials)
    outcome.failed = sum(
        t.state == TrialState.FAIL and not t.user_attrs.get("over_budget") for t in trials
    )
    if complete:
        best = study.best_trial
        outcome.best_value = best.value
        outcome.best_values = best_values(study)
    outcome.epochs_run, outcome.pruning_saved_epochs = saved_epochs(trials)


def best_values(study: optuna.Study) -> dict[str, Any]:
    """The best trial's values as params.yaml keys (choices mapped back from indices)."""
    recorded = study.user_attrs[ATTRS]["space"]
    out: dict[str, Any] = {}
    for key, value in study.best_trial.params.items():
        choices = recorded.get(key, {}).get("choices")
        if choices is not None:
            out[key] = value if _scalars(choices) else choices[int(value)]
        else:  # 6 significant digits: what a person writes, the same model in practice
            out[key] = float(f"{value:.6g}") if isinstance(value, float) else value
    return out


def saved_epochs(trials: list[Any]) -> tuple[int, int]:
    """(epochs run by every trial, epochs pruning saved: an estimate) from the trials'
    intermediate values. A pruned trial is counted as if it had run as long as the median
    completed trial (early stopping ends those, so the full length is not the fair one)."""
    from optuna.trial import TrialState

    run = sum(len(t.intermediate_values) for t in trials)
    full = [len(t.intermediate_values) for t in trials if t.state == TrialState.COMPLETE]
    if not full:
        return run, 0
    typical = statistics.median(full)
    saved = sum(
        max(0, math.ceil(typical) - len(t.intermediate_values))
        for t in trials
        if t.state == TrialState.PRUNED
    )
    return run, saved


# -- what a study leaves behind ----------------------------------------------------------------


def pictures(study: optuna.Study, folder: Path) -> list[Path]:
    """Optimization history, parameter importances and parallel coordinates as PNG
    (matplotlib); a picture that cannot be drawn yet (one trial, one value) is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as draw

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name, plot in (
        ("history", draw.plot_optimization_history),
        ("importances", draw.plot_param_importances),
        ("parallel", draw.plot_parallel_coordinate),
    ):
        try:
            axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            log.info("tune: no %s picture yet: %s", name, exc)
            continue
        first: Any = np.ravel(np.asarray(axes, dtype=object))[0]  # one Axes, or an array
        figure = first.figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        made.append(path)
    return made


def finish(params: Params, root: Path, outcome: Outcome) -> Outcome:
    """Pictures beside the study and on the parent run, with the best value so far."""
    import optuna

    study = optuna.load_study(study_name=outcome.study, storage=storage_url(params, root))
    folder = root / ".modelyard" / "tune" / outcome.study
    outcome.pictures = pictures(study, folder)
    with tracking.resume(outcome.parent_run_id):
        if outcome.best_value is not None:
            tracking.log_metrics({f"best_{outcome.objective}": outcome.best_value})
        tracking.set_tags(
            {
                TuneTag.BEST: json.dumps(outcome.best_values),
                TuneTag.COMPLETE: outcome.complete,
                TuneTag.PRUNED: outcome.pruned,
                TuneTag.FAILED: outcome.failed,
            }
        )
        for path in outcome.pictures:
            tracking.log_artifact(path, "tune")
    return outcome
