"""The rolling-origin loop: feed the past, ask for a forecast, score it against the truth.

The loop is the only code that holds the trace under test. A predictor receives copies of the
records before each origin and nothing else; its forecast is validated, and a bad forecast or
an exception becomes a recorded failure at that origin while the run goes on.

Every finished origin is appended to a journal (one JSON line), so an interrupted run resumes
where it stopped: finished origins are read back, the predictor is brought to the same state
by replaying the past (with the refit that was last due), and only the rest is computed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from datasets_registry.trace import Trace
from models.base import QUANTILE_LEVELS, Predictor

from .metrics import crossing, forecast_errors, forecast_errors_prefixes, noise_floor, remote_share, source_errors
from .probabilistic import QUANTILE_SCORES, quantile_record_scores, reference_quantiles
from .states import detect_states
from .task import Task, rolling_origins

#: A scorer adds metrics per layer: (phat [H,L,E], counts [H,L,E] actual, p [H,L,E]) -> {name: [L]}.
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, np.ndarray]]


#: The predictor calls whose time a run reports (Evaluation.timings).
TIMED = ("start", "observe", "refit", "forecast")


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


def _finite_array(x: Any, shape: tuple[int, ...], what: str, axes: str) -> np.ndarray:
    """`x` as float64 of exactly `shape` (its `axes` named in the error), every value finite; else ForecastError."""
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ForecastError(f"{what} is not an array of numbers (got {type(x).__name__})") from None
    if x.shape != shape:
        raise ForecastError(f"{what} has shape {x.shape}, expected {shape} ({axes})")
    if not np.isfinite(x).all():
        raise ForecastError(f"{what} has NaN or inf")
    return x


def check_quantiles(qhat: Any, horizon: int, layers: int, experts: int) -> np.ndarray:
    """A quantile forecast's rules: shape [H, L, E, levels] at the levels of ``QUANTILE_LEVELS``, finite,
    shares within [0, 1], non-decreasing in the level. Anything else fails the origin, like a bad point forecast."""
    qhat = _finite_array(qhat, (horizon, layers, experts, len(QUANTILE_LEVELS)), "quantile forecast",
                         f"records, layers, experts, one per level of {QUANTILE_LEVELS}")
    if (qhat < 0).any() or (qhat > 1).any():
        raise ForecastError(f"quantile forecast has shares outside [0, 1] (from {qhat.min():.3g} to {qhat.max():.3g})")
    drop = np.diff(qhat, axis=-1).min(initial=0.0)
    if drop < 0:
        raise ForecastError(f"quantile forecast decreases with the level (by up to {-drop:.3g}): quantiles must be "
                            "non-decreasing along the last axis")
    return qhat


def check_source_forecast(ps: Any, horizon: int, layers: int, sources: int, experts: int) -> np.ndarray:
    """A per-source forecast's rules: shape [H, L, S, E], finite, non-negative, each [S, E] slice summing to 1
    (1e-6). Anything else fails the origin, like a bad point forecast."""
    ps = _finite_array(ps, (horizon, layers, sources, experts), "per-source forecast",
                       "records, layers, sources, experts")
    if (ps < 0).any():
        raise ForecastError("per-source forecast has negative shares")
    dev = np.abs(ps.sum(axis=(2, 3)) - 1.0).max()
    if dev > 1e-6:
        raise ForecastError(f"per-source forecast: a record's [sources, experts] shares do not sum to 1 (off by up to "
                            f"{dev:.3g})")
    return ps


def require_sources(trace: Trace) -> None:
    """Refuse per-source scoring of a trace that does not record where its tokens come from."""
    if trace.source_counts is None:
        raise ValueError(f"{trace.id}: no per-source split (the card lists no sources, and there are no "
                         "source_counts): per-source scoring needs a dataset that records where its tokens come "
                         "from (`python -m bench datasets show ID` says; docs/formats.md lists the importers that "
                         "keep it)")


class SourceSplit:
    """The per-source split of the trace under test, for a run that scores per-source forecasts.

    Holds the trace's ``source_counts``; gives the truth of the records to forecast (:meth:`truth`) and the
    per-source shares of the records before an origin (:meth:`shares`), from cumulative sums, so that asking at
    origin ``o`` costs the same whatever ``o``. Nothing here is handed to a predictor: the harness uses the
    shares to split the point forecast of a predictor that does not forecast per source.
    """

    def __init__(self, trace: Trace):
        require_sources(trace)
        self.counts = trace.source_counts  # [T, L, S, E], read-only
        self.totals = trace.totals
        self.sources = self.counts.shape[2]
        self.cross = crossing(self.sources, trace.experts)
        T, L, S, E = self.counts.shape
        self._cum = np.zeros((T + 1, L, S, E), dtype=np.int64)
        np.cumsum(self.counts, axis=0, out=self._cum[1:])

    def truth(self, o: int, n: int) -> np.ndarray:
        """[n, L, S, E]: the share of each layer's routed tokens from each source to each expert, records o..o+n-1."""
        return self.counts[o : o + n] / self.totals[o : o + n, :, None, None]

    def shares(self, o: int) -> np.ndarray:
        """[L, S, E]: of expert e's tokens in the records before `o`, the share from each source (1/S where the
        expert got none)."""
        sent = self._cum[o]
        got = sent.sum(axis=1, keepdims=True)
        return np.divide(sent, got, out=np.full(sent.shape, 1.0 / self.sources), where=got > 0)

    def split(self, phat: np.ndarray, o: int) -> np.ndarray:
        """The per-source forecast [H, L, S, E] of a point forecast `phat` [H, L, E]: each expert's forecast share
        divided over the sources by their shares before origin `o`."""
        return phat[:, :, None, :] * self.shares(o)[None]


@dataclass
class Evaluation:
    """Per-origin, per-layer results of one predictor on one trace, all horizons."""

    layer_names: list[str]
    horizons: tuple[int, ...]
    rows: list[dict] = field(default_factory=list)  # one per (horizon, origin, layer)
    failures: list[dict] = field(default_factory=list)  # one per failed (origin, horizon)
    window_forecasts: dict[int, dict[int, list]] = field(default_factory=dict)  # H -> origin step -> [L][E]
    seconds: float = 0.0
    #: Seconds spent inside the predictor, by call: start (with the fit on training traces), observe,
    #: refit, forecast. Resumed origins count what the journal recorded for them.
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIMED, 0.0))

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


def _states_at(trace: Trace, task: Task) -> np.ndarray:
    return detect_states(trace.proportions, trace.steps, task.states)


def builtin_vectorised(predictor: Any) -> bool:
    """Whether `predictor` is one of the package's own estimators (a class of :data:`models.registry.BUILTIN`
    itself, not a subclass) that computes every origin at once (:meth:`models.base.Predictor.predict_all`).

    Only those are handed the trace's past in one piece; any other predictor, and every predictor from
    outside the package (run in :mod:`bench.isolation`'s sandbox), gets the past origin by origin.
    """
    from models.registry import BUILTIN

    cls = type(predictor)
    if f"{cls.__module__}:{cls.__qualname__}" not in BUILTIN.values():
        return False
    module = importlib.import_module(cls.__module__)
    return getattr(module, cls.__qualname__, None) is cls and cls.predict_all is not Predictor.predict_all


def vectorised_estimates(predictor: Predictor, trace: Trace, origins: Sequence[int]) -> np.ndarray | None:
    """A built-in estimator's ``[n, L, E]`` estimates at `origins` (record indices, ascending) from the records
    before the last one, or None where one of them would not be a valid forecast (an exception, a bad row):
    the origin-by-origin path then records the failure where it happens."""
    origins = np.asarray(origins, dtype=np.int64)
    last = int(origins[-1])
    try:
        est = np.asarray(predictor.predict_all(trace.counts[:last], trace.proportions[:last], trace.steps[:last],
                                               origins, trace.steps[origins]))
        check_forecast(est, len(origins), trace.layers, trace.experts)
    except Exception:  # noqa: BLE001 - the slow path reports it, origin by origin
        return None
    return est


class Journal:
    """Append-only record of finished origins, one JSON line each with a checksum of its content.

    Reading stops at the first line that does not parse, is torn (a crash mid-write) or fails its
    checksum (a damaged or edited file); the journal is cut there, with a warning unless the line
    was merely torn, so the origins from it on are computed again and new records start on a line
    of their own.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.done: dict[int, dict] = {}
        if path is not None and path.exists():
            self.done, good, problem = self.scan(path)
            if good < path.stat().st_size:
                if problem:
                    warnings.warn(f"{path}: {problem}; recomputing from there", RuntimeWarning, stacklevel=3)
                with open(path, "r+b") as f:
                    f.truncate(good)

    @classmethod
    def scan(cls, path: Path) -> tuple[dict[int, dict], int, str | None]:
        """Read a journal without changing it: (records by origin, bytes of good lines, the damage found or None)."""
        data, good, done = path.read_bytes(), 0, {}
        for number, line in enumerate(data.splitlines(keepends=True), 1):
            if not line.endswith(b"\n"):
                return done, good, None  # torn by a crash: expected, silently redone
            rec = cls._parse(line)
            if rec is None:
                return done, good, f"line {number} is damaged (bad JSON or checksum)"
            done[rec["origin"]] = rec
            good += len(line)
        return done, good, None

    @staticmethod
    def _checksum(rec: dict) -> str:
        return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def _parse(cls, line: bytes) -> dict | None:
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(rec, dict) or not isinstance(rec.get("origin"), int):
            return None
        return rec if rec.pop("sum", None) == cls._checksum(rec) else None

    @classmethod
    def replace(cls, path: Path, records: list[dict]) -> None:
        """Write a whole journal at once (a chunked run's merged records), atomically."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps({**r, "sum": cls._checksum(r)}) + "\n" for r in records))
        os.replace(tmp, path)

    def write(self, rec: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({**rec, "sum": self._checksum(rec)}) + "\n")
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
    per_source: bool = False,
    vectorised: bool = True,
) -> Evaluation:
    """Run `predictor` over every rolling origin of `task` on `trace`.

    `per_source` also scores per-source forecasts (docs/protocol.md, "Per-source loads"): a predictor that
    implements ``predict_sources`` is shown the past per-source split and forecasts it; the point forecast of
    any other is split by the per-source shares of the records before the origin.

    `span=(i, j)` evaluates only the origins ``i..j-1`` (in order), one chunk of a run evaluated on
    its own (:mod:`bench.executors`): with refit "every" the predictor is shown the whole past at
    the chunk's first origin, which gives the same forecasts for a predictor marked ``replayable``.

    A built-in estimator that computes every origin at once (:func:`builtin_vectorised`) does so when
    nothing is resumed, unless `vectorised` is False; its results are identical either way.
    """
    if trace.card.static:
        raise ValueError(
            f"{trace.id}: a static dataset (one run's totals, no time axis) cannot be used for rolling-origin "
            f"forecasting; use it for placement scoring"
        )
    scorers = list(scorers)
    probabilistic = bool(getattr(predictor, "probabilistic", False))  # asked for quantiles only if it has them
    split = SourceSplit(trace) if per_source else None
    own_split = split is not None and bool(getattr(predictor, "per_source", False))  # forecasts per source itself
    T, L, E = trace.shape
    origins = rolling_origins(trace.steps, task)
    by_origin: dict[int, dict[int, int]] = {}
    for H, o in origins.items():
        for rec, n in zip(o.records.tolist(), o.lengths.tolist()):
            by_origin.setdefault(rec, {})[H] = n
    if not by_origin:
        raise ValueError(
            f"{trace.id}: no rolling origins: {trace.records} records over steps {trace.steps[0]}..{trace.steps[-1]} "
            f"are too short for horizons {task.horizons} after {task.min_history} iterations of history"
        )
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

    def measure(phat: np.ndarray, o: int, n: int, scored: dict | None = None,
                phat_src: np.ndarray | None = None, errors: dict | None = None) -> dict[str, np.ndarray]:
        """The forecast's metrics at origin record `o` over its `n` target records, per layer; `scored`, a quantile
        forecast's scores per record (:func:`quantile_record_scores`), adds their means over the `n` records;
        `phat_src`, the per-source forecast [H, L, S, E] of a per-source run, adds its errors; `errors`, the
        forecast errors already computed (:func:`forecast_errors_prefixes`)."""
        truth_p, truth_c = p_all[o : o + n], counts[o : o + n]
        m = dict(errors) if errors is not None else forecast_errors(phat, truth_p)
        for scorer in scorers:
            m.update(scorer(phat, truth_c, truth_p))
        if scored is not None:
            m.update({k: v[:n].mean(axis=0) for k, v in scored.items()})
        if split is not None:
            m.update(source_errors(phat_src[:n], split.truth(o, n), split.cross))
        return m

    def quantiles_scored(o: int, need: int, qhat: np.ndarray) -> dict[str, np.ndarray]:
        """A quantile forecast of the `need` records from origin record `o`, scored per record (for all horizons)."""
        return quantile_record_scores(qhat, p_all[o : o + need])

    def reference(o: int, need: int) -> dict[str, np.ndarray]:
        """sw_quantiles' forecast at origin record `o`, scored per record: what quantile losses are scaled by."""
        q = reference_quantiles(p_all[:o], steps[:o])
        return quantiles_scored(o, need, np.broadcast_to(q, (need,) + q.shape))

    def truth(o: int, n: int, ref: dict | None) -> dict[str, np.ndarray]:
        """What the target records alone determine: the floors every forecast is compared with (and, in a
        probabilistic run, the reference's quantile loss from its scores `ref`)."""
        out = {"noise_floor": noise_floor(p_all[o : o + n].mean(axis=0), trace.totals[o : o + n].mean(axis=0))}
        if split is not None:
            out["remote_share"] = remote_share(split.truth(o, n), split.cross)
        if ref is not None:
            out["reference_quantile_loss"] = ref["quantile_loss"][:n].mean(axis=0)
        return out

    def charged(o: int, n: int, ref: dict | None) -> dict[str, np.ndarray]:
        """A failed origin's metrics: per layer the worse of a uniform forecast's and sw_avg's (docs/protocol.md);
        in a probabilistic run the quantile scores are all those of the forecast with the worse quantile loss:
        uniform's (every quantile at 1/E) or sw_quantiles' (its scores `ref`)."""
        uniform = np.full((n, L, E), 1.0 / E)
        fallback = np.broadcast_to(fallback_estimate(p_all, steps, o), (n, L, E))
        flat = None if ref is None else quantiles_scored(o, n, np.broadcast_to(uniform[..., None], uniform.shape + (
            len(QUANTILE_LEVELS),)))
        uniform_src = fallback_src = None
        if split is not None:  # uniform over every (source, expert) pair, and sw_avg's forecast split by the past
            uniform_src = np.full((n, L, split.sources, E), 1.0 / (split.sources * E))
            fallback_src = split.split(fallback, o)
        a, b = measure(uniform, o, n, flat, uniform_src), measure(fallback, o, n, ref, fallback_src)
        out = {k: np.maximum(a[k], b[k]) for k in a if k not in QUANTILE_SCORES}
        if ref is not None:
            worse_a = a["quantile_loss"] >= b["quantile_loss"]
            out.update({k: np.where(worse_a, a[k], b[k]) for k in QUANTILE_SCORES})
        return out

    def store(m: dict[str, np.ndarray]) -> dict[str, list]:
        return {k: np.asarray(v, dtype=float).tolist() for k, v in m.items()}

    def timed(rec: dict, call: str, fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            rec[call] = rec.get(call, 0.0) + time.perf_counter() - t

    def feed(upto: int) -> None:
        """Show the predictor copies of the records it has not seen before record `upto` (and their per-source
        split, to a predictor that forecasts per source)."""
        predictor.observe(counts[fed:upto].copy(), steps[fed:upto].copy())
        if own_split:
            predictor.observe_sources(split.counts[fed:upto].copy(), steps[fed:upto].copy())

    buffers: dict = {}  # forecast_errors_prefixes' work arrays, reused from origin to origin
    broken: str | None = None  # a failure in start/update that leaves the predictor unusable
    try:
        timed(ev.timings, "start", predictor.start, L, E, training)
    except Exception as exc:  # noqa: BLE001 - a predictor's failure is a result, not a crash
        broken = f"predictor failed to start: {type(exc).__name__}: {exc}"
    resume_at = next((i for i, o in enumerate(order) if o not in book.done), len(order))
    last_refit = max((i for i in range(resume_at) if task.refit_due(i)), default=None)
    estimates = None  # a built-in estimator's forecasts at every origin, computed at once
    if (vectorised and not broken and resume_at == 0 and not probabilistic and not own_split
            and builtin_vectorised(predictor)):
        t = time.perf_counter()
        estimates = vectorised_estimates(predictor, trace, order)
        per_origin = (time.perf_counter() - t) / len(order)  # in each origin's record, like the other path
    fed = 0
    for i, o in enumerate(order):
        if i < resume_at:
            rec = book.done[o]
            if i == last_refit and not rec.get("failed"):
                try:
                    feed(o)
                    fed = o
                    predictor.refit()
                except Exception:
                    pass  # the journal already holds what happened at this origin
            _collect(ev, rec, layer_count=L)
            if progress:
                progress(i + 1, len(order))
            continue
        rec: dict[str, Any] = {"origin": o, "step": int(steps[o]), "horizons": {}, "seconds": {}}
        need = max(by_origin[o].values())  # records of the longest horizon from this origin
        ref = reference(o, need) if probabilistic else None
        try:
            if broken:
                raise RuntimeError(broken)
            phat_src = None
            if estimates is not None:  # checked as a whole; the same forecast, held over the horizon
                rec["seconds"]["forecast"] = per_origin
                phat = np.broadcast_to(estimates[i], (need, L, E))
            else:
                timed(rec["seconds"], "observe", feed, o)
                fed = o
                if task.refit_due(i):
                    timed(rec["seconds"], "refit", predictor.refit)
                phat = timed(rec["seconds"], "forecast", predictor.forecast, steps[o : o + need].copy())
                phat = check_forecast(phat, need, L, E)
                if own_split:
                    ps = timed(rec["seconds"], "forecast", predictor.forecast_sources, steps[o : o + need].copy())
                    phat_src = check_source_forecast(ps, need, L, split.sources, E)
            if phat_src is None and split is not None:
                phat_src = split.split(phat, o)
            scored = None
            if probabilistic:
                qhat = timed(rec["seconds"], "forecast", predictor.forecast_quantiles, steps[o : o + need].copy())
                scored = quantiles_scored(o, need, check_quantiles(qhat, need, L, E))
        except Exception as exc:  # a predictor's failure is a result, not a crash
            fail(rec, "forecast", exc)
            if fed != o and not broken:
                broken = f"predictor failed while receiving history at step {steps[o]}: {exc}"
            for H, n in by_origin[o].items():
                rec["horizons"][str(H)] = {"metrics": store({**charged(o, n, ref), **truth(o, n, ref)})}
        else:
            errors = {}  # all horizons at once where the layout gives the same sums as one at a time
            if phat.dtype == np.float64 and (phat.flags.c_contiguous
                                             or (phat.strides[0] == 0 and phat[0].flags.c_contiguous)):
                lengths = sorted(set(by_origin[o].values()))
                errors = forecast_errors_prefixes(phat, p_all[o : o + need], lengths, buffers)
            for H, n in by_origin[o].items():
                ph = phat[:n]
                rec["horizons"][str(H)] = {
                    "metrics": store({**measure(ph, o, n, scored, phat_src, errors.get(n)), **truth(o, n, ref)}),
                    "window_forecast": ph.mean(axis=0).tolist(),
                }
        rec["stable"] = stable[o].tolist()
        rec["lengths"] = {str(H): n for H, n in by_origin[o].items()}
        book.write(rec)
        _collect(ev, rec, layer_count=L)
        if progress:
            progress(i + 1, len(order))
    ev.seconds = time.perf_counter() - t0
    return ev


def fallback_estimate(p: np.ndarray, steps: np.ndarray, o: int, window: int = 100) -> np.ndarray:
    """sw_avg's estimate at origin record `o`: the mean share over the last `window` iterations before it."""
    start = int(np.searchsorted(steps[:o], steps[o - 1] - window, side="right"))
    return p[min(start, o - 1) : o].mean(axis=0)


def _collect(ev: Evaluation, rec: dict, layer_count: int) -> None:
    """Turn one journal record into result rows (a failed origin's rows carry its charged metrics)."""
    o, step = rec["origin"], rec["step"]
    failed = bool(rec.get("failed"))
    for call, seconds in rec.get("seconds", {}).items():
        ev.timings[call] = ev.timings.get(call, 0.0) + seconds
    for H_key, n in rec["lengths"].items():
        H = int(H_key)
        res = rec["horizons"][H_key]
        if failed:
            ev.failures.append({"horizon": H, "origin": o, "origin_step": step, "error": rec["failed"]})
        else:
            ev.window_forecasts.setdefault(H, {})[step] = res["window_forecast"]
        for l in range(layer_count):
            row = {
                "horizon": H,
                "origin": o,
                "origin_step": step,
                "records": n,
                "layer": l,
                "layer_name": ev.layer_names[l] if l < len(ev.layer_names) else f"layer{l}",
                "state": "stable" if rec["stable"][l] else "transient",
                "failed": failed,
            }
            row.update({k: v[l] for k, v in res["metrics"].items()})
            ev.rows.append(row)
