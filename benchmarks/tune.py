"""`modelyard tune` against the shipped defaults and a grid of the same budget, and one
worker against two on one study (issue 25, "Measure").

On a copy of a prepared project (its train/val/test splits; the default CNN of
params.yaml), in the same run:

1. the shipped defaults: trained once;
2. `modelyard tune` (TPE, seeded, median pruning) with a budget of N trials, one worker;
3. a grid of the same N points over the same parameters (Optuna's GridSampler, no
   pruning: what a `dvc exp run --queue` grid trains, without DVC's per-experiment
   pipeline around it, which would only add to its time);
4. `modelyard tune` with the same budget and two worker processes on one SQLite study.

For each: the best validation accuracy, the test accuracy of the chosen parameters
(trained once more and scored on the test split here, after the search: the search
itself never reads it), wall time, trials, epochs run and those pruning saved; for the
grid, the trials TPE needed to reach the grid's best. Writes benchmarks/results/tune.{md,json}
and the one-worker study's pictures (tune-history.png, tune-importances.png,
tune-parallel.png).

    python benchmarks/tune.py [--project DIR] [--trials 12]

DIR: a project after `make run` (default: this repository).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
GRID = {
    "train.lr": [0.001, 0.003, 0.01],
    "train.batch_size": [32, 64],
    "train.cnn.dropout": [0.1, 0.3],
}


def copy_project(source: Path, dest: Path, tune: dict[str, Any]) -> Path:
    dest.mkdir(parents=True)
    shutil.copytree(source / "data/prepared", dest / "data/prepared")
    params = yaml.safe_load((source / "params.yaml").read_text())
    params["tune"] = {**params["tune"], **tune}
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def test_accuracy(root: Path, values: dict[str, Any]) -> tuple[float, float]:
    """(validation, test) accuracy of the parameters ``values``, trained once more."""
    from pipelines import dataset
    from pipelines.config import load
    from pipelines.models import family
    from pipelines.tune import with_values

    params = load(root / "params.yaml")
    cfg = with_values(params.train, values)
    schema = dataset.load_schema(params.paths, root)
    train = dataset.load_split(params.paths, "train", schema, root)
    val = dataset.load_split(params.paths, "val", schema, root)
    test = dataset.load_split(params.paths, "test", schema, root)
    adapter = family(cfg.model)
    fitted = adapter.fit(
        cfg, train.x, train.y, val.x, val.y, len(schema.classes), params.seed, None
    )
    score = [
        float((adapter.predict_proba(fitted.model, s.x).argmax(1) == s.y).mean())
        for s in (val, test)
    ]
    return score[0], score[1]


def tune(root: Path, *extra: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "modelyard"), "tune", "--no-write", *extra],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(done.stdout + done.stderr)
    return time.perf_counter() - started, done.stdout


def study(root: Path, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / '.modelyard/tune.db'}")


def summary(root: Path, name: str, seconds: float, workers: int) -> dict[str, Any]:
    from pipelines.tune import best_values, saved_epochs

    s = study(root, name)
    run, saved = saved_epochs(s.trials)
    best = best_values(s)
    val, test = test_accuracy(root, best)
    values = [t.value for t in s.trials if t.value is not None]
    better = min if s.direction.name == "MINIMIZE" else max
    return {
        "workers": workers,
        "seconds": round(seconds, 1),
        "trials": len([t for t in s.trials if not t.user_attrs.get("over_budget")]),
        "pruned": sum(t.state.name == "PRUNED" for t in s.trials),
        "best": better(values),
        "best_values": best,
        "retrained_val": val,
        "test": test,
        "epochs_run": run,
        "epochs_saved": saved,
        "curve": [better(values[: i + 1]) for i in range(len(values))],
        "minimize": s.direction.name == "MINIMIZE",
    }


def grid(root: Path, trials: int) -> dict[str, Any]:
    """The grid of the same budget, through the same trial code, without pruning."""
    import optuna

    from pipelines import tune as tuning
    from pipelines.config import load

    params = load(root / "params.yaml")
    params = params.model_copy(
        update={
            "tune": params.tune.model_copy(
                update={
                    "space": {k: tuning.TuneRange(choices=v) for k, v in GRID.items()},
                    "trials": trials,
                    "pruner": "none",
                    "study": "grid",
                    "objective": OBJECTIVE,
                }
            )
        }
    )
    started = time.perf_counter()
    study_obj, dims, parent = tuning.open_study(params, root, join=None)
    study_obj.sampler = optuna.samplers.GridSampler(GRID, seed=params.seed)
    tuning.tracking.configure(root)
    data = tuning._data(params, root)

    def objective(trial: optuna.Trial) -> float:
        result = tuning._run_trial(params, trial, dims, data, OBJECTIVE, parent)
        assert result.value is not None, result.error
        return result.value

    study_obj.optimize(objective, n_trials=trials)  # the grid's sampler stops the study
    return summary(root, "grid", time.perf_counter() - started, 1)


OBJECTIVE = "val_loss"  # finer than accuracy on a 180-row validation split (it saturates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=REPO)
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    results: dict[str, Any] = {"trials": args.trials}
    with tempfile.TemporaryDirectory(prefix="modelyard-tune-bench-") as tmp:
        base = Path(tmp)
        one = copy_project(
            args.project, base / "one", {"trials": args.trials, "objective": OBJECTIVE}
        )
        val, test = test_accuracy(one, {})
        results["defaults"] = {"val_accuracy": val, "test": test}
        seconds, _ = tune(one)
        results["tpe_1_worker"] = summary(one, "modelyard-cnn", seconds, 1)
        for picture in (one / ".modelyard/tune/modelyard-cnn").glob("*.png"):
            shutil.copy(picture, HERE / "results" / f"tune-{picture.name}")
        # Two workers: twice the budget, so the second (which starts a few seconds
        # later) has its share; compared by trials per minute.
        two = copy_project(
            args.project, base / "two", {"trials": 2 * args.trials, "objective": OBJECTIVE}
        )
        started = time.perf_counter()
        first = subprocess.Popen(
            [str(BIN / "modelyard"), "tune", "--no-write"], cwd=two, stdout=subprocess.DEVNULL
        )
        while not (two / ".modelyard/tune.db").exists() or not _exists(two):
            time.sleep(0.2)
        second = subprocess.Popen(
            [str(BIN / "modelyard"), "tune", "--no-write", "--join", "modelyard-cnn"],
            cwd=two,
            stdout=subprocess.PIPE,
            text=True,
        )
        out, _ = second.communicate()
        first.wait()
        joined = int(" ".join(out.split()).split("this worker ran ")[1].split(";")[0])
        results["tpe_2_workers"] = summary(two, "modelyard-cnn", time.perf_counter() - started, 2)
        results["tpe_2_workers"]["second_worker_trials"] = joined
        g = copy_project(
            args.project, base / "grid", {"trials": args.trials, "objective": OBJECTIVE}
        )
        results["grid"] = grid(g, args.trials)
    target = results["grid"]["best"]
    for key in ("tpe_1_worker", "tpe_2_workers"):
        curve = results[key]["curve"]
        results[key]["trials_to_grid_best"] = next(
            (i + 1 for i, v in enumerate(curve) if v <= target), None
        )
        results[key]["trials_per_minute"] = round(
            60 * results[key]["trials"] / results[key]["seconds"], 1
        )
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results/tune.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (HERE / "results/tune.md").write_text(text)
    print(text)


def _exists(root: Path) -> bool:
    """Whether the first worker has created the study (its storage may not exist yet)."""
    import optuna

    url = f"sqlite:///{root / '.modelyard/tune.db'}"
    return "modelyard-cnn" in optuna.get_all_study_names(storage=url)


def table(r: dict[str, Any]) -> str:
    import platform

    rows = [
        f"`modelyard tune` vs the shipped defaults and a grid of the same budget ({r['trials']} "
        f"trials; 2 workers: {2 * r['trials']}), default CNN on digits, objective "
        f"{OBJECTIVE} (lower is better), {platform.machine()}, 2 CPUs; "
        "`python benchmarks/tune.py`.",
        "",
        "| search | workers | wall s | trials | trials/min | pruned | best val_loss | val acc"
        " / test acc of its choice | epochs run | saved by pruning (est.) | trials to the"
        " grid's best |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| shipped defaults | - | - | 1 | - | - | - | {r['defaults']['val_accuracy']:.4f} / "
        f"{r['defaults']['test']:.4f} | - | - | - |",
    ]
    for key, label in (
        ("grid", "grid (the points a `dvc exp run --queue` grid would train)"),
        ("tpe_1_worker", "modelyard tune (TPE + median pruning)"),
        ("tpe_2_workers", "modelyard tune, 2 workers on one SQLite study"),
    ):
        x = r[key]
        workers = f"{x['workers']}" + (
            f" (the joiner ran {x['second_worker_trials']})" if "second_worker_trials" in x else ""
        )
        rows.append(
            f"| {label} | {workers} | {x['seconds']} | {x['trials']} | "
            f"{x.get('trials_per_minute', round(60 * x['trials'] / x['seconds'], 1))} | "
            f"{x['pruned']} | {x['best']:.4f} | {x['retrained_val']:.4f} / {x['test']:.4f} | "
            f"{x['epochs_run']} | {x['epochs_saved']} | {x.get('trials_to_grid_best') or '-'} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
