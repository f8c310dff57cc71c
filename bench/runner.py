"""One benchmark run, end to end: (model, params) x (dataset, task) -> a :class:`RunResult`, files, MLflow.

Finished runs are cached under ``<data home>/runs/<key>/`` (the key covers the model, its
parameters and version, the task and the data's fingerprints): a rerun returns the stored
result unless ``force`` is set, and an interrupted run resumes from its journal. A stored result
that cannot be trusted (unreadable, another schema, a failed checksum) is recomputed with a warning.

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
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from datasets_registry import registry
from datasets_registry.trace import Trace
from models.base import Predictor

from .aggregate import per_layer, summarize
from .evaluate import Evaluation, evaluate, require_sources
from .metrics import METRICS
from .results import Extras, ResultError, RunResult, WindowForecasts, run_folder, runs_dir, window_forecasts_file
from .task import Task

#: Bumped whenever the harness computes a number differently (metrics, states, origins), so that
#: cached runs from before are recomputed rather than mixed with new ones.
HARNESS_VERSION = 2

#: What a run can be given as its model: a name or spec (``sw_avg``, ``sktime:X``, ``file.py:Class``),
#: a Predictor subclass, or a configured Predictor instance (the last two from Python code).
ModelLike = str | type | Predictor

#: In a run's folder while the run waits to be logged to MLflow.
PENDING_LOG = "log.pending"

#: Columns of the per-origin rows that are not metrics.
ROW_KEYS = ("horizon", "origin", "origin_step", "records", "layer", "layer_name", "state", "failed")


def code_version() -> str:
    """The package version and, in a git checkout, the commit."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("moe-load-bench")
    except PackageNotFoundError:
        v = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{v}+{commit}" if commit else v


def run_key(model: str, predictor, task_fp: str, extra: dict[str, Any]) -> str:
    blob = json.dumps(
        {
            "model": model,
            "params": predictor.params,
            "version": predictor.version,
            "task": task_fp,
            "harness": HARNESS_VERSION,
            "extra": extra,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class Prepared:
    """What a run needs before it evaluates (see :func:`prepare`)."""

    trace: Trace
    training: list[Trace]
    predictor: Any
    spec: str
    source: str  # builtin | adapter | entry_point | file | python
    fingerprint: str  # sha256 of a file predictor's source ("" otherwise)
    task: Task
    task_fp: str
    scorers: list
    key: str
    folder: Path
    per_source: bool = False

    def close(self) -> None:
        """Stop the predictor's worker process, where it runs in one."""
        if callable(getattr(self.predictor, "close", None)):
            self.predictor.close()


def _predictor(model: ModelLike, params: dict[str, Any] | None, limits=None) -> tuple[Predictor, str, str]:
    """(configured predictor, spec, source) for what the caller handed over.

    A predictor from a file or an installed plugin is code this package does not know: it runs in
    a sandboxed worker process (:class:`bench.isolation.IsolatedPredictor`), never in this one.
    Only built-in predictors may go by a built-in's name.
    """
    from models import predictor_class
    from models.registry import THIRD_PARTY, check_name, spec_kind

    if isinstance(model, Predictor):
        if params:
            raise ValueError(
                "give the parameters to the predictor's constructor, not as params, when passing an instance"
            )
        cls = type(model)
        check_name(cls.name, cls.__qualname__)
        return model, f"{cls.__module__}:{cls.__qualname__}", "python"
    if isinstance(model, type):
        check_name(model.name, model.__qualname__)
        return model(**(params or {})), f"{model.__module__}:{model.__qualname__}", "python"
    kind = spec_kind(model)
    if kind in THIRD_PARTY:
        from .isolation import IsolatedPredictor, Limits

        predictor = IsolatedPredictor(model, params, limits=limits or Limits())
        try:
            check_name(predictor.name, model)
        except LookupError:
            predictor.close()
            raise
        return predictor, model, kind
    return predictor_class(model)(**(params or {})), model, kind


FRESH = "fresh:"


def fresh_dataset(ref: str, seed: int | None = None) -> str:
    """Train a new trace now for ``fresh:PRESET[:STEPS]`` (a tracer preset; random seed) and store it; its id.

    Data that did not exist when a predictor was written cannot have been seen by it. The tiny
    preset trains on the CPU; larger ones on the GPU where torch sees one.
    """
    import secrets
    import tempfile

    from datasets_registry.tracer.config import get_preset
    from datasets_registry.tracer.train import config_from_args, record_trace

    preset, _, steps = ref[len(FRESH) :].partition(":")
    get_preset(preset)  # a clear error for an unknown preset
    if steps and not steps.isdigit():
        raise ValueError(f"{ref}: expected fresh:PRESET or fresh:PRESET:STEPS")
    seed = secrets.randbelow(2**31) if seed is None else seed
    cfg = config_from_args(preset, seed=seed)
    device = "cpu"
    if preset != "tiny-cpu":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    trace_id = f"fresh-{preset}-s{seed}"
    with tempfile.TemporaryDirectory(prefix="moe-fresh-") as out:
        done = record_trace(
            cfg,
            int(steps) if steps else cfg.decay_steps,
            trace_id,
            device=device,
            out=out,
            checkpoint_every=0,
            save_state=False,
        )
    return done["dataset"]


def prepare(
    model: ModelLike,
    dataset: str,
    *,
    params: dict[str, Any] | None = None,
    task: Task | None = None,
    placement: str | None = None,
    limits=None,
    per_source: bool = False,
) -> Prepared:
    """Load the data, build the predictor and the scorers, and compute the run's key and folder.

    `limits` (:class:`bench.isolation.Limits`) bound the time a predictor that is not built in may take;
    `per_source` also scores per-source forecasts (:func:`bench.evaluate.evaluate`), on a dataset with sources.
    """
    task = replace(task or Task(dataset=dataset), dataset=dataset)
    trace = registry.load(dataset)
    if per_source:
        require_sources(trace)  # a clear error for a dataset without sources, before any work
    training = [registry.load(d) for d in task.train]
    predictor, spec, source = _predictor(model, params, limits)
    if per_source and getattr(predictor, "refuses_sources", ""):
        predictor.close()
        raise ValueError(predictor.refuses_sources)
    task_fp = task.fingerprint(trace.fingerprint, tuple(t.fingerprint for t in training))
    scorers = []
    if placement:
        from .placement import make_scorer

        scorers.append(make_scorer(placement, trace.experts))
    fingerprint = source_fingerprint(spec) if source == "file" else ""
    # per_source enters the key only when set, so that the keys of every other run stay what they were
    key = run_key(spec, predictor, task_fp, {"placement": placement, "source": fingerprint,
                                             **({"per_source": True} if per_source else {})})
    return Prepared(trace, training, predictor, spec, source, fingerprint, task, task_fp, scorers, key, run_folder(key),
                    per_source)


def hardware() -> str:
    """Where this process computes: the processor, the cores it may use and, once torch is loaded, the GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = f"{cpu}, {len(os.sched_getaffinity(0))} cores"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out += f", {torch.cuda.get_device_name(0)}"
    return out


def source_fingerprint(spec: str) -> str:
    """sha256 of a file predictor's source (``path/file.py:Class``): two files of one name are two models."""
    path = Path(spec.rpartition(":")[0])
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def cached_result(folder: Path) -> RunResult | None:
    """The stored result in `folder`, or None; one that cannot be trusted is set aside with a warning."""
    path = folder / "result.json"
    if not path.exists():
        return None
    try:
        return RunResult.load(path)
    except ResultError as exc:
        warnings.warn(f"{exc}; recomputing the run", RuntimeWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        return None


def _window_forecasts(ev: Evaluation, frame, trace: Trace, H: int) -> WindowForecasts:
    origin_steps = np.array(sorted(ev.window_forecasts[H]))
    predicted = np.array([ev.window_forecasts[H][s] for s in origin_steps])  # [n, L, E]
    recs = np.searchsorted(trace.steps, origin_steps)
    lengths = frame[frame["horizon"] == H].drop_duplicates("origin").set_index("origin")["records"]
    n = lengths.reindex(recs).to_numpy()
    csum = np.concatenate([np.zeros((1,) + trace.shape[1:]), np.cumsum(trace.proportions, axis=0)])
    actual = (csum[recs + n] - csum[recs]) / n[:, None, None]
    return WindowForecasts(H, origin_steps, predicted, actual)


def _artifacts(ev: Evaluation, frame, trace: Trace, title: str, folder: Path) -> list[str]:
    """Per-origin results (parquet), window forecasts per horizon (npz) and plots; returns their file names."""
    from . import plots

    files = []
    if not frame.empty:
        frame.to_parquet(folder / "origins.parquet", index=False)
        per_layer(frame, "error_rate").to_csv(folder / "per_layer_error_rate.csv")
        files += [
            folder / "origins.parquet",
            folder / "per_layer_error_rate.csv",
            plots.error_over_steps(frame, title, folder / "error_over_steps.png"),
            plots.per_layer_errors(frame, title, folder / "per_layer_errors.png"),
        ]
        windows = {H: _window_forecasts(ev, frame, trace, H) for H in sorted(ev.window_forecasts)}
        files += [w.save(folder / window_forecasts_file(H)) for H, w in windows.items()]
    if ev.window_forecasts:  # no forecast to plot when every origin failed
        w = windows[min(windows)]
        layer = int(np.argmax(trace.proportions.max(axis=2).mean(axis=0)))
        hot = [int(e) for e in np.argsort(-trace.proportions[:, layer].mean(axis=0))[:4]]
        files.append(
            plots.hottest_experts(
                w.origin_steps,
                w.predicted[:, layer],
                w.actual[:, layer],
                ev.layer_names[layer],
                hot,
                w.horizon,
                title,
                folder / "hottest_experts.png",
            )
        )
    if ev.failures:
        (folder / "failures.json").write_text(json.dumps(ev.failures, indent=2))
        files.append(folder / "failures.json")
    return [Path(f).name for f in files]


def _extras(predictor, folder: Path) -> Extras:
    hook = getattr(predictor, "mlflow_extras", None)
    if not callable(hook):
        return Extras()
    got = hook(folder) or {}
    names = tuple(
        Path(p).relative_to(folder).as_posix() if Path(p).is_relative_to(folder) else str(p)
        for p in got.get("artifacts", ())
    )
    return Extras.from_dict({**got, "artifacts": names})


def run(
    model: ModelLike, dataset: str, *, track: bool = True, tracking_uri: str | None = None, **options: Any
) -> RunResult:
    """Evaluate `model` on `dataset` and log it to MLflow (unless `track` is False); returns the result.

    `options` are those of :func:`compute` (params, task, placement, per_source, force, progress). A cached
    result not yet in MLflow (its logging was interrupted) is logged now. ``fresh:PRESET`` as the
    dataset trains a new trace first (:func:`fresh_dataset`).
    """
    if dataset.startswith(FRESH):
        dataset = fresh_dataset(dataset)
        options["task"] = replace(options.get("task") or Task(dataset=dataset), dataset=dataset)
    result = compute(model, dataset, track=track, **options)
    if track and not result.mlflow_run_id:
        result = log(result, tracking_uri)
    return result


def compute(
    model: ModelLike,
    dataset: str,
    *,
    params: dict[str, Any] | None = None,
    task: Task | None = None,
    placement: str | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    track: bool = False,
    limits=None,
    per_source: bool = False,
) -> RunResult:
    """Evaluate and store the result under the run's folder, without touching MLflow.

    Safe to call in worker processes: the driver logs with :func:`log`. With `track`, the run is
    marked as waiting for MLflow until :func:`log` succeeds, so that a run whose logging never
    happened (a crash in between) is logged by the next command that looks (:func:`log_pending`).
    """
    prep = prepare(model, dataset, params=params, task=task, placement=placement, limits=limits, per_source=per_source)
    try:
        with run_lock(prep.key):  # one process computes a run; another asking for it waits, then reads it
            folder = prep.folder
            if force and folder.exists():
                shutil.rmtree(folder)
            cached = cached_result(folder)
            if cached is not None:
                if track and not cached.mlflow_run_id:
                    (folder / PENDING_LOG).touch()
                return cached
            folder.mkdir(parents=True, exist_ok=True)
            if track:
                (folder / PENDING_LOG).touch()
            return _evaluate(prep, placement, progress)
    finally:
        prep.close()


def task_floors(prep: Prepared) -> dict:
    """The hindsight floors of the run's task (bench.hindsight), computed once per task and kept in the data home."""
    from .hindsight import cached_floors

    path = registry.data_home() / "floors" / f"{prep.task_fp.split(':')[-1]}.npz"
    return cached_floors(prep.trace.proportions, prep.trace.steps, prep.task, path)


def with_hindsight(ev: Evaluation, floors: dict):
    """The evaluation's rows (pandas) with each (origin, layer)'s hindsight floor beside its noise floor."""
    import pandas as pd

    frame = ev.frame()
    if frame.empty:
        return frame
    parts = []
    for H, f in floors.items():
        hind = f.hindsight
        parts.append(pd.DataFrame({"horizon": H, "origin": np.repeat(f.origins, hind.shape[1]),
                                   "layer": np.tile(np.arange(hind.shape[1]), len(f.origins)),
                                   "hindsight_floor": hind.ravel()}))
    return frame.merge(pd.concat(parts), on=["horizon", "origin", "layer"], how="left", validate="many_to_one")


def _verdicts(ev: Evaluation, floors: dict, prep: Prepared) -> dict:
    """The fair-play test at every horizon (bench.fairplay), as the result records it."""
    from . import fairplay
    from .results import Verdict

    token_choice = prep.trace.card.model.router != "expert-choice"
    out = {}
    for H, v in fairplay.judge(ev, floors, prep.task.stride, token_choice).items():
        stats = {k: val for k, val in v.to_dict().items() if k not in ("disqualified", "reasons")}
        out[H] = Verdict(v.disqualified, tuple(v.reasons), stats)
    return out


def _evaluate(prep: Prepared, placement: str | None, progress) -> RunResult:
    folder = prep.folder
    floors = task_floors(prep)
    ev = evaluate(prep.trace, prep.predictor, prep.task, prep.training, scorers=prep.scorers,
                  journal=folder / "journal.jsonl", progress=progress, per_source=prep.per_source)
    frame = with_hindsight(ev, floors)
    verdicts = _verdicts(ev, floors, prep)
    metrics = list(METRICS) + [c for c in frame.columns if c not in METRICS and c not in ROW_KEYS]
    predictor, trace = prep.predictor, prep.trace
    result = RunResult(
        run_key=prep.key,
        model=predictor.name or prep.spec,
        model_spec=prep.spec,
        model_version=predictor.version,
        model_source=prep.source,
        model_fingerprint=prep.fingerprint,
        params=predictor.params,
        dataset=trace.id,
        dataset_version=trace.card.version,
        dataset_fingerprint=trace.fingerprint,
        task=prep.task,
        task_fingerprint=prep.task_fp,
        placement=placement,
        horizons={H: h.replace(verdict=verdicts[H]) if H in verdicts else h
                  for H, h in summarize(frame, ev.failures, prep.task.horizons, metrics, trace.layers).items()},
        seconds=round(ev.seconds, 3),
        harness_version=HARNESS_VERSION,
        code_version=code_version(),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        artifacts=tuple(_artifacts(ev, frame, trace, f"{predictor.name} on {trace.id}", folder)),
        extras=_extras(predictor, folder),
        isolation=getattr(predictor, "isolation", "in-process"),
        timings={call: round(seconds, 3) for call, seconds in ev.timings.items()},
        hardware=hardware(),
    )
    result.save(folder)
    return result


def run_lock(key: str):
    """The file lock that serialises computing and logging the run with this key across processes."""
    from filelock import FileLock

    runs_dir().mkdir(parents=True, exist_ok=True)
    return FileLock(str(runs_dir() / f".{key}.lock"))


def log(result: RunResult, tracking_uri: str | None = None) -> RunResult:
    """Log a computed run to MLflow, once: the run id is stored with the result, and a run another
    process logged meanwhile is not logged again."""
    from . import tracking

    folder = run_folder(result.run_key)
    with run_lock(result.run_key):
        stored = cached_result(folder)
        if stored is not None and stored.mlflow_run_id and tracking.has_run(stored.mlflow_run_id, tracking_uri):
            return stored.replace(cached=result.cached)
        files = [folder / name for name in result.artifacts + result.extras.artifacts]
        logged = tracking.log_result(result, files, tracking_uri)
        if folder.exists():
            logged.save(folder)
            (folder / PENDING_LOG).unlink(missing_ok=True)
    return logged


def stored_results() -> list[RunResult]:
    """Every computed run in the data home whose result can be trusted (others are skipped with a warning)."""
    out = []
    for path in sorted(runs_dir().glob("*/result.json")) if runs_dir().is_dir() else []:
        found = cached_result(path.parent)
        if found is not None:
            out.append(found)
    return out


def log_pending(tracking_uri: str | None = None) -> list[str]:
    """Log the computed runs that were meant for MLflow but never got there (a crash, a failed write)."""
    said = []
    for result in stored_results():
        if (run_folder(result.run_key) / PENDING_LOG).exists():
            logged = log(result, tracking_uri)
            said.append(
                f"logged run {result.run_key} ({result.model} on {result.dataset}), computed earlier, "
                f"to MLflow as {logged.mlflow_run_id}"
            )
    return said
