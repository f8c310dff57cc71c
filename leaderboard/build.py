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
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Iterable, Mapping

from bench.results import RunResult
from bench.states import STATES

BASELINE = "sw_avg"
#: Summary metrics shown as {all, transient, stable}; placement ones only where runs have them.
ERROR_METRICS = ("error_rate", "window_error")
PLACEMENT_METRICS = ("gap_closed", "layer_time_gain", "drop_rate")


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


def build(
    results: Iterable[RunResult],
    origins: Mapping[str, Any] | None = None,
    superseded: Iterable[tuple[RunResult, RunResult]] = (),
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """The leaderboard as one JSON-able document, from results only (see the module docstring).

    `origins` maps a run key to its per-origin rows (pandas), for the plots only: the numbers and
    ranks come from the results. Disqualified results are listed, never ranked.
    """
    origins = origins or {}
    results = list(results)
    disqualified = [r for r in results if r.disqualified]
    runs = [r for r in results if not r.disqualified]
    per_name: dict[str, set] = {}
    for r in runs:
        per_name.setdefault(r.model, set()).add(model_id(r))
    labels = {model_id(r): _label(r, len(per_name[r.model]) > 1) for r in runs}

    groups: dict[tuple, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(group_of(r), []).append(r)

    tables, per_layer, curves = [], [], []
    logs: dict[tuple, dict[str, list[float]]] = {mid: {s: [] for s in STATES} for mid in labels}
    head2head: dict[tuple, list[float]] = {mid: [] for mid in labels}
    cell_ranks: dict[tuple, list[float]] = {mid: [] for mid in labels}
    for gkey in sorted(groups):
        members = sorted(groups[gkey], key=lambda r: labels[model_id(r)])
        base = baseline_of(members, baseline)
        for H in sorted({H for r in members for H in r.horizons}):
            cell = [r for r in members if H in r.horizons and r.value(H, "error_rate") is not None]
            errs = [r.value(H, "error_rate") for r in cell]
            rows = []
            for r, e, rk in zip(cell, errs, _ranks(errs)):
                mid = model_id(r)
                cell_ranks[mid].append(rk)
                head2head[mid] += [
                    1.0 if e < o else 0.5 if e == o else 0.0 for other, o in zip(cell, errs) if other is not r
                ]
                skill = {}
                for s in STATES:
                    ratios = _layer_log_ratios(r, base, H, s) if base is not None and H in base.horizons else []
                    logs[mid][s] += ratios
                    skill[s] = 1 - math.exp(sum(ratios) / len(ratios)) if ratios else None
                h = r.horizons[H]
                rows.append(
                    {
                        "rank": rk,
                        "model": r.model,
                        "label": labels[mid],
                        "params": dict(r.params),
                        "model_fingerprint": r.model_fingerprint,
                        **{m: h.metrics[m].to_dict() if m in h.metrics else None for m in ERROR_METRICS},
                        "noise_floor": h.metrics["noise_floor"].to_dict() if "noise_floor" in h.metrics else None,
                        "placement": {m: h.metrics[m].to_dict() for m in PLACEMENT_METRICS if m in h.metrics},
                        "skill": skill,
                        "n_origins": h.origins,
                        "failed_origins": h.failures,
                        "seconds": r.seconds,
                        "run_id": r.mlflow_run_id,
                        "run_key": r.run_key,
                    }
                )
                _plots(origins.get(r.run_key), gkey, H, labels[mid], per_layer, curves)
            rows.sort(key=lambda row: (row["rank"], row["label"]))
            tables.append(
                {
                    "dataset": gkey[0],
                    "dataset_version": gkey[1],
                    "task_fingerprint": gkey[2],
                    "task": {k: str(v) for k, v in members[0].task.to_dict().items()},
                    "horizon": H,
                    "baseline": None if base is None else labels[model_id(base)],
                    "noise_floor": next((row["noise_floor"] for row in rows if row["noise_floor"]), None),
                    "rows": rows,
                }
            )

    ranking = []
    for mid, label in labels.items():
        skill = {s: (1 - math.exp(sum(v) / len(v)) if v else None) for s, v in logs[mid].items()}
        h2h = head2head[mid]
        ranking.append(
            {
                "label": label,
                "model": mid[0],
                "model_fingerprint": mid[1],
                "params": json.loads(mid[2]),
                "skill": skill,
                "win_rate": sum(h2h) / len(h2h) if h2h else None,
                "mean_rank": sum(cell_ranks[mid]) / len(cell_ranks[mid]) if cell_ranks[mid] else None,
                "cells": len(cell_ranks[mid]),
                "layer_comparisons": len(logs[mid]["all"]),
                "datasets": sorted({f"{r.dataset}@{r.dataset_version}" for r in runs if model_id(r) == mid}),
            }
        )
    ranking.sort(
        key=lambda e: (
            e["skill"]["all"] is None,
            -(e["skill"]["all"] or 0.0),
            e["win_rate"] is None,
            -(e["win_rate"] or 0.0),
            e["label"],
        )
    )
    for i, e in enumerate(ranking, 1):
        e["rank"] = i
    return {
        "baseline": baseline,
        "ranking": ranking,
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
    results = select(tracking.load_results(tracking_uri, on_skip=warn), datasets, models, only)
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


__all__ = [
    "build",
    "from_store",
    "select",
    "newest",
    "identity",
    "model_id",
    "BASELINE",
    "ERROR_METRICS",
    "PLACEMENT_METRICS",
]
