"""What a predictor adds to its MLflow run (``mlflow_extras``), for either calling convention.

The runner calls ``predictor.mlflow_extras(folder)`` after the evaluation and logs what comes
back (``{"metrics", "artifacts", "curves"}``); an older runner called
``mlflow_extras(run_id, tracking_uri)`` after logging, and the predictor logged itself.
:func:`report` serves both: files are written to the run's folder (or a temporary one) and
either returned or logged to the run.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def report(target: Any, tracking_uri: str | None = None, *, metrics: dict[str, float] | None = None,
           curves: dict[str, list[float]] | None = None, json_files: dict[str, Any] | None = None,
           files: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """`files`: name -> callable(path) that writes it (e.g. a checkpoint)."""
    is_folder = isinstance(target, Path) or (isinstance(target, str) and Path(target).is_dir())
    folder = Path(target) if is_folder else Path(tempfile.mkdtemp(prefix="moe-load-bench-extras-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in (json_files or {}).items():
        (folder / name).write_text(json.dumps(data, indent=2, default=str))
        paths.append(folder / name)
    for name, write in (files or {}).items():
        write(folder / name)
        paths.append(folder / name)
    out = {"metrics": dict(metrics or {}), "artifacts": [str(p) for p in paths], "curves": dict(curves or {})}
    if is_folder:
        return out
    # old convention: target is the MLflow run id; log to it now
    from bench import tracking

    mlflow = tracking._mlflow(tracking_uri)
    client = mlflow.tracking.MlflowClient()
    for k, v in out["metrics"].items():
        client.log_metric(target, k, float(v))
    for name, values in out["curves"].items():
        tracking.log_training_curve(target, name, values, tracking_uri)
    for p in paths:
        client.log_artifact(target, str(p))
    return None
