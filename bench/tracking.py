"""MLflow: where every run is logged. A real tracking store, sqlite under the data home by default.

The tracking URI is, in order: the `--tracking-uri` option, ``$MLFLOW_TRACKING_URI``, or
``sqlite:///<data home>/mlflow.db`` with artifacts in ``<data home>/mlartifacts``.

The store is shared by every command on a data home, concurrently. A new sqlite store is created
and migrated in a temporary file, under a file lock, and renamed into place when complete, so
that racing processes never see a half-built store and a failure midway (a full disk) leaves none.
An existing store is checked once per process; one that is not a usable sqlite store gives a
:class:`StoreError` that names the file and what to do. Writes that meet a busy database are
retried. What a run's MLflow record holds is :meth:`bench.results.RunResult.to_mlflow`'s business.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from datasets_registry.registry import data_home

from .results import ResultError, RunResult, run_folder

EXPERIMENT = "moe-load-bench"
#: Experiment tags MLflow's UI reads. The kind makes the experiment a classic machine-learning one (MLflow 3
#: otherwise offers its GenAI pages); the shared view ``VIEW`` is the runs table with the headline metrics as
#: columns, opened by ``#/experiments/<id>/runs?viewStateShareKey=<VIEW>`` (`bench ui` prints that address).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
VIEW = "headline-metrics"
VIEW_TAG = "mlflow.sharedViewState." + VIEW
HEADLINE_METRICS = ("h1000/error_rate/all", "h1000/error_rate/stable", "h1000/window_error/all")
#: Tables a complete MLflow sqlite store has (a subset is enough to tell a store from another database).
STORE_TABLES = {"alembic_version", "experiments", "runs", "metrics", "params", "tags"}
_checked: set[tuple] = set()  # (path, size, mtime) of stores found sound in this process


class StoreError(RuntimeError):
    """The tracking store cannot be used; the message names it and what to do."""


def tracking_uri(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = data_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def artifact_root() -> str:
    """Where runs of a sqlite store under the data home keep their artifacts (a file URI)."""
    return (data_home() / "mlartifacts").resolve().as_uri()


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI, None for any other store."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _repair_hint(path: Path) -> str:
    return (f"move it aside (it may hold your run history) or run `python -m bench doctor --repair`, which sets it "
            f"aside as {path.name}.broken-* and rebuilds the store from the runs kept in {data_home() / 'runs'}")


def check_store(path: Path) -> None:
    """Raise :class:`StoreError` unless `path` is a complete MLflow sqlite store (a missing file is fine)."""
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"{path}: the MLflow store is not a file; {_repair_hint(path)}")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            ok = con.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path}: not a usable MLflow store ({exc}); {_repair_hint(path)}") from None
    if ok != "ok":
        raise StoreError(f"{path}: the MLflow store is damaged ({ok}); {_repair_hint(path)}")
    missing = STORE_TABLES - tables
    if missing:
        raise StoreError(f"{path}: not a complete MLflow store (no table {', '.join(sorted(missing))}); "
                         f"{_repair_hint(path)}")


def _create_store(path: Path, uri: str) -> None:
    """Create and migrate a new sqlite store in a temporary file and rename it into place, under a lock."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
        tmp.unlink(missing_ok=True)
        try:
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            store = SqlAlchemyStore(f"sqlite:///{tmp}", artifact_root())
            store.engine.dispose()
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def connect(uri: str | None = None):
    """The `mlflow` module, pointed at the store (created or checked first); $MLFLOW_TRACKING_URI is left as it was."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import logging

    import mlflow

    for name in ("alembic", "mlflow"):  # after the import: mlflow sets its own level on import
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri(uri)
    path = sqlite_path(uri)
    if path is not None:
        if not path.exists():
            _create_store(path, uri)
        try:
            seen = (str(path), path.stat().st_size, path.stat().st_mtime_ns)
        except OSError:
            seen = None
        if seen not in _checked:
            check_store(path)
            _checked.add(seen)
    # mlflow.set_tracking_uri also exports $MLFLOW_TRACKING_URI; put back what the user had, so a
    # later call in this process still follows the data home rather than the first store used.
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    return mlflow


def client(uri: str | None = None):
    """An MlflowClient on the store (see :func:`connect`)."""
    return connect(uri).tracking.MlflowClient()


def headline_view(created_ms: int = 0) -> str:
    """The value of :data:`VIEW_TAG`: MLflow's saved-view envelope around the runs table's state (the Dataset
    column and :data:`HEADLINE_METRICS`), as MLflow's UI stores a view it shares."""
    import json

    columns = ["attributes.`Dataset`"] + [f"metrics.`{m}`" for m in HEADLINE_METRICS]
    state = {"selectedColumns": columns, "runsHiddenMode": "SHOW_ALL"}
    return json.dumps({"name": "headline metrics", "createdAt": created_ms, "updatedAt": created_ms,
                       "state": json.dumps(state)})


def experiment_tags(name: str) -> dict[str, str]:
    """What MLflow's UI reads of the experiment: its kind and, for the benchmark's runs, the headline view."""
    tags = dict([EXPERIMENT_KIND])
    if name == EXPERIMENT:
        tags[VIEW_TAG] = headline_view()
    return tags


def experiment_id(mlflow, name: str = EXPERIMENT) -> str:
    """The experiment's id, created with :func:`experiment_tags` where it does not exist, given the tags it lacks
    where it does (a store made by an earlier version)."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        location = artifact_root() if mlflow.get_tracking_uri().startswith("sqlite:") else None
        try:
            return mlflow.create_experiment(name, artifact_location=location, tags=experiment_tags(name))
        except Exception:  # created concurrently by another process
            exp = mlflow.get_experiment_by_name(name)
    for key, value in experiment_tags(name).items():
        if exp.tags.get(key) != value:
            mlflow.tracking.MlflowClient().set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def epoch_ms(iso: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time (a naive one is UTC)."""
    from datetime import datetime, timezone

    t = datetime.fromisoformat(iso)
    return int(round((t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp() * 1000))


def retry(fn: Callable[[], Any], attempts: int = 6, first_wait: float = 0.2) -> Any:
    """Call `fn`, again after a growing pause when the database is busy (another process is writing)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - only "locked"/"busy" errors are retried
            text = str(exc).lower()
            if i == attempts - 1 or not ("locked" in text or "busy" in text):
                raise
            time.sleep(first_wait * 2 ** i)


def log_result(result: RunResult, files: Iterable[Path] = (), uri: str | None = None,
               experiment: str = EXPERIMENT) -> RunResult:
    """Log one computed run with its files; returns the result with its MLflow run id.

    The run is logged after the fact, so its start and end times are set to the computation's
    (``finished_at`` less ``seconds``, and ``finished_at``): the UI's Duration is the run's.
    """
    mlflow = connect(uri)
    params, metrics, tags = result.to_mlflow()
    end = epoch_ms(result.finished_at)
    start = end - int(round(1000 * result.seconds))

    def write() -> str:
        created = mlflow.tracking.MlflowClient().create_run(experiment_id(mlflow, experiment), start_time=start,
                                                            run_name=f"{result.model} · {result.dataset}")
        with mlflow.start_run(run_id=created.info.run_id) as run:
            from mlflow.data.code_dataset_source import CodeDatasetSource
            from mlflow.data.meta_dataset import MetaDataset

            source = CodeDatasetSource({"dataset": result.dataset, "fingerprint": result.dataset_fingerprint})
            mlflow.log_input(MetaDataset(source, name=f"{result.dataset}@{result.dataset_version}",
                                         digest=result.dataset_fingerprint.split(":")[-1][:12]), context="evaluation")
            mlflow.log_params(params)
            mlflow.set_tags(tags)
            mlflow.log_metrics(metrics)
            for name, values in result.extras.curves.items():
                for step, v in enumerate(values):
                    mlflow.log_metric(name, float(v), step=step)
            for path in files:
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=path.name)
                elif path.exists():
                    mlflow.log_artifact(str(path))
            return run.info.run_id

    try:
        run_id = retry(write)
    except BaseException:
        while mlflow.active_run():  # a half-written run is marked as such, never left "running"
            mlflow.end_run(status="FAILED")
        raise
    try:  # ending the run stamped it "now": give it the computation's end
        retry(lambda: mlflow.tracking.MlflowClient().set_terminated(run_id, "FINISHED", end_time=end))
    except Exception as exc:  # noqa: BLE001 - the run is logged whole; only its Duration would be off
        import warnings

        warnings.warn(f"MLflow run {run_id}: its end time could not be set ({exc}); its Duration is off")
    return result.replace(mlflow_run_id=run_id)


def has_run(run_id: str | None, uri: str | None = None) -> bool:
    """Whether the store holds this (not deleted) run."""
    if not run_id:
        return False
    try:
        run = client(uri).get_run(run_id)
    except Exception:  # noqa: BLE001 - unknown id or unreachable store: not there
        return False
    return run.info.lifecycle_stage == "active"


def load_results(uri: str | None = None, experiment: str = EXPERIMENT,
                 on_skip: Callable[[str], None] | None = None) -> list[RunResult]:
    """Every finished top-level benchmark run of the experiment, decoded; undecodable ones go to `on_skip`."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    out, token = [], None
    while True:
        page = c.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                             max_results=1000, page_token=token)
        for r in page:
            tags = r.data.tags
            if "mlflow.parentRunId" in tags or "run_key" not in tags:
                continue
            try:
                out.append(RunResult.from_mlflow(r.data.params, r.data.metrics, tags, run_id=r.info.run_id))
            except ResultError as exc:
                if on_skip:
                    on_skip(str(exc))
        token = page.token
        if not token:
            return out


def origins_frame(result: RunResult, uri: str | None = None):
    """The run's per-origin, per-layer rows (pandas): from its folder in the data home, else from MLflow.

    Raises :class:`ResultError` naming the file when it cannot be read; an empty frame when the run
    has none (every origin failed).
    """
    import tempfile

    import pandas as pd

    local = run_folder(result.run_key) / "origins.parquet"
    if "origins.parquet" not in result.artifacts:
        return pd.DataFrame()
    if local.exists():
        return _read_parquet(local)
    if not result.mlflow_run_id:
        raise ResultError(str(local), "missing, and the run is not in MLflow")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client(uri).download_artifacts(result.mlflow_run_id, "origins.parquet", tmp)
        except Exception as exc:  # noqa: BLE001 - an artifact store's error, named with the run
            raise ResultError(f"MLflow run {result.mlflow_run_id}", f"origins.parquet unavailable ({exc})") from None
        return _read_parquet(Path(path))


def _read_parquet(path: Path):
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds for a damaged file
        raise ResultError(str(path), f"unreadable per-origin results ({type(exc).__name__}: {exc})") from None
