"""The rolling-origin loop: feed the past, ask for a forecast, score it against the truth.

The loop is the only code that holds the trace under test. A predictor receives copies of the
records before each origin and nothing else; its forecast is validated, and a bad forecast or
an exception becomes a recorded failure at that origin while the run goes on.

Every finished origin is appended to a journal (one JSON line), so an interrupted run resumes
where it stopped: finished origins are read back, the predictor is brought to the same state
by replaying the past (with the refit that was last due), and only the rest is computed.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from datasets_registry.trace import Trace
from models.base import Predictor

from .metrics import forecast_errors, noise_floor
from .states import detect_states
from .task import Task, rolling_origins

#: A scorer adds metrics per layer: (phat [H,L,E], counts [H,L,E] actual, p [H,L,E]) -> {name: [L]}.
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]


class ForecastError(ValueError):
    """A forecast that is not a valid distribution forecast."""


def check_forecast(phat: Any, horizon: int, layers: int, experts: int) -> np.ndarray:
    """The protocol's rules: shape [H, L, E], finite, non-negative, rows summing to 1 (1e-6)."""
    if not isinstance(phat, np.ndarray):
        try:
            phat = np.asarray(phat, dtype=np.float64)
        except (TypeError, ValueError):
            raise ForecastError(f"forecast is not an array (got {type(phat).__name__})") from None
    if phat.shape != (horizon, layers, experts):
        raise ForecastError(f"forecast has shape {phat.shape}, expected {(horizon, layers, experts)}")
    if not np.issubdtype(phat.dtype, np.number) or np.iscomplexobj(phat):
        raise ForecastError(f"forecast has dtype {phat.dtype}, expected real numbers")
    if not np.isfinite(phat).all():
        raise ForecastError("forecast has NaN or inf")
    if (phat < 0).any():
        raise ForecastError("forecast has negative proportions")
    dev = np.abs(phat.sum(axis=2) - 1.0).max()
    if dev > 1e-6:
        raise ForecastError(f"forecast rows do not sum to 1 (off by up to {dev:.3g})")
    return phat


@dataclass
class Evaluation:
    """Per-origin, per-layer results of one predictor on one trace, all horizons."""

    layer_names: list[str]
    horizons: tuple[int, ...]
    rows: list[dict] = field(default_factory=list)  # one per (horizon, origin, layer)
    failures: list[dict] = field(default_factory=list)  # one per failed (origin, horizon)
    window_forecasts: dict[int, dict[int, list]] = field(default_factory=dict)  # H -> origin step -> [L][E]
    seconds: float = 0.0

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def _states_at(trace: Trace, task: Task) -> np.ndarray:
    return detect_states(trace.proportions, trace.steps, task.states)


class Journal:
    """Append-only record of finished origins; a truncated last line (a crash) is ignored.

    The torn line is cut off when the journal is opened, so that new records start on a line of
    their own (appended to the torn line, the next record would be unreadable at the next resume).
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.done: dict[int, dict] = {}
        if path is not None and path.exists():
            data, good = path.read_bytes(), 0
            for line in data.splitlines(keepends=True):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break
                if not line.endswith(b"\n"):
                    break
                self.done[rec["origin"]] = rec
                good += len(line)
            if good < len(data):
                with open(path, "r+b") as f:
                    f.truncate(good)

    def write(self, rec: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())


def evaluate(
    trace: Trace,
    predictor: Predictor,
    task: Task,
    training: Sequence[Trace] = (),
    scorers: Iterable[Scorer] = (),
    journal: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    span: tuple[int, int] | None = None,
) -> Evaluation:
    """Run `predictor` over every rolling origin of `task` on `trace`.

    `span=(i, j)` evaluates only the origins ``i..j-1`` (in order), one chunk of a run evaluated on
    its own (:mod:`bench.executors`): with refit "every" the predictor is shown the whole past at
    the chunk's first origin, which gives the same forecasts for a predictor marked ``replayable``.
    """
    if trace.card.static:
        raise ValueError(f"{trace.id}: a static dataset (one run's totals, no time axis) cannot be used for rolling-origin forecasting; use it for placement scoring")
    scorers = list(scorers)
    T, L, E = trace.shape
    origins = rolling_origins(trace.steps, task)
    by_origin: dict[int, dict[int, int]] = {}
    for H, o in origins.items():
        for rec, n in zip(o.records.tolist(), o.lengths.tolist()):
            by_origin.setdefault(rec, {})[H] = n
    if not by_origin:
        raise ValueError(f"{trace.id}: no rolling origins: {trace.records} records over steps {trace.steps[0]}..{trace.steps[-1]} "
                         f"are too short for horizons {task.horizons} after {task.min_history} iterations of history")
    order = sorted(by_origin)
    if span is not None:
        if task.refit != "every":
            raise ValueError(f"a chunk of origins needs refit 'every', got {task.refit!r}")
        order = order[span[0] : span[1]]
    stable = _states_at(trace, task)
    p_all, counts, steps = trace.proportions, trace.counts, trace.steps
    ev = Evaluation(list(trace.card.layer_names), task.horizons)
    book = Journal(journal)
    t0 = time.perf_counter()

    def fail(rec: dict, stage: str, exc: BaseException) -> None:
        rec["failed"] = f"{stage}: {type(exc).__name__}: {exc}"
        rec["traceback"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()

    predictor.start(L, E, training)
    resume_at = next((i for i, o in enumerate(order) if o not in book.done), len(order))
    last_refit = max((i for i in range(resume_at) if task.refit_due(i)), default=None)
    fed = 0
    broken: str | None = None  # a failure in start/update that leaves the predictor unusable
    for i, o in enumerate(order):
        if i < resume_at:
            rec = book.done[o]
            if i == last_refit and not rec.get("failed"):
                try:
                    predictor.observe(counts[fed:o].copy(), steps[fed:o].copy())
                    fed = o
                    predictor.refit()
                except Exception:
                    pass  # the journal already holds what happened at this origin
            _collect(ev, rec, layer_count=L)
            if progress:
                progress(i + 1, len(order))
            continue
        rec: dict[str, Any] = {"origin": o, "step": int(steps[o]), "horizons": {}}
        try:
            if broken:
                raise RuntimeError(broken)
            predictor.observe(counts[fed:o].copy(), steps[fed:o].copy())
            fed = o
            if task.refit_due(i):
                predictor.refit()
            need = max(by_origin[o].values())
            phat = check_forecast(predictor.predict(need), need, L, E)
        except Exception as exc:  # a predictor's failure is a result, not a crash
            fail(rec, "forecast", exc)
            if fed != o:
                broken = f"predictor failed while receiving history at step {steps[o]}: {exc}"
        else:
            for H, n in by_origin[o].items():
                truth_p, truth_c = p_all[o : o + n], counts[o : o + n]
                ph = phat[:n]
                m = forecast_errors(ph, truth_p)
                m["noise_floor"] = noise_floor(truth_p.mean(axis=0), trace.totals[o : o + n].mean(axis=0))
                for scorer in scorers:
                    m.update(scorer(ph, truth_c, truth_p))
                rec["horizons"][str(H)] = {"metrics": {k: np.asarray(v, dtype=float).tolist() for k, v in m.items()},
                                           "window_forecast": ph.mean(axis=0).tolist()}
        rec["stable"] = stable[o].tolist()
        rec["lengths"] = {str(H): n for H, n in by_origin[o].items()}
        book.write(rec)
        _collect(ev, rec, layer_count=L)
        if progress:
            progress(i + 1, len(order))
    ev.seconds = time.perf_counter() - t0
    return ev


def _collect(ev: Evaluation, rec: dict, layer_count: int) -> None:
    """Turn one journal record into result rows."""
    o, step = rec["origin"], rec["step"]
    for H_key, n in rec["lengths"].items():
        H = int(H_key)
        if rec.get("failed"):
            ev.failures.append({"horizon": H, "origin": o, "origin_step": step, "error": rec["failed"]})
            continue
        res = rec["horizons"][H_key]
        ev.window_forecasts.setdefault(H, {})[step] = res["window_forecast"]
        for l in range(layer_count):
            row = {"horizon": H, "origin": o, "origin_step": step, "records": n, "layer": l,
                   "layer_name": ev.layer_names[l] if l < len(ev.layer_names) else f"layer{l}",
                   "state": "stable" if rec["stable"][l] else "transient"}
            row.update({k: v[l] for k, v in res["metrics"].items()})
            ev.rows.append(row)
