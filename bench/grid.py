"""A benchmark grid from one YAML file: datasets x models x parameter sets x tasks.

See docs/scaling.md for the file format and examples/grid.yaml for an example. Every
combination is one run (:class:`bench.executors.RunSpec`); runs go through
:func:`bench.executors.run_all`, so finished runs are reused, interrupted ones resume and a
rerun of the same file computes only what is missing.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .executors import EXECUTORS, RunSpec
from .task import StateConfig, Task

TASK_KEYS = ("horizons", "stride", "min_history", "first_origin", "refit", "train", "states")
RUN_KEYS = ("executor", "address", "workers", "chunk", "retries", "force", "track", "tracking_uri", "placement")


@dataclass
class GridConfig:
    datasets: list[str]
    models: list[dict[str, Any]]  # {"name": ..., "params": {name: [values]}}
    tasks: list[dict[str, Any]]  # Task keyword arguments, one per horizon set
    placement: str | None = None
    executor: str = "local"
    address: str | None = None
    workers: int | None = None
    chunk: int | None = None  # origins per chunk; None = auto, 0 = whole runs
    retries: int = 2
    force: bool = False
    track: bool = True
    tracking_uri: str | None = None
    source: str = field(default="", repr=False)

    def specs(self) -> list[RunSpec]:
        """Every run of the grid, in a fixed order (dataset, model, parameters, task)."""
        out = []
        for dataset in self.datasets:
            for model in self.models:
                for params in param_sets(model.get("params") or {}):
                    for task in self.tasks:
                        out.append(
                            RunSpec.of(model["name"], dataset, params, Task(dataset=dataset, **task), self.placement)
                        )
        return out


def check(specs: list[RunSpec]) -> None:
    """Fail now, before any worker starts, on an unknown dataset or model or a bad parameter."""
    from datasets_registry import registry
    from models import predictor_class

    for dataset in sorted({s.dataset for s in specs} | {t for s in specs for t in s.task.train}):
        registry.resolve(dataset)  # builds a public dataset here, once, not in every worker
    for s in specs:
        predictor_class(s.model)(**dict(s.params))


def param_sets(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """The cartesian product of the listed values (a scalar is one value; [[a, b]] is the list [a, b])."""
    names = sorted(grid)
    choices = [v if isinstance(v, list) else [v] for v in (grid[n] for n in names)]
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def _fail(source: str, msg: str):
    raise ValueError(f"{source}: {msg}")


def parse(data: dict[str, Any], source: str = "<grid>") -> GridConfig:
    """Check a grid document and turn it into a :class:`GridConfig`."""
    if not isinstance(data, dict):
        _fail(source, "a grid file is a mapping (datasets:, models:, horizons:, ...)")
    known = {"datasets", "models", *TASK_KEYS, *RUN_KEYS}
    unknown = sorted(set(data) - known)
    if unknown:
        _fail(source, f"unknown key(s) {unknown}; known: {sorted(known)}")
    datasets = data.get("datasets")
    if isinstance(datasets, str):
        datasets = [datasets]
    if not datasets or not all(isinstance(d, str) for d in datasets):
        _fail(source, "`datasets:` must list dataset ids")
    models = []
    for m in data.get("models") or _fail(source, "`models:` must list models"):
        m = {"name": m} if isinstance(m, str) else m
        if not isinstance(m, dict) or "name" not in m or set(m) - {"name", "params"}:
            _fail(source, f"a model is a name or {{name: ..., params: {{key: [values]}}}}, got {m!r}")
        if not isinstance(m.get("params") or {}, dict):
            _fail(source, f"{m['name']}: `params:` must map parameter names to values or lists of values")
        models.append(m)
    horizons = data.get("horizons", [1000, 2000])
    horizons = [horizons] if isinstance(horizons, int) else horizons
    horizon_sets = horizons if horizons and all(isinstance(h, list) for h in horizons) else [horizons]
    base = {k: data[k] for k in TASK_KEYS if k in data and k != "horizons"}
    if "states" in base:
        base["states"] = StateConfig(**base["states"])
    if "train" in base:
        base["train"] = tuple(base["train"])
    tasks = [{**base, "horizons": tuple(h)} for h in horizon_sets]
    for t in tasks:
        Task(dataset="-", **t)  # raises on a bad task now, not in a worker
    run = {k: data[k] for k in RUN_KEYS if k in data}
    if run.get("chunk") == "auto":
        run["chunk"] = None
    if run.get("executor", "local") not in EXECUTORS:
        _fail(source, f"executor must be one of {EXECUTORS}, got {run['executor']!r}")
    return GridConfig(datasets=list(datasets), models=models, tasks=tasks, source=source, **run)


def load(path: str | Path) -> GridConfig:
    import yaml

    path = Path(path)
    return parse(yaml.safe_load(path.read_text()), str(path))


def override(config: GridConfig, **changes: Any) -> GridConfig:
    """A copy with the given fields changed (None leaves a field as it is)."""
    names = {f.name for f in fields(GridConfig)}
    kept = {f.name: getattr(config, f.name) for f in fields(GridConfig)}
    kept.update({k: v for k, v in changes.items() if k in names and v is not None})
    return GridConfig(**kept)
