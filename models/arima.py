"""ARIMA of the seed paper: one model per (layer, expert) proportion series.

Each of the L*E series is modelled on its own trailing window of ``window`` records, in units
of the uniform share (``p * E``, which only rescales the series and keeps the optimiser away
from variances near 1e-6). The forecasts of a step, one per expert, are independent, so they
need not form a distribution: a row with a negative value is clipped at 0, and a row whose sum
is off 1 is renormalised, only where needed, and both are counted (``stats``, logged to MLflow
as ``arima.rows_clipped`` / ``arima.rows_renormalised`` beside ``arima.rows``).

Order. ``order="p,d,q"`` fixes it for every series; ``order="auto"`` selects one order for the
whole trace, once, with the procedure of :func:`select_order`, on the training traces when the
task gives some and else on the history at the first fit. The procedure, as in the seed paper
(stationarity tests, then the correlation structure), per series:

1. d: the smallest d in 0..2 for which the d-times differenced series is stationary by both
   tests at 5%: ADF rejects a unit root *and* KPSS does not reject level stationarity.
2. p, q: with d fixed, the (p, q) in 0..2 x 0..2 of least AIC (the information criterion in
   place of reading ACF/PACF plots by eye; both aim at the same short AR/MA structure).
3. The trace's order is the most frequent (p, d, q) over its series.

On the built-in traces (``python benchmarks/arima_order.py``; results in docs/models.md) the
tests call about two thirds of smartmoe-ae's series I(1), and on the 100-record windows the
predictor fits the most frequent order is (0, 1, 1) (the whole 501-record series: (2, 1, 2)),
so the default order is ``"0,1,1"``: simple exponential smoothing with a fitted weight, whose
forecast is flat at the smoothed level.

Refit policy: the task's. ``refit()`` marks the coefficients stale; the next ``predict``
re-estimates them on the trailing window (and forecasts). Between refits ``predict`` re-applies
the last coefficients to the newest window (Kalman filter only, no estimation), so "once"
estimates once and then only updates state. Series with too few records to fit
(< ``min_records``), constant series, and fits that raise fall back to the window mean and are
counted.

Engines: ``engine="statsforecast"`` (default) fits with statsforecast's ARIMA (CSS-ML, the R
``forecast::Arima`` port); ``engine="statsmodels"`` with statsmodels' state-space ARIMA (exact
ML). Same order, same window, same scaling; they agree to within the tolerance stated in
tests/models/test_arima.py, and statsforecast is about 2.7x faster per fit here
(``python benchmarks/arima_fits.py``).

Parallel: the series are split into chunks and fitted in a process pool
(``concurrent.futures.ProcessPoolExecutor``, fork start method) of ``n_jobs`` workers (-1: all
cores; 1: in this process). The pool lives as long as the predictor.

Default cost: smartmoe-ae (768 series, 40 origins) with window 100 records and refit at every
origin is about 31k fits: 4-9 minutes on 2 cores with statsforecast (docs/results.md).
"""

from __future__ import annotations

import math
import os
import time
import warnings
import weakref
from collections import Counter
from typing import Any, Sequence

import numpy as np

from .base import ParamError, Predictor

#: status codes per series, returned by the workers
FITTED, REUSED, CONSTANT, SHORT, FAILED = range(5)
STATUS_NAMES = {FITTED: "series_fitted", REUSED: "series_filtered", CONSTANT: "series_constant",
                SHORT: "series_short", FAILED: "series_failed"}


def parse_order(order: str) -> tuple[int, int, int] | None:
    """"p,d,q" -> (p, d, q); "auto" -> None."""
    if str(order).strip().lower() == "auto":
        return None
    try:
        p, d, q = (int(x) for x in str(order).replace("(", "").replace(")", "").split(","))
    except ValueError:
        raise ParamError(f"arima: order must be 'p,d,q' or 'auto', got {order!r}") from None
    if min(p, d, q) < 0 or d > 2 or p > 5 or q > 5:
        raise ParamError(f"arima: order {order!r} out of range (p, q in 0..5, d in 0..2)")
    return p, d, q


# ---- fitting one series -----------------------------------------------------------------------
def _sf_fit(y: np.ndarray, order: tuple[int, int, int], model: Any = None) -> Any:
    from statsforecast.arima import Arima, forward_arima

    with np.errstate(all="ignore"):
        if model is not None:
            return forward_arima(model, y)
        return Arima(y, order=order, include_mean=order[1] == 0, method="CSS-ML")


def _sf_forecast(model: Any, horizon: int) -> np.ndarray:
    from statsforecast.arima import forecast_arima

    with np.errstate(all="ignore"):
        return np.asarray(forecast_arima(model, h=horizon)["mean"], dtype=np.float64)


def _sm_fit(y: np.ndarray, order: tuple[int, int, int], model: Any = None) -> Any:
    from statsmodels.tsa.arima.model import ARIMA

    spec = ARIMA(y, order=order, trend="c" if order[1] == 0 else "n")
    if model is not None:
        return spec.filter(model)
    return spec.fit()


def _sm_forecast(model: Any, horizon: int) -> np.ndarray:
    return np.asarray(model.forecast(horizon), dtype=np.float64)


ENGINES = {"statsforecast": (_sf_fit, _sf_forecast), "statsmodels": (_sm_fit, _sm_forecast)}


def _portable(engine: str, model: Any) -> Any:
    """What of a fitted model is kept to re-apply it later (small, picklable)."""
    if engine == "statsmodels":
        return np.asarray(model.params, dtype=np.float64)
    return {k: v for k, v in model.items() if k not in ("x", "residuals", "fitted")}  # the data stays here


def fit_forecast(y: np.ndarray, order: tuple[int, int, int], engine: str, horizon: int,
                 min_records: int, state: Any = None) -> tuple[np.ndarray, Any, int]:
    """Forecast one series: (forecast [horizon], model state to re-apply, status code).

    With `state` the coefficients are re-applied to `y` (filtering only); without, estimated.
    """
    fit, forecast = ENGINES[engine]
    mean = float(np.mean(y)) if len(y) else 0.0
    if len(y) < min_records:
        return np.full(horizon, mean), None, SHORT
    if np.ptp(y) < 1e-9:
        return np.full(horizon, float(y[-1])), None, CONSTANT
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if state is not None:
                model = fit(y, order, state if engine == "statsmodels" else dict(state))
            else:
                model = fit(y, order)
            f = forecast(model, horizon)
        if f.shape != (horizon,) or not np.isfinite(f).all():
            raise FloatingPointError("non-finite forecast")
        return f, _portable(engine, model), REUSED if state is not None else FITTED
    except Exception:
        if state is not None:  # re-applying failed (e.g. a now-constant window): estimate anew
            return fit_forecast(y, order, engine, horizon, min_records)
        return np.full(horizon, mean), None, FAILED


def _fit_chunk(Y: np.ndarray, order, engine, horizon, min_records, states) -> tuple[np.ndarray, list, list]:
    """Worker: fit_forecast over the rows of Y [n, W]."""
    out = np.empty((len(Y), horizon))
    new_states, codes = [], []
    for i, y in enumerate(Y):
        out[i], s, c = fit_forecast(y, order, engine, horizon, min_records, states[i] if states else None)
        new_states.append(s)
        codes.append(c)
    return out, new_states, codes


def _one_blas_thread():
    """One BLAS thread: statsmodels makes many tiny BLAS calls, which extra threads only slow
    down (about 9x here); the workers fill the cores instead."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:
        import contextlib

        return contextlib.nullcontext()


def _warm_up(engine: str) -> None:
    """Worker initializer: import the engine once per process, not once per task."""
    warnings.simplefilter("ignore")
    _one_blas_thread()  # for the worker's lifetime
    if engine == "statsforecast":
        import statsforecast.arima  # noqa: F401
    else:
        import statsmodels.tsa.arima.model  # noqa: F401


# ---- order selection --------------------------------------------------------------------------
def series_d(y: np.ndarray, max_d: int = 2, alpha: float = 0.05) -> int:
    """Smallest d with ADF rejecting a unit root and KPSS not rejecting stationarity."""
    from statsmodels.tsa.stattools import adfuller, kpss

    x = np.asarray(y, dtype=np.float64)
    for d in range(max_d + 1):
        if np.ptp(x) < 1e-12:
            return d
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # KPSS warns when p is off its table's ends
            adf_p = adfuller(x, autolag="AIC")[1]
            kpss_p = kpss(x, regression="c", nlags="auto")[1]
        if adf_p < alpha and kpss_p > alpha:
            return d
        x = np.diff(x)
    return max_d


def series_pq(y: np.ndarray, d: int, max_p: int = 2, max_q: int = 2) -> tuple[int, int] | None:
    """The (p, q) of least AIC with d fixed (statsforecast, CSS-ML); None if nothing fits."""
    best, best_aic = None, math.inf
    for p in range(max_p + 1):
        for q in range(max_q + 1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    aic = _sf_fit(y, (p, d, q))["aic"]
            except Exception:
                continue
            if aic is not None and np.isfinite(aic) and aic < best_aic:
                best, best_aic = (p, q), aic
    return best


def select_order(series: np.ndarray, max_d: int = 2, max_p: int = 2, max_q: int = 2) -> tuple[tuple[int, int, int], dict]:
    """The procedure of the module docstring over `series` [n, T]: (mode order, report)."""
    orders = []
    for y in np.asarray(series, dtype=np.float64):
        if np.ptp(y) < 1e-12:
            continue
        d = series_d(y, max_d)
        pq = series_pq(y, d, max_p, max_q)
        if pq is not None:
            orders.append((pq[0], d, pq[1]))
    if not orders:
        return (1, 0, 1), {"series": 0}
    counts = Counter(orders)
    return counts.most_common(1)[0][0], {
        "series": len(orders),
        "d": dict(sorted(Counter(o[1] for o in orders).items())),
        "orders": {",".join(map(str, o)): n for o, n in counts.most_common()},
    }


# ---- the predictor ----------------------------------------------------------------------------
class Arima(Predictor):
    """Per-series ARIMA on a trailing window; see the module docstring."""

    name = "arima"
    defaults = {"order": "0,1,1", "window": 100, "engine": "statsforecast", "n_jobs": -1,
                "min_records": 20, "select_series": 96}
    search_space = {"window": ("log", 20, 400), "order": ("cat", ["1,0,1", "1,1,1", "2,1,2", "1,0,0", "0,1,1", "2,0,2"])}
    version = 1

    def __init__(self, **params):
        super().__init__(**params)
        parse_order(self.params["order"])  # refuse a malformed order now, not at the first origin
        if self.params["engine"] not in ENGINES:
            raise ParamError(f"arima: engine must be one of {sorted(ENGINES)}, got {self.params['engine']!r}")
        if self.params["window"] < 2:
            raise ParamError("arima: window must be at least 2 records")
        self._pool = None
        self.stats: Counter = Counter()
        self.selected: dict | None = None

    # -- pool
    def _workers(self) -> int:
        n = self.params["n_jobs"]
        return max(1, os.cpu_count() or 1) if n in (-1, 0) else max(1, n)

    def _executor(self):
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
            self._pool = ProcessPoolExecutor(self._workers(), mp_context=ctx, initializer=_warm_up,
                                             initargs=(self.params["engine"],))
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def _map(self, Y: np.ndarray, order, horizon: int, states: list | None):
        args = (order, self.params["engine"], horizon, self.params["min_records"])
        workers = self._workers()
        if workers == 1 or len(Y) < 2:
            with _one_blas_thread():
                return _fit_chunk(Y, *args, states)
        bounds = np.linspace(0, len(Y), min(len(Y), 4 * workers) + 1).astype(int)
        futures = [self._executor().submit(_fit_chunk, Y[a:b], *args, states[a:b] if states else None)
                   for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        parts = [f.result() for f in futures]
        return (np.concatenate([p[0] for p in parts]), [s for p in parts for s in p[1]], [c for p in parts for c in p[2]])

    # -- harness hooks
    def start(self, layers, experts, training=()):
        self._order = parse_order(self.params["order"])
        self._states: list | None = None
        self._stale = True
        self.stats = Counter()
        super().start(layers, experts, training)

    def fit(self, training: Sequence[Any]) -> None:
        """Training traces serve only order selection (``order="auto"``): ARIMA is per series."""
        if self._order is None:
            self._select(np.concatenate([np.asarray(t.proportions) for t in training], axis=0))

    def _select(self, p: np.ndarray) -> None:
        T, L, E = p.shape
        series = (p[-self.params["window"]:] * E).reshape(min(T, self.params["window"]), L * E).T
        rng = np.random.default_rng(0)
        pick = rng.choice(len(series), size=min(len(series), self.params["select_series"]), replace=False)
        self._order, self.selected = select_order(series[np.sort(pick)])
        self.selected["order"] = ",".join(map(str, self._order))

    def refit(self) -> None:
        self._stale = True

    def predict(self, horizon: int) -> np.ndarray:
        h = self.history
        L, E = h.layers, h.experts
        window = h.proportions[-self.params["window"]:]
        if self._order is None:
            if len(window) < max(self.params["min_records"], 20):
                return self._finish(np.repeat(window.mean(axis=0)[None], horizon, axis=0))
            self._select(h.proportions)
        Y = np.ascontiguousarray((window * E).reshape(len(window), L * E).T)
        states = None if self._stale or self._states is None else self._states
        t0 = time.perf_counter()
        F, new_states, codes = self._map(Y, self._order, horizon, states)
        self.stats["fit_seconds"] += time.perf_counter() - t0
        self.stats.update(STATUS_NAMES[c] for c in codes)
        if states is None:
            self.stats["estimations"] += 1
            self._stale = False  # a series left unfitted (too short, failed) is estimated at its next forecast
        self._states = new_states
        return self._finish((F.T / E).reshape(horizon, L, E))

    def _finish(self, F: np.ndarray) -> np.ndarray:
        """Clip and renormalise each row only where needed; count both."""
        F = np.array(F, dtype=np.float64)
        neg = F < 0
        rows_neg = neg.any(axis=2)
        self.stats["rows"] += rows_neg.size
        self.stats["rows_clipped"] += int(rows_neg.sum())
        self.stats["values_clipped"] += int(neg.sum())
        F[neg] = 0.0
        s = F.sum(axis=2, keepdims=True)
        off = np.abs(s - 1.0) > 1e-9
        self.stats["rows_renormalised"] += int(off.sum())
        empty = (s <= 0)[..., 0]
        F = np.where(off, F / np.where(s > 0, s, 1.0), F)
        if empty.any():
            F[empty] = 1.0 / F.shape[2]
            self.stats["rows_uniform"] += int(empty.sum())
        return F

    def mlflow_extras(self, folder):
        from ._extras import report

        metrics = {f"arima.{k}": float(v) for k, v in sorted(self.stats.items())}
        if self.stats["rows"]:
            metrics["arima.frac_rows_clipped"] = self.stats["rows_clipped"] / self.stats["rows"]
            metrics["arima.frac_rows_renormalised"] = self.stats["rows_renormalised"] / self.stats["rows"]
        info = {"order": ",".join(map(str, self._order)) if self._order else None, "selected": self.selected,
                "stats": dict(self.stats), "workers": self._workers()}
        return report(folder, metrics=metrics, json_files={"arima_stats.json": info})
