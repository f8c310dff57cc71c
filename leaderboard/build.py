"""The leaderboard as a pure function of run results: :func:`build` takes :class:`~bench.results.RunResult`
objects (and, for the plots, their per-origin rows) and returns one JSON-able document.

:func:`from_store` feeds it from an MLflow tracking store (the one `bench run` logs to, read through
:mod:`bench.tracking`), so the board shows what people compare in the MLflow UI.

Rules:

- A *group* is one (dataset, dataset version, task fingerprint): runs of different tasks or
  dataset versions are never compared in one table (the task fingerprint covers the data's
  fingerprint, so a new dataset version is a new task).
- A *model* is (name, source fingerprint, parameters): two predictor files with one name are two
  models. Within a group, the newest run (when its evaluation finished) of a model wins; the
  older ones are listed as *superseded*.
- A run the fair-play test disqualified (:mod:`bench.fairplay`) is never ranked; it is listed
  with its reasons.
- A *cell* is one (group, horizon). Per cell, models are ranked by ``error_rate`` (all states).
- Skill against the baseline ``sw_avg`` (with its default parameters where that run exists in
  the group, else the newest ``sw_avg`` run there): ``1 - geometric mean over (group, horizon,
  layer) of error_rate / baseline error_rate``, per layer the mean over origins (all, or the
  origins of that layer in one state). Only the cells where both were run count.
- Win rate: over every cell and every other model in it, the share of head-to-head comparisons
  of ``error_rate`` (all) won (ties count half). Mean rank: the mean of the per-cell ranks.
- The overall rank orders models by skill (all), then win rate.
- Probabilistic forecasts (runs that carry quantile scores, docs/protocol.md; the others show
  none): per cell the quantile loss scaled by sw_quantiles' at the same origins (computed in the
  run, so no reference run is needed) and the coverage of the 80% and 90% intervals; per model
  the scaled quantile loss over cells as fev aggregates scaled scores, the geometric mean of the
  ratios clipped to [``CLIP_LOW``, ``CLIP_HIGH``], and the mean coverage (:func:`probabilistic_cell`,
  :func:`probabilistic_summary`). They do not enter the rank.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from bench.results import RunResult
from bench.states import STATES

from . import placement as placement_terms
from . import stats

BASELINE = "sw_avg"
#: Summary metrics shown as {all, transient, stable}; placement ones only where runs have them.
ERROR_METRICS = ("error_rate", "window_error")
#: The floors every table shows beside the errors (docs/protocol.md).
FLOORS = ("noise_floor", "hindsight_floor")
PLACEMENT_METRICS = ("gap_closed", "layer_time_gain", "drop_rate")
#: The probabilistic scores shown, where a run has them: the quantile loss over sw_quantiles', interval coverage.
PROBABILISTIC_METRICS = ("scaled_quantile_loss", "coverage_80", "coverage_90")


def params_key(result: RunResult) -> str:
    return json.dumps(dict(result.params), sort_keys=True, default=str)


def model_id(result: RunResult) -> tuple[str, str, str]:
    """(name, source fingerprint, parameters): the row a model fills across datasets."""
    return (result.model, result.model_fingerprint, params_key(result))


def group_of(result: RunResult) -> tuple[str, str, str]:
    return (result.dataset, str(result.dataset_version), result.task_fingerprint)


def identity(result: RunResult) -> tuple:
    """What makes two runs the same comparison: their group and their model."""
    return group_of(result) + model_id(result)


def select(
    results: Iterable[RunResult],
    datasets: list[str] | None = None,
    models: list[str] | None = None,
    only: set[tuple] | None = None,
) -> list[RunResult]:
    """Filter by dataset ids (``name`` or ``name@version``), model names, or exact identities."""

    def wanted(r: RunResult) -> bool:
        if datasets and not any(_same_dataset(d, r) for d in datasets):
            return False
        if models and r.model not in models:
            return False
        return only is None or identity(r) in only

    return [r for r in results if wanted(r)]


class NoMatch(LookupError):
    """A --dataset/--model filter that selects none of the runs; the message says what there is."""


def check_selection(results: list[RunResult], selected: list[RunResult], where: str,
                    datasets: list[str] | None = None, models: list[str] | None = None) -> None:
    """Raise :class:`NoMatch` when filters select nothing, naming the datasets (with their models) `where` holds."""
    if selected or not (datasets or models):
        return
    asked = " ".join([f"--dataset {d}" for d in datasets or []] + [f"--model {m}" for m in models or []])
    if not results:
        raise NoMatch(f"no run in {where} matches {asked}: it holds no runs; run `python -m bench run` first")
    held: dict[str, set[str]] = {}
    for r in results:
        held.setdefault(f"{r.dataset}@{r.dataset_version}", set()).add(r.model)
    listing = "; ".join(f"{d} ({', '.join(sorted(m))})" for d, m in sorted(held.items()))
    raise NoMatch(f"no run in {where} matches {asked}; it holds runs on {len(held)} dataset(s), with their models: "
                  f"{listing}")


def _same_dataset(ref: str, r: RunResult) -> bool:
    name, _, version = ref.partition("@")
    return name == r.dataset and (not version or version.lstrip("v") == str(r.dataset_version))


def newest(results: Iterable[RunResult]) -> tuple[list[RunResult], list[tuple[RunResult, RunResult]]]:
    """(winners, [(superseded, by)]): the newest run of every identity wins."""
    by_id: dict[tuple, list[RunResult]] = {}
    for r in results:
        by_id.setdefault(identity(r), []).append(r)
    winners, superseded = [], []
    for runs in by_id.values():
        runs.sort(key=lambda r: (r.finished_at, r.mlflow_run_id or ""), reverse=True)
        winners.append(runs[0])
        superseded += [(old, runs[0]) for old in runs[1:]]
    return winners, superseded


def _default_params(model: str) -> str | None:
    try:
        from models import predictor_class

        return json.dumps(predictor_class(model)().params, sort_keys=True, default=str)
    except Exception:  # noqa: BLE001 - a model this installation does not have
        return None


def baseline_of(group_results: list[RunResult], baseline: str = BASELINE) -> RunResult | None:
    cands = [r for r in group_results if r.model == baseline and r.model_source == "builtin"]
    if not cands:
        return None
    default = _default_params(baseline)
    preferred = [r for r in cands if params_key(r) == default]
    return max(preferred or cands, key=lambda r: (r.finished_at, r.mlflow_run_id or ""))


def _ranks(values: list[float]) -> list[float]:
    """1 = smallest; ties share the mean of their ranks."""
    from scipy.stats import rankdata

    return [float(x) for x in rankdata(values, method="average")]


def _label(r: RunResult, ambiguous: bool) -> str:
    if not ambiguous:
        return r.model
    parts = [f"{k}={v}" for k, v in sorted(r.params.items())]
    if r.model_fingerprint:
        parts.append(f"source {r.model_fingerprint.split(':')[-1][:8]}")
    return f"{r.model}({', '.join(parts)})" if parts else r.model


def _layer_log_ratios(mine: RunResult, base: RunResult, H: int, state: str) -> list[float]:
    a = mine.horizons[H].per_layer.get("error_rate", {}).get(state, ())
    b = base.horizons[H].per_layer.get("error_rate", {}).get(state, ())
    return [math.log(max(x, 1e-12) / max(y, 1e-12)) for x, y in zip(a, b) if x is not None and y is not None]


def _plots(origins, gkey: tuple, H: int, label: str, per_layer: list, curves: list) -> None:
    """Per-layer errors and the error over training of one run in one cell, from its per-origin rows."""
    if origins is None or origins.empty:
        return
    where = {"dataset": gkey[0], "dataset_version": gkey[1], "task_fingerprint": gkey[2], "horizon": H, "label": label}
    df = origins[origins["horizon"] == H]
    for (layer, name), v in df.groupby(["layer", "layer_name"])["error_rate"].mean().items():
        per_layer.append({**where, "layer": int(layer), "layer_name": name, "error_rate": float(v)})
    c = df.groupby("origin_step").agg(
        error_rate=("error_rate", "mean"),
        noise_floor=("noise_floor", "mean"),
        transient=("state", lambda s: float((s == "transient").mean())),
    )
    curves.append(
        {**where, "origin_step": [int(x) for x in c.index], **{k: [float(x) for x in c[k]] for k in c.columns}}
    )


def probabilistic_cell(h) -> dict[str, Any] | None:
    """One run's probabilistic scores at one horizon (a :class:`bench.results.HorizonResult`), {metric: by state};
    None for a run without quantile forecasts."""
    if not all(m in h.metrics for m in PROBABILISTIC_METRICS):
        return None
    return {m: h.metrics[m].to_dict() for m in PROBABILISTIC_METRICS}


def probabilistic_summary(results: list[RunResult]) -> dict[str, Any] | None:
    """A model's probabilistic scores over the cells of its `results`: ``scaled_quantile_loss``, the geometric mean
    over cells of the clipped ratios of its quantile loss to sw_quantiles' (fev's aggregate of scaled scores; below
    1 is a better spread), and the mean ``coverage_80`` / ``coverage_90`` over cells, per state; None without any."""
    logs: dict[str, list[float]] = {s: [] for s in STATES}
    cover: dict[str, dict[str, list[float]]] = {m: {s: [] for s in STATES} for m in PROBABILISTIC_METRICS[1:]}
    for r in results:
        for H, h in r.horizons.items():
            if not in_cell(r, H) or probabilistic_cell(h) is None:
                continue
            for s in STATES:
                loss, ref = h.value("quantile_loss", s), h.value("reference_quantile_loss", s)
                if loss is not None and ref is not None:
                    logs[s].append(float(stats.clipped_log_ratio(loss, ref)))
                for m in cover:
                    if h.value(m, s) is not None:
                        cover[m][s].append(h.value(m, s))
    if not logs["all"]:
        return None
    gmean = {s: None if (v := stats.skill_of(logs[s])) is None else 1 - v for s in STATES}
    return {"scaled_quantile_loss": gmean, "cells": len(logs["all"]),
            **{m: {s: sum(v) / len(v) if v else None for s, v in by.items()} for m, by in cover.items()}}


def _aggregate(points: list[float], boots: list) -> dict[str, Any]:
    """{value, ci}: 1 - gmean of the clipped ratios whose logs are `points`; the interval from their bootstraps
    (one [resamples] array of logs per point, resampled independently per cell), where every point has one."""
    value = stats.skill_of(points)
    ci = None
    if value is not None and boots and all(b is not None for b in boots):
        logs = np.vstack([np.atleast_2d(b) for b in boots])  # [points, resamples]
        ci = stats.interval(1 - np.exp(np.nanmean(logs, axis=0)))
    return {"value": value, "ci": ci}


class _Scores:
    """What one model gathers over the cells it is ranked in."""

    def __init__(self):
        self.logs: dict[str, list[float]] = {s: [] for s in STATES}  # per-layer log error ratios vs the baseline
        self.layer_boots: list = []  # [L, resamples] per cell, or None
        self.headroom: list[float] = []
        self.headroom_boots: list = []
        self.window: list[float] = []
        self.window_boots: list = []
        self.head2head: list[float] = []
        self.ranks: list[float] = []
        self.cells = 0  # tables it has a row in (ranked there or alone)


def in_cell(r: RunResult, H: int) -> bool:
    """Whether a run has a row in its group's table at horizon `H`."""
    return H in r.horizons and r.value(H, "error_rate") is not None


def _run_command(model: str, task, dataset: str) -> str:
    return " ".join(["python -m bench run --model", model, *replace(task, dataset=dataset).run_options()])


def _comparable_sets(labels: dict, cells: list[list[tuple]]) -> list[set]:
    """The models that can be ranked together: linked by sharing a table, directly or through others."""
    parent = {mid: mid for mid in labels}

    def root(m):
        while parent[m] != m:
            parent[m] = parent[parent[m]]
            m = parent[m]
        return m

    for mids in cells:
        for other in mids[1:]:
            parent[root(other)] = root(mids[0])
    sets: dict[tuple, set] = {}
    for mid in labels:
        sets.setdefault(root(mid), set()).add(mid)
    return list(sets.values())


def is_engine(r: RunResult) -> bool:
    """Whether a run is of a serving engine's own estimator (models/engines.py), the baselines to beat."""
    from models.registry import ENGINE_ESTIMATORS

    return r.model in ENGINE_ESTIMATORS and r.model_source == "builtin"


def tie_order(run: RunResult, labels: Mapping) -> tuple[float, str]:
    """How runs of one table with equal scores are ordered: the one that took fewer seconds first (the same forecast
    for less), then by label."""
    return run.seconds, labels[model_id(run)]


def versus_engines(cell: list[RunResult], errs: list[float], H: int, sample, labels: dict) -> dict[str, Any] | None:
    """The best model of the zoo (every other model) against the best engine estimator in one table.

    "Best" is the lowest ``error_rate`` (all); between equal errors (the probabilistic predictors forecast sw_avg's
    point), the cheaper run (:func:`tie_order`). The interval is that of the paired bootstrap difference
    (zoo less engine) on the cell's shared resamples; a zoo model *beats* the engines where it lies below
    0, *loses* where above, and ties where it contains 0. Placement metrics are compared where both runs
    have them. None where the table lacks either kind.
    """
    scored = sorted(zip(errs, cell), key=lambda x: (x[0], *tie_order(x[1], labels)))
    engine = next(((e, r) for e, r in scored if is_engine(r)), None)
    zoo = next(((e, r) for e, r in scored if not is_engine(r)), None)
    if engine is None or zoo is None:
        return None
    (eb, rb), (ez, rz) = engine, zoo
    paired = sample is not None and model_id(rz) in sample.error and model_id(rb) in sample.error
    ci = sample.cell_interval(sample.difference(model_id(rz), model_id(rb))) if paired else None
    verdict = None if ci is None else "beats" if ci[1] < 0 else "loses" if ci[0] > 0 else "ties"
    placement = {m: {"zoo": rz.value(H, m), "engine": rb.value(H, m)} for m in PLACEMENT_METRICS
                 if rz.value(H, m) is not None and rb.value(H, m) is not None}
    return {"engine": labels[model_id(rb)], "engine_error": eb, "zoo": labels[model_id(rz)], "zoo_error": ez,
            "difference": ez - eb, "relative": (ez - eb) / eb if eb else None, "ci": ci, "verdict": verdict,
            "placement": placement}


def _cell(members: list[RunResult], H: int, base: RunResult | None, labels: dict, origins: Mapping[str, Any],
          gkey: tuple, scores: dict[tuple, _Scores]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The rows of one (dataset, task, horizon) table and its best zoo model against the best engine estimator;
    adds each model's comparisons to `scores`."""
    cell = [r for r in members if in_cell(r, H)]
    errs = [r.value(H, "error_rate") for r in cell]
    frames = {model_id(r): origins.get(r.run_key) for r in cell if origins.get(r.run_key) is not None}
    sample = stats.sample_cell(frames, H, cell[0].task.stride, gkey + (H,)) if frames else None
    bmid = None if base is None or H not in base.horizons else model_id(base)
    boot = sample.error if sample is not None else {}
    rows = []
    for r, e, rank in zip(cell, errs, _ranks(errs) if len(cell) > 1 else [None]):  # alone: nothing to rank against
        mid, h, sc = model_id(r), r.horizons[H], scores[model_id(r)]
        sc.cells += 1
        if rank is not None:
            sc.ranks.append(rank)
        for other, o in zip(cell, errs):
            if other is not r:
                omid = model_id(other)
                tie = e == o or (mid in boot and omid in boot and sample.tie(mid, omid))
                sc.head2head.append(0.5 if tie else 1.0 if e < o else 0.0)
        skill = {}
        for s in STATES:
            ratios = _layer_log_ratios(r, base, H, s) if bmid is not None else []
            sc.logs[s] += ratios
            skill[s] = stats.skill_of(ratios)
        versus, headroom = None, None
        if bmid is not None:
            b, paired = base.value(H, "error_rate"), mid in boot and bmid in boot
            ci = sample.cell_interval(sample.difference(mid, bmid)) if paired else None
            versus = {"difference": e - b, "ci": ci, "tie": e == b or (ci is not None and ci[0] <= 0 <= ci[1])}
            floor = h.value("hindsight_floor")
            if floor is not None:
                log_r = float(stats.clipped_log_ratio(e - floor, b - floor))
                hb = None
                if paired and sample.hindsight is not None:
                    hb = stats.clipped_log_ratio(boot[mid] - sample.hindsight, boot[bmid] - sample.hindsight)
                sc.headroom.append(log_r)
                sc.headroom_boots.append(hb)
                headroom = {"value": stats.skill_of([log_r]), "ci": None if hb is None else
                            sample.cell_interval(1 - np.exp(hb))}
            w, wb = h.value("window_error"), base.value(H, "window_error")
            if w is not None and wb is not None:
                sc.window.append(float(stats.clipped_log_ratio(w, wb)))
                sc.window_boots.append(stats.clipped_log_ratio(sample.window[mid], sample.window[bmid])
                                       if paired else None)
            sc.layer_boots.append(np.log(np.maximum(sample.layers[mid], 1e-12) / np.maximum(sample.layers[bmid],
                                                                                           1e-12)) if paired else None)
        rows.append({
            "rank": rank, "model": r.model, "label": labels[mid], "params": dict(r.params),
            "model_fingerprint": r.model_fingerprint,
            **{m: h.metrics[m].to_dict() if m in h.metrics else None for m in ERROR_METRICS + FLOORS},
            "error_rate_ci": sample.cell_interval(boot[mid]) if mid in boot else None,
            "vs_baseline": versus, "headroom": headroom,
            "placement": {m: h.metrics[m].to_dict() for m in PLACEMENT_METRICS if m in h.metrics},
            "probabilistic": probabilistic_cell(h),
            "skill": skill, "n_origins": h.origins, "failed_origins": h.failures, "seconds": r.seconds,
            "seconds_per_origin": r.seconds / h.origins if h.origins else None,
            "trained_on": list(r.task.train), "hardware": r.hardware, "run_id": r.mlflow_run_id, "run_key": r.run_key,
        })
    return rows, versus_engines(cell, errs, H, sample, labels)


def build(
    results: Iterable[RunResult],
    origins: Mapping[str, Any] | None = None,
    superseded: Iterable[tuple[RunResult, RunResult]] = (),
    baseline: str = BASELINE,
    placement_scores: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The leaderboard as one JSON-able document, from results only (see the module docstring).

    `origins` maps a run key to its per-origin rows (pandas): the intervals, ties and plots come
    from them (a model without them gets numbers and ranks but no intervals). Disqualified results
    are listed, never ranked. `placement_scores` (:func:`leaderboard.placement.load`; by default those
    the per-origin rows of runs made with ``--placement`` hold) adds, per table, the best zoo model
    against the best engine estimator in placement terms.
    """
    origins = origins or {}
    results = list(results)
    if placement_scores is None:  # runs made with --placement carry their scores per origin
        placement_scores = placement_terms.from_origins(results, origins)
    disqualified = [r for r in results if r.disqualified]
    runs = [r for r in results if not r.disqualified]
    per_name: dict[str, set] = {}
    for r in runs:
        per_name.setdefault(r.model, set()).add(model_id(r))
    labels = {model_id(r): _label(r, len(per_name[r.model]) > 1) for r in runs}
    suite = {r.dataset for r in runs}

    groups: dict[tuple, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(group_of(r), []).append(r)

    tables, per_layer, curves, cells = [], [], [], []
    scores = {mid: _Scores() for mid in labels}
    for gkey in sorted(groups):
        members = sorted(groups[gkey], key=lambda r: labels[model_id(r)])
        base = baseline_of(members, baseline)
        for H in sorted({H for r in members for H in r.horizons}):
            rows, versus = _cell(members, H, base, labels, origins, gkey, scores)
            for r in members:
                if H in r.horizons:
                    _plots(origins.get(r.run_key), gkey, H, labels[model_id(r)], per_layer, curves)
            rows.sort(key=lambda row: (row["rank"] or 0, row["label"]))
            cells.append([model_id(r) for r in members if in_cell(r, H)])
            no_baseline = None
            if base is None or H not in base.horizons:
                no_baseline = (f"no {baseline} run in this table, so no skill; add one: "
                               f"{_run_command(baseline, members[0].task, f'{gkey[0]}@{gkey[1]}')}")
            tables.append({
                "dataset": gkey[0], "dataset_version": gkey[1], "task_fingerprint": gkey[2],
                "task": {k: str(v) for k, v in members[0].task.to_dict().items()}, "horizon": H,
                "baseline": None if base is None else labels[model_id(base)], "no_baseline": no_baseline,
                **{f: next((row[f] for row in rows if row[f]), None) for f in FLOORS},
                "versus_engines": versus,
                "placement_versus_engines": placement_terms.versus_engines(
                    [r for r in members if in_cell(r, H)], H, gkey, labels, placement_scores),
                "rows": rows,
            })

    ranking = []
    for mid, label in labels.items():
        sc, mine = scores[mid], [r for r in runs if model_id(r) == mid]
        h2h = sc.head2head
        origins_run = sum(h.origins for r in mine for h in r.horizons.values())
        ranking.append({
            "label": label, "model": mid[0], "model_fingerprint": mid[1], "params": json.loads(mid[2]),
            "headroom_skill": _aggregate(sc.headroom, sc.headroom_boots),
            "window_skill": _aggregate(sc.window, sc.window_boots),
            "skill": {s: stats.skill_of(v) for s, v in sc.logs.items()},
            "skill_ci": _aggregate(sc.logs["all"], sc.layer_boots)["ci"],
            "win_rate": sum(h2h) / len(h2h) if h2h else None,
            "mean_rank": sum(sc.ranks) / len(sc.ranks) if sc.ranks else None,
            "cells": sc.cells, "layer_comparisons": len(sc.logs["all"]),
            "seconds_per_origin": sum(r.seconds for r in mine) / origins_run if origins_run else None,
            "training_seconds": sum(r.timings.get("start", 0) + r.timings.get("refit", 0) for r in mine)
            if all(r.timings for r in mine) else None,
            "hardware": sorted({r.hardware for r in mine if r.hardware}),
            "trained_on_test_data": sorted({t for r in mine for t in r.task.train} & suite),
            "datasets": sorted({f"{r.dataset}@{r.dataset_version}" for r in mine}),
            "probabilistic": probabilistic_summary(mine),
        })

    def order(e):
        primary = e["headroom_skill"]["value"]
        return (primary is None, -(primary or 0.0), e["skill"]["all"] is None, -(e["skill"]["all"] or 0.0),
                e["win_rate"] is None, -(e["win_rate"] or 0.0), e["label"])

    # Models are ranked only against models they share a table with, directly or through others (a
    # comparable set); a model alone in its tables is listed unranked, with the reason.
    by_label = {e["label"]: e for e in ranking}
    sets = [sorted((by_label[labels[mid]] for mid in group), key=order)
            for group in _comparable_sets(labels, cells)]
    sets.sort(key=lambda es: (not any(e["model"] == baseline for e in es), -len(es), es[0]["label"]))
    ranked = [es for es in sets if len(es) > 1]
    ranking, comparable = [], []
    for k, es in enumerate(ranked, 1):
        for i, e in enumerate(es, 1):
            e.update(rank=i, comparable_set=k, unranked=None)
        ranking += es
        comparable.append({"set": k, "labels": [e["label"] for e in es],
                           "datasets": sorted({d for e in es for d in e["datasets"]}),
                           "baseline": any(e["model"] == baseline for e in es)})
    for (e,) in [es for es in sets if len(es) == 1]:
        mine = [r for r in runs if labels[model_id(r)] == e["label"]]
        commands = dict.fromkeys(_run_command(baseline, r.task, f"{r.dataset}@{r.dataset_version}") for r in mine)
        add = f"add {baseline}: {'; '.join(commands)}" if e["model"] != baseline else "run another model on its tasks"
        e.update(rank=None, comparable_set=None,
                 unranked=f"the only model on {', '.join(e['datasets'])} with its task: nothing to compare it with; "
                          f"{add}")
        ranking.append(e)
    for e in ranking:
        e["skill_missing"] = None if e["skill"]["all"] is not None else (
            f"no {baseline} run shares a table with it" if e["model"] != baseline else None)
    return {
        "baseline": baseline,
        "primary": "headroom_skill",
        "ranking": ranking,
        "comparable_sets": comparable,
        "tables": tables,
        "per_layer": per_layer,
        "curves": curves,
        "superseded": _superseded(superseded, labels),
        "disqualified": [
            {
                "model": r.model,
                "dataset": f"{r.dataset}@{r.dataset_version}",
                "run_id": r.mlflow_run_id,
                "run_key": r.run_key,
                "reasons": [why for h in r.horizons.values() for why in h.verdict.reasons],
            }
            for r in sorted(disqualified, key=lambda r: (r.dataset, r.model, r.finished_at))
        ],
    }


def _superseded(pairs: Iterable[tuple[RunResult, RunResult]], labels: dict) -> list[dict[str, Any]]:
    rows = [
        {
            "label": labels.get(model_id(old), old.model),
            "dataset": old.dataset,
            "dataset_version": str(old.dataset_version),
            "task_fingerprint": old.task_fingerprint,
            "run_id": old.mlflow_run_id,
            "finished_at": old.finished_at,
            "superseded_by": by.mlflow_run_id,
        }
        for old, by in pairs
    ]
    rows.sort(key=lambda s: s["finished_at"], reverse=True)  # newest first within a (dataset, model)
    return sorted(rows, key=lambda s: (s["dataset"], s["label"]))


def from_store(
    tracking_uri: str | None = None,
    datasets: list[str] | None = None,
    models: list[str] | None = None,
    only: set[tuple] | None = None,
    baseline: str = BASELINE,
    warn: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """The leaderboard of the runs in an MLflow store: load, select, supersede, build.

    Computed runs not yet in the store (their logging was interrupted) are logged first. A run
    whose per-origin rows cannot be read is still ranked; `warn` hears about it.
    """
    from bench import runner, tracking
    from bench.results import ResultError

    for message in runner.log_pending(tracking_uri):
        warn(message)
    every = tracking.load_results(tracking_uri, on_skip=warn)
    results = select(every, datasets, models, only)
    check_selection(every, results, tracking.tracking_uri(tracking_uri), datasets, models)
    winners, superseded = newest(results)
    origins = {}
    for r in winners:
        try:
            origins[r.run_key] = tracking.origins_frame(r, tracking_uri)
        except ResultError as exc:
            warn(f"{exc}; its plots are left out")
    board = build(winners, origins, superseded, baseline)
    board["tracking_uri"] = tracking.tracking_uri(tracking_uri)
    return board


def from_submissions(
    paths: Iterable[str],
    datasets: list[str] | None = None,
    models: list[str] | None = None,
    baseline: str = BASELINE,
    placement_scores: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The leaderboard of submission files (:mod:`bench.submission`): files, or folders of ``*.json[.gz]`` files.

    Each file is loaded and checked (:func:`bench.submission.load` raises on a bad one, naming it);
    its results and per-origin rows feed :func:`build` as the store's do. A run found in several
    files counts once; of one model's runs of a task, the newest wins.
    """
    from bench import submission

    files = submission.submission_files(paths)
    runs = {}
    for path in files:
        for run in submission.load(path).runs:
            runs.setdefault((run.result.run_key, run.result.finished_at), run)
    every = [run.result for run in runs.values()]
    selected = select(every, datasets, models)
    check_selection(every, selected, f"the {len(files)} submission file(s)", datasets, models)
    winners, superseded = newest(selected)
    origins = {r.run_key: runs[(r.run_key, r.finished_at)].origins for r in winners}
    board = build(winners, origins, superseded, baseline, placement_scores)
    board["submissions"] = [str(p) for p in files]
    return board


__all__ = [
    "build",
    "from_store",
    "from_submissions",
    "select",
    "check_selection",
    "NoMatch",
    "newest",
    "identity",
    "model_id",
    "BASELINE",
    "ERROR_METRICS",
    "PLACEMENT_METRICS",
    "PROBABILISTIC_METRICS",
]
