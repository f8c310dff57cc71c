"""One benchmark run, end to end: (model, params) x (dataset, task) -> numbers, files, MLflow.

Finished runs are cached under ``<data home>/runs/<key>/`` (the key covers the model, its
parameters and version, the task and the data's fingerprints): a rerun returns the stored
result unless ``force`` is set, and an interrupted run resumes from its journal.

:func:`compute` evaluates and writes files (safe in worker processes); :func:`log` sends a
computed run to MLflow from the driver. A predictor may add to its run by defining
``mlflow_extras(folder) -> {"metrics": {name: value}, "artifacts": [paths], "curves": {name: [values]}}``,
called after the evaluation with the run's folder (write checkpoints there).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from datasets_registry import registry
from datasets_registry.trace import Trace

from .aggregate import finite_or_none, per_layer, summarize
from .evaluate import Evaluation, evaluate
from .task import Task

SUMMARY_METRICS = ["error_rate", "window_error", "mape", "noise_floor"]


def code_version() -> str:
    """The package version and, in a git checkout, the commit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("moe-load-bench")
    except PackageNotFoundError:
        v = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{v}+{commit}" if commit else v


#: Bumped whenever the harness computes a number differently (metrics, states, origins), so that
#: cached runs from before are recomputed rather than mixed with new ones.
HARNESS_VERSION = 1


def run_key(model: str, predictor, task_fp: str, extra: dict[str, Any]) -> str:
    blob = json.dumps({"model": model, "params": predictor.params, "version": predictor.version, "task": task_fp,
                       "harness": HARNESS_VERSION, "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def runs_dir() -> Path:
    return registry.data_home() / "runs"


@dataclass
class Prepared:
    """What a run needs before it evaluates (see :func:`prepare`)."""

    trace: Trace
    training: list[Trace]
    cls: type
    predictor: Any
    task: Task
    task_fp: str
    scorers: list
    key: str
    folder: Path


def prepare(model: str, dataset: str, *, params: dict[str, Any] | None = None, task: Task | None = None,
            placement: str | None = None) -> Prepared:
    """Load the data, build the predictor and the scorers, and compute the run's key and folder."""
    from models import predictor_class

    task = replace(task or Task(dataset=dataset), dataset=dataset)
    trace = registry.load(dataset)
    training = [registry.load(d) for d in task.train]
    cls = predictor_class(model)
    predictor = cls(**(params or {}))
    task_fp = task.fingerprint(trace.fingerprint, tuple(t.fingerprint for t in training))
    scorers = []
    if placement:
        from .placement import make_scorer

        scorers.append(make_scorer(placement, trace.experts))
    key = run_key(model, predictor, task_fp, {"placement": placement})
    return Prepared(trace, training, cls, predictor, task, task_fp, scorers, key, runs_dir() / key)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _artifacts(ev: Evaluation, trace: Trace, title: str, folder: Path) -> list[Path]:
    """Per-origin results (parquet), window forecasts (npz) and plots."""
    from . import plots

    frame = ev.frame()
    files = []
    if not frame.empty:
        frame.to_parquet(folder / "origins.parquet", index=False)
        files.append(folder / "origins.parquet")
        per_layer(frame, "error_rate").to_csv(folder / "per_layer_error_rate.csv")
        files.append(folder / "per_layer_error_rate.csv")
        files.append(plots.error_over_steps(frame, title, folder / "error_over_steps.png"))
        files.append(plots.per_layer_errors(frame, title, folder / "per_layer_errors.png"))
        H = min(ev.window_forecasts)
        origin_steps = np.array(sorted(ev.window_forecasts[H]))
        predicted = np.array([ev.window_forecasts[H][s] for s in origin_steps])  # [n, L, E]
        recs = np.searchsorted(trace.steps, origin_steps)
        n = frame[frame["horizon"] == H].drop_duplicates("origin").set_index("origin")["records"].reindex(recs).to_numpy()
        csum = np.concatenate([np.zeros((1,) + trace.shape[1:]), np.cumsum(trace.proportions, axis=0)])
        actual = (csum[recs + n] - csum[recs]) / n[:, None, None]
        np.savez_compressed(folder / f"window_forecasts_h{H}.npz", origin_steps=origin_steps, predicted=predicted, actual=actual)
        files.append(folder / f"window_forecasts_h{H}.npz")
        layer = int(np.argmax(trace.proportions.max(axis=2).mean(axis=0)))
        hot = [int(e) for e in np.argsort(-trace.proportions[:, layer].mean(axis=0))[:4]]
        files.append(plots.hottest_experts(origin_steps, predicted[:, layer], actual[:, layer], ev.layer_names[layer], hot, H, title, folder / "hottest_experts.png"))
    if ev.failures:
        (folder / "failures.json").write_text(json.dumps(ev.failures, indent=2))
        files.append(folder / "failures.json")
    return files


def run(model: str, dataset: str, *, track: bool = True, tracking_uri: str | None = None, **options: Any) -> dict[str, Any]:
    """Evaluate `model` on `dataset` and log it; returns the summary that `bench run --json` prints.

    `options` are those of :func:`compute` (params, task, placement, force, progress).
    """
    result = compute(model, dataset, **options)
    if track and not result["cached"]:
        result = log(result, tracking_uri)
    return result


def compute(
    model: str,
    dataset: str,
    *,
    params: dict[str, Any] | None = None,
    task: Task | None = None,
    placement: str | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate and store the result under the run's folder, without touching MLflow.

    Safe to call in worker processes: the driver logs with :func:`log`.
    """
    prep = prepare(model, dataset, params=params, task=task, placement=placement)
    trace, training, cls, predictor, task, task_fp, scorers, key, folder = (
        prep.trace, prep.training, prep.cls, prep.predictor, prep.task, prep.task_fp, prep.scorers, prep.key, prep.folder)
    if force and folder.exists():
        shutil.rmtree(folder)
    if (folder / "result.json").exists():
        result = json.loads((folder / "result.json").read_text())
        result["cached"] = True
        return result
    folder.mkdir(parents=True, exist_ok=True)
    ev = evaluate(trace, predictor, task, training, scorers=scorers, journal=folder / "journal.jsonl", progress=progress)
    frame = ev.frame()
    metrics = SUMMARY_METRICS + [c for c in frame.columns if c not in SUMMARY_METRICS and c not in
                                 ("horizon", "origin", "origin_step", "records", "layer", "layer_name", "state")]
    summary = finite_or_none(summarize(frame, ev.failures, task.horizons, metrics))
    result: dict[str, Any] = {
        "model": cls.name,
        "model_spec": model,
        "params": predictor.params,
        "dataset": trace.id,
        "dataset_version": trace.card.version,
        "dataset_fingerprint": trace.fingerprint,
        "train": list(task.train),
        "task": task.to_dict(),
        "task_fingerprint": task_fp,
        "placement": placement,
        "horizons": summary,
        "seconds": round(ev.seconds, 3),
        "failures": len(ev.failures),
        "run_key": key,
        "mlflow_run_id": None,
        "code_version": code_version(),
        "cached": False,
    }
    result["artifacts"] = [str(p) for p in _artifacts(ev, trace, f"{cls.name} on {trace.id}", folder)]
    extra = getattr(predictor, "mlflow_extras", None)
    if callable(extra):
        result["extras"] = extra(folder) or {}
    _write_json(folder / "result.json", result)
    return result


def log(result: dict[str, Any], tracking_uri: str | None = None) -> dict[str, Any]:
    """Log a computed run to MLflow (once: the run id is stored with the result)."""
    from . import tracking

    folder = runs_dir() / result["run_key"]
    title = f"{result['model']} on {result['dataset']}"
    task = result["task"]
    tags = {"model": result["model"], "dataset": result["dataset"], "dataset_version": str(result["dataset_version"]),
            "task_fingerprint": result["task_fingerprint"], "horizons": ",".join(map(str, task["horizons"])),
            "run_key": result["run_key"], "placement": result.get("placement") or "",
            "mlflow.note.content": f"{title}, horizons {task['horizons']} iterations"}
    params_flat = {f"model.{k}": v for k, v in result["params"].items()}
    params_flat.update({f"task.{k}": v for k, v in task.items()})
    params_flat.update({"model": result["model"], "dataset": result["dataset"], "dataset_fingerprint": result["dataset_fingerprint"],
                        "code_version": result["code_version"], "python": platform.python_version(),
                        "numpy": np.__version__, "placement": result.get("placement")})
    metrics_flat = tracking.flat_metrics(result["horizons"])
    metrics_flat["seconds"] = float(result["seconds"])
    metrics_flat["failed_origins"] = float(result["failures"])
    extras = result.get("extras") or {}
    metrics_flat.update({k: float(v) for k, v in extras.get("metrics", {}).items()})
    artifacts = [Path(p) for p in result.get("artifacts", [])] + [Path(p) for p in extras.get("artifacts", [])]
    run_id = tracking.log_run(run_name=f"{result['model']} · {result['dataset']}", params=params_flat, tags=tags,
                              metrics=metrics_flat, artifacts=artifacts, uri=tracking_uri,
                              curves=extras.get("curves", {}),
                              dataset={"name": f"{result['dataset']}@{result['dataset_version']}",
                                       "digest": result["dataset_fingerprint"].split(":")[-1][:12],
                                       "source": {"dataset": result["dataset"], "fingerprint": result["dataset_fingerprint"]}})
    result = {**result, "mlflow_run_id": run_id}
    if folder.exists():
        _write_json(folder / "result.json", result)
    return result
