"""The committed board in placement terms: the best zoo model against the best engine estimator in gap closed and
modelled step time, with paired bootstrap intervals.

The committed runs were made without ``--placement`` (the spec is part of a run's cache key, and rerunning the zoo
costs hours of CPU), but every run keeps its horizon-mean forecast at each origin in the data home
(``window_forecasts_h*.npz``), and a placement depends on the forecast only through that mean. :func:`score`
places those forecasts with :data:`SPEC` and scores them on the trace (:func:`bench.placement.score_windows`: what
``--placement`` computes during a run); :func:`save` writes the per-origin means over layers to
``leaderboard/placement.json.gz`` (``python benchmarks/engines_placement.py --write``). From that file and the
results, the comparison (:func:`versus_engines`) is a pure function, as the rest of the board.

Per table (dataset, task, horizon) the best of each kind is the one with the highest gap closed (the share of the
static-to-oracle imbalance gap the forecast-driven placement closes, :data:`bench.placement.DERIVED`). The origins
are resampled as the errors are (:func:`leaderboard.stats.resample_means`: the same blocks and seed), and per
resample the ratio metrics are recomputed from the resampled means, as the run summaries derive them.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from bench.results import RunResult

from . import stats

#: The placement the committed runs' forecasts are scored with: 8 devices and 8 redundant replicas (fits every trace
#: of the suite: 8 to 128 experts), on the default hardware of :class:`bench.steptime.StepTimeModel`.
SPEC = "G=8,R=8"
PATH = Path(__file__).resolve().parent / "placement.json.gz"
FORMAT, FORMAT_VERSION = "moe-load-bench placement scores", 1
#: Per run and origin (means over layers): the forecast's placement.
OWN = ("imbalance", "layer_time_us", "drop_rate")
#: Per table and origin: the static and oracle placements, the same for every run.
FIXED = ("imbalance_static", "imbalance_oracle", "layer_time_static_us", "layer_time_oracle_us", "drop_rate_static",
         "drop_rate_oracle")


class PlacementScoresError(ValueError):
    """A placement-scores file that cannot be used; the message names the file and the problem."""


def _cell_key(dataset: str, version: int | str, task_fingerprint: str, horizon: int) -> tuple:
    return (dataset, str(version), task_fingerprint, int(horizon))


def _rounded(values: np.ndarray, have: np.ndarray | None = None) -> list[float | None]:
    """Seven significant digits (the file stays small, and the board is built from the file as written); None
    where `have` is False (an origin the run has no forecast at)."""
    values = np.asarray(values, dtype=np.float64)
    have = np.ones(len(values), dtype=bool) if have is None else have
    return [float(f"{x:.7g}") if h else None for x, h in zip(values, have)]


def score(results: Iterable[RunResult], spec: str = SPEC, say: Callable[[str], None] = lambda s: None,
          previous: Mapping | None = None) -> dict:
    """Score the stored forecasts of `results` (in this data home) as placements: the document :func:`save` writes.

    A run without stored forecasts raises FileNotFoundError naming it; at an origin where a run failed (it has no
    forecast there) its scores are None. With `previous` (:func:`load`'s document, of the same spec), a run it
    already scores at the same origins keeps those scores and needs no forecasts here: only the runs it lacks
    are scored (a run's scores depend on its forecasts and the trace alone, both pinned by its run key and the
    dataset's fingerprint). Runs of `previous` that are not in `results` are dropped.
    """
    from bench.placement import PlacementSpec, score_windows
    from bench.task import rolling_origins
    from datasets_registry import registry

    parsed = PlacementSpec.parse(spec)
    if previous is not None and previous.get("spec") != parsed.describe():
        previous = None  # scored with another placement: nothing to keep
    cells: dict[tuple, list[RunResult]] = {}
    for r in results:
        for H in r.horizons:
            cells.setdefault(_cell_key(r.dataset, r.dataset_version, r.task_fingerprint, H), []).append(r)
    out = []
    for key, all_runs in sorted(cells.items()):
        dataset, version, task_fp, H = key
        kept_cell = (previous or {}).get("index", {}).get(key)
        kept = {r.run_key: kept_cell["runs"][r.run_key] for r in all_runs
                if kept_cell and r.run_key in kept_cell["runs"]}
        runs = [r for r in all_runs if r.run_key not in kept]
        if not runs:
            say(f"{dataset}@{version} horizon {H}: {len(kept)} runs kept")
            out.append({**{k: v for k, v in kept_cell.items() if k != "runs"}, "runs": kept})
            continue
        trace = registry.load(f"{dataset}@{version}")
        if trace.card.fingerprint != runs[0].dataset_fingerprint:
            raise ValueError(f"{dataset}@{version}: the local trace has fingerprint {trace.card.fingerprint}, the "
                             f"runs were made on {runs[0].dataset_fingerprint}")
        origins = rolling_origins(trace.steps, runs[0].task)[H]
        steps = trace.steps[origins.records]
        estimates, present = [], []
        for r in runs:
            stored = r.forecasts(H)
            at = np.searchsorted(steps, stored.origin_steps)
            if not np.isin(stored.origin_steps, steps).all():
                raise ValueError(f"run {r.run_key} ({r.model} on {dataset}, horizon {H}): forecasts at origins "
                                 f"its task does not have")
            estimate = np.full((len(steps), trace.layers, trace.experts), 1.0 / trace.experts)  # scored, not kept
            estimate[at] = stored.predicted
            estimates.append(estimate)
            present.append(np.isin(steps, stored.origin_steps))
        if kept and kept_cell["origin_steps"] != [int(s) for s in steps]:
            raise ValueError(f"{dataset}@{version} horizon {H}: the previous scores are at other origins than the "
                             f"task's; score every run again")
        say(f"{dataset}@{version} horizon {H}: {len(runs)} runs x {len(steps)} origins scored, {len(kept)} kept")
        fixed, own = score_windows(trace, origins.records, origins.lengths, estimates, parsed)
        scored = {r.run_key: {"model": r.model, **{k: _rounded(m[k].mean(axis=1), have) for k in OWN}}
                  for r, m, have in zip(runs, own, present)}
        out.append({
            "dataset": dataset, "dataset_version": version, "task_fingerprint": task_fp, "horizon": H,
            "origin_steps": [int(s) for s in steps],
            **{k: _rounded(fixed[k].mean(axis=1)) for k in FIXED},
            "runs": {r.run_key: kept.get(r.run_key) or scored[r.run_key] for r in all_runs},
        })
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": parsed.describe(),
            "hardware": dict(parsed.hardware.__dict__), "cells": out}


def save(doc: dict, path: Path = PATH) -> Path:
    path.write_bytes(gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), mtime=0))
    return path


def load(path: Path = PATH) -> dict:
    """The scores :func:`save` wrote, checked; :class:`PlacementScoresError` names the file and the problem."""
    try:
        doc = json.loads(gzip.decompress(Path(path).read_bytes()))
    except (OSError, EOFError, ValueError) as exc:
        raise PlacementScoresError(f"{path}: not a gzip-compressed JSON placement-scores file ({exc})") from None
    return load_document(doc, str(path))


def load_document(doc: Any, source: str = "<placement scores>") -> dict:
    """`doc` (as :func:`score` makes it) checked, with an ``index`` of its cells by (dataset, version, task,
    horizon)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise PlacementScoresError(f"{source}: not a {FORMAT!r} file of version {FORMAT_VERSION}")
    for i, cell in enumerate(doc.get("cells") or []):
        n = len(cell.get("origin_steps") or ())
        runs = cell.get("runs")
        series = [cell.get(k) for k in FIXED] + [run.get(k) for run in (runs or {}).values() for k in OWN]
        if not n or not isinstance(runs, dict) or any(not isinstance(s, list) or len(s) != n for s in series):
            raise PlacementScoresError(f"{source}: cell {i} ({cell.get('dataset')}, horizon {cell.get('horizon')}) "
                                       f"lacks a series or has one of another length than its {n} origins")
    return {**doc, "index": {_cell_key(c["dataset"], c["dataset_version"], c["task_fingerprint"], c["horizon"]): c
                             for c in doc["cells"]}}


def from_origins(results: Iterable[RunResult], origins: Mapping[str, Any]) -> dict | None:
    """The scores document of runs made with ``--placement``, from their per-origin rows (None without any).

    Those rows already hold the placement metrics per (origin, layer); of several specs, the one most runs used
    counts. At an origin a run failed, its scores are None.
    """
    from collections import Counter

    runs = [r for r in results if r.placement and origins.get(r.run_key) is not None
            and set(OWN + FIXED) <= set(origins[r.run_key].columns)]
    if not runs:
        return None
    spec = Counter(r.placement for r in runs).most_common(1)[0][0]
    cells: dict[tuple, dict] = {}
    for r in sorted((r for r in runs if r.placement == spec), key=lambda r: r.run_key):
        frame = origins[r.run_key]
        for H, rows in frame[~frame["failed"].astype(bool)].groupby("horizon"):
            means = rows.groupby("origin_step")[list(OWN + FIXED)].mean()  # over layers
            key = _cell_key(r.dataset, r.dataset_version, r.task_fingerprint, H)
            cell = cells.setdefault(key, {"steps": set(), "fixed": {}, "runs": {}})
            cell["steps"] |= {int(s) for s in means.index}
            cell["fixed"].update({int(s): means.loc[s, list(FIXED)].to_numpy() for s in means.index})
            cell["runs"][r.run_key] = (r.model, means)
    out = []
    for (dataset, version, task_fp, H), cell in sorted(cells.items()):
        steps = sorted(cell["steps"])
        fixed = np.array([cell["fixed"][s] for s in steps])
        out.append({
            "dataset": dataset, "dataset_version": version, "task_fingerprint": task_fp, "horizon": H,
            "origin_steps": steps, **{k: _rounded(fixed[:, i]) for i, k in enumerate(FIXED)},
            "runs": {key: {"model": model, **{k: _rounded(means[k].reindex(steps).to_numpy(),
                                                          np.isin(steps, means.index)) for k in OWN}}
                     for key, (model, means) in cell["runs"].items()},
        })
    return load_document({"format": FORMAT, "format_version": FORMAT_VERSION, "spec": spec, "cells": out},
                         "the runs' per-origin rows")


def committed() -> dict | None:
    """The committed board's placement scores, or None where the file is absent."""
    return load(PATH) if PATH.exists() else None


def _gap_closed(static, forecast, oracle) -> np.ndarray:
    from bench.placement import DERIVED

    fn = DERIVED["gap_closed"][1]
    return np.array([fn(s, f, o) for s, f, o in zip(np.atleast_1d(static), np.atleast_1d(forecast),
                                                    np.atleast_1d(oracle))])


def versus_engines(cell: list[RunResult], H: int, gkey: tuple, labels: Mapping, scores: Mapping | None
                   ) -> dict[str, Any] | None:
    """The best zoo model against the best engine estimator of one table in placement terms; None where the scores
    lack the table or either kind.

    ``gap_closed`` is each one's gap closed, ``difference`` zoo less engine (positive: the zoo model closes more);
    ``layer_time_us`` each one's modelled MoE layer time, ``time_relative`` zoo / engine - 1 (negative: faster).
    Intervals are those of the paired block bootstrap; the verdict is on gap closed (*beats*: the interval lies
    above 0), ``time_verdict`` on step time (*faster*: below 0); neither where one resampled block spans every
    origin of the table (every resample is the whole sample: no interval). Runs without a forecast at every
    origin of the table (failed origins) cannot be paired and are ``left_out``.
    """
    from .build import is_engine, model_id, tie_order

    found = (scores or {}).get("index", {}).get(_cell_key(*gkey, H))
    if found is None:
        return None
    scored = [r for r in cell if r.run_key in found["runs"]]
    runs = [r for r in scored if None not in found["runs"][r.run_key]["imbalance"]]  # failed origins: not paired
    series = {r.run_key: {k: np.asarray(found["runs"][r.run_key][k], dtype=np.float64) for k in OWN} for r in runs}
    fixed = {k: np.asarray(found[k]) for k in FIXED}
    gap = {r.run_key: float(_gap_closed(fixed["imbalance_static"].mean(), series[r.run_key]["imbalance"].mean(),
                                        fixed["imbalance_oracle"].mean())[0]) for r in runs}

    def best(kind: bool) -> RunResult | None:
        mine = [r for r in runs if is_engine(r) == kind]
        return min(mine, key=lambda r: (-gap[r.run_key] if gap[r.run_key] == gap[r.run_key] else math.inf,
                                        *tie_order(r, labels)), default=None)

    engine, zoo = best(True), best(False)
    if engine is None or zoo is None:
        return None
    e, z = series[engine.run_key], series[zoo.run_key]
    rows = np.stack([fixed["imbalance_static"], fixed["imbalance_oracle"], e["imbalance"], z["imbalance"],
                     e["layer_time_us"], z["layer_time_us"]])
    ci = time_ci = None
    if rows.shape[1] > stats.block_length(H, cell[0].task.stride):  # one block spans every origin: no spread
        boot = stats.resample_means(rows, H, cell[0].task.stride, gkey + (H,))
        difference = _gap_closed(boot[0], boot[3], boot[1]) - _gap_closed(boot[0], boot[2], boot[1])
        ci, time_ci = stats.interval(difference), stats.interval(boot[5] / boot[4] - 1)
    te, tz = float(e["layer_time_us"].mean()), float(z["layer_time_us"].mean())
    return {
        "spec": scores["spec"],
        "engine": labels[model_id(engine)], "zoo": labels[model_id(zoo)],
        "engine_gap_closed": gap[engine.run_key], "zoo_gap_closed": gap[zoo.run_key],
        "difference": gap[zoo.run_key] - gap[engine.run_key], "ci": ci,
        "verdict": None if ci is None else "beats" if ci[0] > 0 else "loses" if ci[1] < 0 else "ties",
        "engine_layer_time_us": te, "zoo_layer_time_us": tz,
        "static_layer_time_us": float(fixed["layer_time_static_us"].mean()),
        "oracle_layer_time_us": float(fixed["layer_time_oracle_us"].mean()),
        "time_relative": tz / te - 1, "time_ci": time_ci,
        "time_verdict": None if time_ci is None else "faster" if time_ci[1] < 0 else "slower" if time_ci[0] > 0
        else "ties",
        "left_out": sorted(labels[model_id(r)] for r in scored if r not in runs),
    }


__all__ = ["SPEC", "PATH", "score", "save", "load", "load_document", "from_origins", "committed", "versus_engines",
           "PlacementScoresError"]
