"""One benchmark run, end to end: (model, params) x (dataset, task) -> numbers, files, MLflow.

Finished runs are cached under ``<data home>/runs/<key>/`` (the key covers the model, its
parameters and version, the task and the data's fingerprints): a rerun returns the stored
result unless ``force`` is set, and an interrupted run resumes from its journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import replace
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


def run_key(model: str, predictor, task_fp: str, extra: dict[str, Any]) -> str:
    blob = json.dumps({"model": model, "params": predictor.params, "version": predictor.version, "task": task_fp, "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def runs_dir() -> Path:
    return registry.data_home() / "runs"


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


def run(
    model: str,
    dataset: str,
    *,
    params: dict[str, Any] | None = None,
    task: Task | None = None,
    placement: str | None = None,
    force: bool = False,
    track: bool = True,
    tracking_uri: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on `dataset`; returns the summary that `bench run --json` prints."""
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
    folder = runs_dir() / key
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
    title = f"{cls.name} on {trace.id}"
    files = _artifacts(ev, trace, title, folder)
    if track:
        from . import tracking

        tags = {"model": cls.name, "dataset": trace.id, "dataset_version": str(trace.card.version),
                "task_fingerprint": task_fp, "horizons": ",".join(map(str, task.horizons)), "run_key": key,
                "placement": placement or "", "mlflow.note.content": f"{title}, horizons {task.horizons} iterations"}
        params_flat = {f"model.{k}": v for k, v in predictor.params.items()}
        params_flat.update({f"task.{k}": v for k, v in task.to_dict().items()})
        params_flat.update({"model": cls.name, "dataset": trace.id, "dataset_fingerprint": trace.fingerprint,
                            "code_version": result["code_version"], "python": platform.python_version(),
                            "numpy": np.__version__, "placement": placement})
        metrics_flat = tracking.flat_metrics(summary)
        metrics_flat["seconds"] = ev.seconds
        metrics_flat["failed_origins"] = float(len(ev.failures))
        result["mlflow_run_id"] = tracking.log_run(run_name=f"{cls.name} · {trace.id}", params=params_flat, tags=tags,
                                                   metrics=metrics_flat, artifacts=files, uri=tracking_uri)
        extra = getattr(predictor, "mlflow_extras", None)
        if callable(extra):
            extra(result["mlflow_run_id"], tracking_uri)
    _write_json(folder / "result.json", result)
    return result
