"""Build the leaderboard from the runs logged to MLflow.

Source of truth: the MLflow tracking store (the one `bench run` logs to, :mod:`bench.tracking`),
so the leaderboard shows exactly what people compare in the MLflow UI, whichever store that is.
Each top-level, finished run of the experiment that carries the harness's tags (``model``,
``dataset``, ``dataset_version``, ``task_fingerprint``, ``run_key``) is one candidate; its summary
numbers are its ``h{H}/{metric}/{state}`` metrics and its per-layer errors come from its
``origins.parquet`` artifact.

Rules:

- A *group* is one (dataset, dataset version, task fingerprint): runs of different tasks or
  dataset versions are never compared in one table (the task fingerprint covers the data's
  fingerprint, so a new dataset version is a new task).
- Within a group, the newest run (MLflow start time) of an identical (model, params) wins; the
  older ones are listed as *superseded*.
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
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

STATES = ("all", "transient", "stable")
BASELINE = "sw_avg"
#: Summary metrics shown as {all, transient, stable}; placement ones only where runs have them.
ERROR_METRICS = ("error_rate", "window_error")
PLACEMENT_METRICS = ("gap_closed", "layer_time_gain", "drop_rate")
REQUIRED_TAGS = ("model", "dataset", "dataset_version", "task_fingerprint", "run_key")

_STATE_METRIC = re.compile(r"^h(\d+)/(.+)/(all|transient|stable)$")
_SCALAR_METRIC = re.compile(r"^h(\d+)/([^/]+)$")


@dataclass
class Run:
    """One logged run, as the leaderboard sees it."""

    run_id: str
    start_time: int  # ms since the epoch (MLflow's)
    model: str
    params: dict[str, str]  # the model's parameters, as MLflow stores them
    dataset: str
    dataset_version: str
    task_fingerprint: str
    task: dict[str, str]
    run_key: str
    horizons: dict[int, dict[str, Any]]  # H -> {metric: {state: value} | value}
    seconds: float | None = None
    failed_origins: int | None = None
    frame: Any = None  # origins.parquet (pandas), loaded for winners only

    @property
    def group(self) -> tuple[str, str, str]:
        return (self.dataset, self.dataset_version, self.task_fingerprint)

    @property
    def model_id(self) -> tuple[str, str]:
        """(model, params) identity: the row a run fills across datasets."""
        return (self.model, json.dumps(self.params, sort_keys=True))

    @property
    def identity(self) -> tuple:
        return self.group + self.model_id


def parse_metrics(metrics: dict[str, float]) -> dict[int, dict[str, Any]]:
    """MLflow metric names (``h1000/error_rate/all``, ``h1000/n_origins``) back to a summary."""
    out: dict[int, dict[str, Any]] = {}
    for name, value in metrics.items():
        m = _STATE_METRIC.match(name)
        if m:
            out.setdefault(int(m.group(1)), {}).setdefault(m.group(2), {s: None for s in STATES})[m.group(3)] = value
            continue
        m = _SCALAR_METRIC.match(name)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return out


def _client(tracking_uri: str | None):
    from bench import tracking

    mlflow = tracking._mlflow(tracking_uri)
    return mlflow.tracking.MlflowClient()


def load_runs(tracking_uri: str | None = None, experiment: str | None = None) -> list[Run]:
    """Every finished top-level benchmark run of the experiment."""
    from bench import tracking

    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment or tracking.EXPERIMENT)
    if exp is None:
        return []
    out, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=1000, page_token=token)
        for r in page:
            tags = r.data.tags
            if "mlflow.parentRunId" in tags or not all(tags.get(t) for t in REQUIRED_TAGS):
                continue
            p = r.data.params
            m = r.data.metrics
            out.append(Run(
                run_id=r.info.run_id, start_time=int(r.info.start_time or 0), model=tags["model"],
                params={k[len("model."):]: v for k, v in p.items() if k.startswith("model.")},
                dataset=tags["dataset"], dataset_version=str(tags["dataset_version"]), task_fingerprint=tags["task_fingerprint"],
                task={k[len("task."):]: v for k, v in p.items() if k.startswith("task.")}, run_key=tags["run_key"],
                horizons=parse_metrics(m), seconds=m.get("seconds"),
                failed_origins=None if m.get("failed_origins") is None else int(m["failed_origins"]),
            ))
        token = page.token
        if not token:
            return out


def load_frames(runs: Iterable[Run], tracking_uri: str | None = None) -> None:
    """Attach each run's per-origin, per-layer rows (its ``origins.parquet`` artifact)."""
    import os

    import pandas as pd

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(runs):
            try:
                path = client.download_artifacts(run.run_id, "origins.parquet", str(Path(tmp) / str(i)))
            except Exception:  # no artifact (every origin failed) or an unreachable store
                run.frame = pd.DataFrame()
                continue
            run.frame = pd.read_parquet(path)


def select(runs: list[Run], datasets: list[str] | None = None, models: list[str] | None = None,
           only: set[tuple] | None = None) -> list[Run]:
    """Filter by dataset ids (``name`` or ``name@version``), model names, or exact identities."""
    def wanted(r: Run) -> bool:
        if datasets and not any(d.partition("@")[0] == r.dataset and (not d.partition("@")[2] or d.partition("@")[2].lstrip("v") == r.dataset_version)
                                for d in datasets):
            return False
        if models and r.model not in models:
            return False
        return only is None or r.identity in only

    return [r for r in runs if wanted(r)]


def newest(runs: list[Run]) -> tuple[list[Run], list[tuple[Run, Run]]]:
    """(winners, [(superseded, by)]): the newest run of every identity wins."""
    by_id: dict[tuple, list[Run]] = {}
    for r in runs:
        by_id.setdefault(r.identity, []).append(r)
    winners, superseded = [], []
    for group in by_id.values():
        group.sort(key=lambda r: (r.start_time, r.run_id), reverse=True)
        winners.append(group[0])
        superseded += [(old, group[0]) for old in group[1:]]
    return winners, superseded


def layer_errors(frame, horizon: int, state: str) -> dict[int, float]:
    """layer -> mean over origins of error_rate (origins of that layer in `state`, or all)."""
    if frame is None or frame.empty:
        return {}
    df = frame[frame["horizon"] == horizon]
    if state != "all":
        df = df[df["state"] == state]
    return {int(k): float(v) for k, v in df.groupby("layer")["error_rate"].mean().items() if v == v}


def _default_params(model: str) -> dict[str, str] | None:
    try:
        from models import predictor_class

        return {k: str(v) for k, v in predictor_class(model)().params.items()}
    except Exception:
        return None


def baseline_of(group_runs: list[Run], baseline: str = BASELINE) -> Run | None:
    cands = [r for r in group_runs if r.model == baseline]
    if not cands:
        return None
    default = _default_params(baseline)
    preferred = [r for r in cands if r.params == default]
    return max(preferred or cands, key=lambda r: (r.start_time, r.run_id))


def _metric(run: Run, H: int, metric: str, state: str = "all") -> float | None:
    v = run.horizons.get(H, {}).get(metric)
    if isinstance(v, dict):
        v = v.get(state)
    return None if v is None or v != v else float(v)


def _ranks(values: list[float]) -> list[float]:
    """1 = smallest; ties share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _label(model: str, params: dict[str, str], ambiguous: bool) -> str:
    if not ambiguous or not params:
        return model
    return f"{model}({', '.join(f'{k}={v}' for k, v in sorted(params.items()))})"


def _horizon_list(run: Run) -> list[int]:
    return sorted(H for H, e in run.horizons.items() if isinstance(e.get("error_rate"), dict))


def build(runs: list[Run], superseded: list[tuple[Run, Run]] = (), baseline: str = BASELINE) -> dict[str, Any]:
    """The leaderboard as one JSON-able document (see :mod:`leaderboard` for its fields)."""
    per_model: dict[str, set] = {}
    for r in runs:
        per_model.setdefault(r.model, set()).add(r.model_id)
    labels = {r.model_id: _label(r.model, r.params, len(per_model[r.model]) > 1) for r in runs}

    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r)

    tables, per_layer, curves = [], [], []
    logs: dict[tuple, dict[str, list[float]]] = {mid: {s: [] for s in STATES} for mid in labels}
    head2head: dict[tuple, list[float]] = {mid: [] for mid in labels}
    cell_ranks: dict[tuple, list[float]] = {mid: [] for mid in labels}
    for gkey in sorted(groups):
        members = sorted(groups[gkey], key=lambda r: labels[r.model_id])
        base = baseline_of(members, baseline)
        horizons = sorted({H for r in members for H in _horizon_list(r)})
        for H in horizons:
            cell = [r for r in members if _metric(r, H, "error_rate") is not None]
            errs = [_metric(r, H, "error_rate") for r in cell]
            ranks = _ranks(errs)
            rows = []
            for r, e, rk in zip(cell, errs, ranks):
                mid = r.model_id
                cell_ranks[mid].append(rk)
                head2head[mid] += [1.0 if e < o else 0.5 if e == o else 0.0 for o2, o in zip(cell, errs) if o2 is not r]
                skill = {}
                for s in STATES:
                    if base is None:
                        skill[s] = None
                        continue
                    mine, theirs = layer_errors(r.frame, H, s), layer_errors(base.frame, H, s)
                    ratios = [math.log(max(mine[l], 1e-12) / max(theirs[l], 1e-12)) for l in sorted(set(mine) & set(theirs))]
                    logs[mid][s] += ratios
                    skill[s] = 1 - math.exp(sum(ratios) / len(ratios)) if ratios else None
                entry = r.horizons.get(H, {})
                rows.append({
                    "rank": rk, "model": r.model, "label": labels[mid], "params": r.params,
                    **{m: entry.get(m) for m in ERROR_METRICS},
                    "noise_floor": entry.get("noise_floor"),
                    "placement": {m: entry[m] for m in PLACEMENT_METRICS if isinstance(entry.get(m), dict)},
                    "skill": skill,
                    "n_origins": None if entry.get("n_origins") is None else int(entry["n_origins"]),
                    "failed_origins": None if entry.get("failures") is None else int(entry["failures"]),
                    "seconds": r.seconds, "run_id": r.run_id, "run_key": r.run_key,
                })
                if r.frame is not None and not r.frame.empty:
                    df = r.frame[r.frame["horizon"] == H]
                    for (layer, name), v in df.groupby(["layer", "layer_name"])["error_rate"].mean().items():
                        per_layer.append({"dataset": gkey[0], "dataset_version": gkey[1], "task_fingerprint": gkey[2], "horizon": H,
                                          "label": labels[mid], "layer": int(layer), "layer_name": name, "error_rate": float(v)})
                    c = df.groupby("origin_step").agg(error_rate=("error_rate", "mean"), noise_floor=("noise_floor", "mean"),
                                                      transient=("state", lambda s: float((s == "transient").mean())))
                    curves.append({"dataset": gkey[0], "dataset_version": gkey[1], "task_fingerprint": gkey[2], "horizon": H,
                                   "label": labels[mid], "origin_step": [int(x) for x in c.index],
                                   **{k: [float(x) for x in c[k]] for k in c.columns}})
            rows.sort(key=lambda row: (row["rank"], row["label"]))
            tables.append({
                "dataset": gkey[0], "dataset_version": gkey[1], "task_fingerprint": gkey[2],
                "task": members[0].task, "horizon": H, "baseline": None if base is None else labels[base.model_id],
                "noise_floor": next((row["noise_floor"] for row in rows if row["noise_floor"]), None),
                "rows": rows,
            })

    ranking = []
    for mid, label in labels.items():
        skill = {s: (1 - math.exp(sum(v) / len(v)) if v else None) for s, v in logs[mid].items()}
        h2h = head2head[mid]
        ranking.append({
            "label": label, "model": mid[0], "params": json.loads(mid[1]), "skill": skill,
            "win_rate": sum(h2h) / len(h2h) if h2h else None,
            "mean_rank": sum(cell_ranks[mid]) / len(cell_ranks[mid]) if cell_ranks[mid] else None,
            "cells": len(cell_ranks[mid]), "layer_comparisons": len(logs[mid]["all"]),
            "datasets": sorted({f"{r.dataset}@{r.dataset_version}" for r in runs if r.model_id == mid}),
        })
    ranking.sort(key=lambda e: (e["skill"]["all"] is None, -(e["skill"]["all"] or 0.0),
                                e["win_rate"] is None, -(e["win_rate"] or 0.0), e["label"]))
    for i, e in enumerate(ranking, 1):
        e["rank"] = i
    return {
        "baseline": baseline,
        "ranking": ranking,
        "tables": tables,
        "per_layer": per_layer,
        "curves": curves,
        "superseded": sorted(({"label": labels.get(old.model_id, old.model), "dataset": old.dataset, "dataset_version": old.dataset_version,
                               "task_fingerprint": old.task_fingerprint, "run_id": old.run_id, "start_time": old.start_time,
                               "superseded_by": by.run_id} for old, by in superseded),
                              key=lambda s: (s["dataset"], s["label"], -s["start_time"])),
    }


def leaderboard(tracking_uri: str | None = None, datasets: list[str] | None = None, models: list[str] | None = None,
                only: set[tuple] | None = None, baseline: str = BASELINE) -> dict[str, Any]:
    """Load, select, supersede, read per-layer errors and build: what `bench leaderboard` shows."""
    runs = select(load_runs(tracking_uri), datasets, models, only)
    winners, superseded = newest(runs)
    load_frames(winners, tracking_uri)
    board = build(winners, superseded, baseline)
    from bench import tracking

    board["tracking_uri"] = tracking.tracking_uri(tracking_uri)
    return board


__all__ = ["Run", "load_runs", "load_frames", "select", "newest", "build", "leaderboard", "parse_metrics", "BASELINE", "STATES"]
