"""Hyper-parameter tuning with Optuna on a validation split that never touches the test origins.

**The split.** A task's origins lie on a grid: ``F = steps[0] + min_history`` (or the task's
``first_origin``), then every ``stride`` iterations. The split step is the grid point nearest
``F + split * (steps[-1] - F)`` (``--split``, default 0.5):

- *validation*: the trace cut before the split step (records with ``steps < X``) and the task's
  horizons, stride and history on it. Every validation origin, and every record a validation
  forecast is scored on, lies before ``X``;
- *test*: the same task on the whole trace with ``first_origin = X``: only origins at or after
  ``X``, a subset of the default task's origins, none of which tuning used.

``python -m bench run --model M --params best`` runs the test task (it sets ``--first-origin X``
unless one is given), so tuned parameters are only ever scored on origins tuning did not see;
compare with the defaults on the same origins: ``python -m bench run --model M --first-origin X``.
On smartmoe-ae (steps 1..5001, default task): ``X = 2501``; validation has 250 records, 15 origins
at 1k and 5 at 2k; the test task has 16 origins at 1k and 6 at 2k.

**The study.** Optuna (TPE, seeded), stored in sqlite at ``<data home>/tuning/optuna.db`` under a
name that covers the model, fixed parameters, dataset fingerprint, task and split, so an
interrupted or extended study resumes (``load_if_exists``): ``--trials N`` is the number of
*completed* trials wanted in all. A trial that was running when the process died, or that
was interrupted, is marked failed and its parameters are tried again first. The first trial of
a new study evaluates the predictor's defaults (where they lie in the space). The objective is
the validation ``error_rate`` (all states), averaged over the task's horizons; a trial with a
failed origin fails.

**Tracking.** The study is a parent MLflow run (experiment ``moe-load-bench-tuning``, so tuning
runs never mix with benchmark runs); every trial is a nested run with its parameters and
validation metrics. The best parameters are also written to
``<data home>/tuning/best/<model>@<dataset>.json`` (the dataset as typed), which
:func:`best_params` reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from datasets_registry import registry

from .task import Task, first_origin_step

EXPERIMENT = "moe-load-bench-tuning"
OBJECTIVE = "error_rate"


class TrialFailed(RuntimeError):
    """A trial whose evaluation had failed origins (or raised)."""


def tuning_dir() -> Path:
    return registry.data_home() / "tuning"


def storage_url() -> str:
    tuning_dir().mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{tuning_dir() / 'optuna.db'}"


def _best_file(model: str, dataset: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", f"{model}@{dataset}")
    return tuning_dir() / "best" / f"{safe}.json"


# ---- the split ---------------------------------------------------------------------------
def split_step(steps, task: Task, split: float) -> int:
    """The grid origin nearest ``split`` of the way from the first origin to the last step."""
    if not 0 < split < 1:
        raise ValueError(f"split must be between 0 and 1, got {split}")
    first = first_origin_step(steps, task)
    return first + task.stride * round(split * (int(steps[-1]) - first) / task.stride)


def validation_split(trace, task: Task, split: float = 0.5):
    """(validation trace, validation task, test task, split step). See the module docstring."""
    import numpy as np

    from .slices import sub_trace
    from .task import rolling_origins

    x = split_step(trace.steps, task, split)
    stop = int(np.searchsorted(trace.steps, x, side="left"))
    val = sub_trace(trace, 0, stop, tag=f"before{x}")
    val_task = replace(task, dataset=val.id)
    if not any(len(o.records) for o in rolling_origins(val.steps, val_task).values()):
        raise ValueError(
            f"{trace.id}: the validation part (steps < {x}) has no origins for horizons {task.horizons}; "
            f"raise --split or shorten the horizons"
        )
    return val, val_task, replace(task, first_origin=x), x


# ---- search spaces -----------------------------------------------------------------------
def suggest(trial, name: str, spec: tuple, default: Any) -> Any:
    kind = spec[0]
    if kind == "cat":
        return trial.suggest_categorical(name, list(spec[1]))
    low, high = spec[1], spec[2]
    integer = kind == "int" or (
        isinstance(default, int) and not isinstance(default, bool) and isinstance(low, int) and isinstance(high, int)
    )
    if integer:
        return trial.suggest_int(name, int(low), int(high), log=kind == "log")
    return trial.suggest_float(name, float(low), float(high), log=kind == "log")


def _in_space(value: Any, spec: tuple) -> bool:
    if spec[0] == "cat":
        return value in list(spec[1])
    return isinstance(value, (int, float)) and not isinstance(value, bool) and spec[1] <= value <= spec[2]


def _study_name(model: str, fixed: dict, trace, task: Task, split: float) -> str:
    blob = json.dumps(
        {"fixed": fixed, "task": task.fingerprint(trace.fingerprint), "split": split}, sort_keys=True, default=str
    )
    return f"{model}|{trace.id}|{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


# ---- tuning ------------------------------------------------------------------------------
def tune(
    model: str,
    dataset: str,
    trials: int,
    *,
    params: dict[str, Any] | None = None,
    task: Task | None = None,
    split: float = 0.5,
    seed: int = 0,
    track: bool = True,
    tracking_uri: str | None = None,
    on_trial: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study until it has `trials` completed trials; returns the best record."""
    import optuna

    from models import predictor_class

    from .aggregate import summarize
    from .evaluate import evaluate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fixed = dict(params or {})
    cls = predictor_class(model)
    space = {k: v for k, v in cls.search_space.items() if k not in fixed}
    if not space:
        raise ValueError(
            f"{model} declares no search space to tune (search_space is empty or every entry is fixed by --param)"
        )
    trace = registry.load(dataset)
    task = replace(task or Task(dataset=dataset), dataset=dataset)
    val, val_task, test_task, x = validation_split(trace, task, split)
    name = _study_name(model, fixed, trace, task, split)
    study = optuna.create_study(study_name=name, storage=storage_url(), direction="minimize", load_if_exists=True)
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))  # a resumed study samples anew
    _recover(study, cls, space)
    defaults = {**cls.defaults, **fixed}

    mlflow = parent = None
    if track:
        from . import tracking

        mlflow = tracking.connect(tracking_uri)
        exp = tracking.experiment_id(mlflow, EXPERIMENT)
        parent_id = study.user_attrs.get("mlflow_parent_run_id")
        parent = (
            mlflow.start_run(run_id=parent_id)
            if parent_id
            else mlflow.start_run(experiment_id=exp, run_name=f"tune {model} on {trace.id}")
        )
        if not parent_id:
            study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
            mlflow.log_params(
                {
                    "model": model,
                    "dataset": trace.id,
                    "split": split,
                    "split_step": x,
                    "seed": seed,
                    **{f"fixed.{k}": v for k, v in fixed.items()},
                    **{f"space.{k}": json.dumps(v) for k, v in space.items()},
                }
            )
            mlflow.set_tags(
                {
                    "study": name,
                    "storage": storage_url(),
                    "kind": "tuning-study",
                    "validation": f"{val.id}: steps < {x}",
                    "test_first_origin": str(x),
                }
            )

    def objective(trial) -> float:
        suggested = {k: suggest(trial, k, spec, defaults.get(k)) for k, spec in space.items()}
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.params == suggested:  # the sampler repeated itself: reuse, do not recompute
                trial.set_user_attr("duplicate_of", t.number)
                return t.value
        run = mlflow.start_run(experiment_id=exp, run_name=f"trial {trial.number}", nested=True) if track else None
        try:
            t0 = time.perf_counter()
            ev = evaluate(val, cls(**{**fixed, **suggested}), val_task)
            seconds = time.perf_counter() - t0
            summary = summarize(ev.frame(), ev.failures, val_task.horizons, [OBJECTIVE], val.layers)
            values = [summary[h].value(OBJECTIVE) for h in val_task.horizons]
            if ev.failures or not all(v is not None and math.isfinite(v) for v in values):
                raise TrialFailed(
                    f"{len(ev.failures)} failed origins: "
                    f"{ev.failures[0]['error'] if ev.failures else 'no finite error'}"
                )
            value = sum(values) / len(values)
            if track:
                from .results import metric_key

                validation = {
                    f"validation/{metric_key(H, OBJECTIVE, s)}": v
                    for H, h in summary.items()
                    for s, v in h.metrics[OBJECTIVE].to_dict().items()
                    if v is not None
                }
                mlflow.log_params(
                    {**{f"model.{k}": v for k, v in {**fixed, **suggested}.items()}, "trial": trial.number}
                )
                mlflow.set_tags({"study": name, "kind": "tuning-trial"})
                mlflow.log_metrics({**validation, "objective": value, "seconds": seconds})
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            if run:
                mlflow.end_run(status="KILLED")
            raise
        except Exception:
            if run:
                mlflow.end_run(status="FAILED")
            raise
        if run:
            mlflow.end_run()
        if on_trial:
            on_trial({"trial": trial.number, "params": suggested, "value": value, "seconds": seconds})
        return value

    try:
        done = _complete(study)
        if done < trials:
            study.optimize(objective, n_trials=trials - done, catch=(Exception,))
    except BaseException:  # interrupted: the study resumes next time
        while track and mlflow.active_run():
            mlflow.end_run(status="KILLED")
        raise
    record = _record(study, model, dataset, trace, fixed, split, x, val_task, test_task, name)
    if track:
        if record["value"] is not None:
            mlflow.log_metrics(
                {"best_value": record["value"], "trials_complete": record["trials_complete"]},
                step=record["trials_complete"],
            )
            mlflow.set_tags(
                {"best_params": json.dumps(record["params"], default=str), "best_trial": str(record["best_trial"])}
            )
        mlflow.end_run()
        record["mlflow_parent_run_id"] = parent.info.run_id
    return record


def _complete(study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def _recover(study, cls, space: dict) -> None:
    """Fail trials left running by a dead process, retry interrupted ones, seed a new study with the defaults."""
    import optuna

    TS = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    for t in trials:
        if t.state == TS.RUNNING:
            study.tell(t.number, state=TS.FAIL)
            study.set_user_attr(f"stale_{t.number}", True)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in study.get_trials(deepcopy=False, states=(TS.FAIL,)):
        interrupted = t.user_attrs.get("interrupted") or study.user_attrs.get(f"stale_{t.number}")
        if interrupted and t.number not in retried and set(t.params) == set(space):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    if not trials:
        start = {k: cls.defaults[k] for k in space if k in cls.defaults and _in_space(cls.defaults[k], space[k])}
        if len(start) == len(space):
            study.enqueue_trial(start, user_attrs={"defaults": True})


def _record(study, model, dataset, trace, fixed, split, x, val_task, test_task, name) -> dict[str, Any]:
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = min(complete, key=lambda t: t.value) if complete else None
    default = next((t for t in complete if t.user_attrs.get("defaults")), None)
    record = {
        "model": model,
        "dataset": trace.id,
        "dataset_fingerprint": trace.fingerprint,
        "study": name,
        "storage": storage_url(),
        "params": {**fixed, **best.params} if best else None,
        "value": best.value if best else None,
        "best_trial": best.number if best else None,
        "default_value": default.value if default else None,
        "trials_complete": len(complete),
        "trials_total": len(study.trials),
        "objective": f"validation {OBJECTIVE} (all), mean over horizons",
        "split": split,
        "split_step": x,
        "validation_task": val_task.to_dict(),
        "test_task": test_task.to_dict(),
        "test_first_origin": x,
    }
    if best is not None:
        path = _best_file(model, dataset)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str))
    return record


# ---- reuse -------------------------------------------------------------------------------
def best_record(model: str, dataset: str) -> dict[str, Any]:
    path = _best_file(model, dataset)
    if not path.exists():
        raise LookupError(
            f"no tuned parameters for {model} on {dataset}: run `python -m bench tune --model {model} --dataset "
            f"{dataset} --trials 20`"
        )
    return json.loads(path.read_text())


def best_params(model: str, dataset: str) -> dict[str, Any]:
    """The best parameters `bench tune` found for `model` on `dataset`."""
    return dict(best_record(model, dataset)["params"])


def held_out_task(model: str, dataset: str, task: Task) -> Task:
    """`task` restricted to the origins tuning did not see (unless it already starts later)."""
    x = best_record(model, dataset)["test_first_origin"]
    if task.first_origin is None:
        return replace(task, first_origin=x)
    if task.first_origin < x:
        import warnings

        warnings.warn(
            f"--first-origin {task.first_origin} is before {x}: origins up to {x} were used to tune these parameters",
            UserWarning,
            stacklevel=2,
        )
    return task
