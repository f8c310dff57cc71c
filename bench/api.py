"""The Python API: what the CLI does, for notebooks and scripts.

    from bench import run
    result = run("darts:ExponentialSmoothing", "smartmoe-ae", horizons=[1000])
    frame = result.to_frame(per_origin=True)          # one row per (horizon, origin, layer)
    frame.groupby("origin_step").error_rate.mean().plot()

`run` takes what `--model` takes, or a Predictor subclass or instance defined in the notebook;
it returns the typed :class:`~bench.results.RunResult` (cached runs are reused as on the CLI).
"""

from __future__ import annotations

from typing import Any, Iterable

from .results import RunResult
from .runner import ModelLike
from .task import StateConfig, Task


def run(model: ModelLike, dataset: str | None = None, *, horizons: Iterable[int] = (1000, 2000), stride: int = 100,
        params: dict[str, Any] | None = None, train: Iterable[str] = (), placement: str | None = None,
        task: Task | None = None, force: bool = False, track: bool = True,
        tracking_uri: str | None = None, per_source: bool = False) -> RunResult:
    """Evaluate `model` over the rolling origins of `dataset` (default: the built-in default trace).

    `horizons` and `stride` are in iterations; `train` names whole training traces; `task` overrides
    all three. `per_source` also scores per-source forecasts (a dataset with sources; docs/protocol.md).
    The run is logged to MLflow unless `track` is False.
    """
    from datasets_registry.registry import DEFAULT_DATASET

    from . import runner

    dataset = dataset or DEFAULT_DATASET
    task = task or Task(dataset=dataset, horizons=tuple(horizons), stride=stride, train=tuple(train),
                        states=StateConfig())
    return runner.run(model, dataset, params=params, task=task, placement=placement, force=force, track=track,
                      tracking_uri=tracking_uri, per_source=per_source)


def load_results(dataset: str | None = None, model: str | None = None, *, tracking_uri: str | None = None,
                 source: str = "local") -> list[RunResult]:
    """Results of earlier runs: ``source="local"`` reads the data home's run folders, ``"mlflow"`` the store.

    `dataset` (``name`` or ``name@version``) and `model` (a predictor name) filter them.
    """
    from . import runner, tracking

    if source == "local":
        results = runner.stored_results()
    elif source == "mlflow":
        results = tracking.load_results(tracking_uri)
    else:
        raise ValueError(f"source must be 'local' or 'mlflow', got {source!r}")
    name, _, version = (dataset or "").partition("@")
    return [r for r in results
            if (not name or r.dataset == name) and (not version or str(r.dataset_version) == version.lstrip("v"))
            and (not model or r.model == model)]
