"""MLflow: where every run is logged. A real tracking store, sqlite under the data home by default.

The tracking URI is, in order: the `--tracking-uri` option, ``$MLFLOW_TRACKING_URI``, or
``sqlite:///<data home>/mlflow.db`` with artifacts in ``<data home>/mlartifacts``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from datasets_registry.registry import data_home

EXPERIMENT = "moe-load-bench"


def tracking_uri(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = data_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def metric_key(horizon: int | str, metric: str, state: str) -> str:
    """How a summary number is named in MLflow: ``h1000/error_rate/all``."""
    return f"h{horizon}/{metric}/{state}"


def _mlflow(uri: str | None):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import logging

    import mlflow

    for name in ("alembic", "mlflow"):  # after the import: mlflow sets its own level on import
        logging.getLogger(name).setLevel(logging.WARNING)

    # mlflow.set_tracking_uri also exports $MLFLOW_TRACKING_URI; put back what the user had, so a
    # later call in this process still follows the data home rather than the first store used.
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(uri))
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    return mlflow


def experiment_id(mlflow, name: str = EXPERIMENT) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (data_home() / "mlartifacts").resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def flat_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's numbers under their MLflow names (NaN/None left out)."""
    out = {}
    for H, entry in summary.items():
        for metric, value in entry.items():
            if isinstance(value, dict) and set(value) >= {"all"}:
                for state, x in value.items():
                    if x is not None and x == x:
                        out[metric_key(H, metric, state)] = float(x)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"h{H}/{metric}"] = float(value)
    return out


def log_run(
    *,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    metrics: dict[str, float],
    artifacts: list[Path],
    uri: str | None = None,
    experiment: str = EXPERIMENT,
    curves: dict[str, list[float]] | None = None,
    dataset: dict[str, Any] | None = None,
) -> str:
    """Log one finished benchmark run; returns its MLflow run id.

    `curves` are per-step series (e.g. a model's training loss per epoch), logged with steps.
    `dataset` ({name, digest, source: {...}}) is logged as the run's input: the UI's Dataset column and filter.
    """
    mlflow = _mlflow(uri)
    with mlflow.start_run(experiment_id=experiment_id(mlflow, experiment), run_name=run_name) as run:
        if dataset:
            from mlflow.data.code_dataset_source import CodeDatasetSource
            from mlflow.data.meta_dataset import MetaDataset

            mlflow.log_input(MetaDataset(CodeDatasetSource(dataset.get("source", {})), name=dataset["name"], digest=dataset["digest"]),
                             context="evaluation")
        mlflow.log_params({k: (str(v)[:6000]) for k, v in params.items()})
        mlflow.set_tags(tags)
        mlflow.log_metrics(metrics)
        for name, values in (curves or {}).items():
            for step, v in enumerate(values):
                mlflow.log_metric(name, float(v), step=step)
        for path in artifacts:
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.exists():
                mlflow.log_artifact(str(path))
        return run.info.run_id


def log_training_curve(run_id: str, name: str, values: list[float], uri: str | None = None) -> None:
    """Append a per-epoch curve (e.g. a model's training loss) to an existing run."""
    mlflow = _mlflow(uri)
    client = mlflow.tracking.MlflowClient()
    for step, v in enumerate(values):
        client.log_metric(run_id, name, float(v), step=step)
