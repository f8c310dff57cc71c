"""ARIMA of the seed paper: one model per (layer, expert) proportion series.

Each of the L*E series is modelled on its own trailing window of ``window`` iterations,
averaged into points of ``bin`` iterations, in units of the uniform share (``p * E``, which
only rescales the series and keeps the optimiser away from variances near 1e-6). Window and
bin are in iterations like every other window of the benchmark, so a trace recorded every
iteration and one recorded every 10th are modelled on the same span, at the same cost: with the
defaults (1,000 and 10) both give 100 points, and a forecast of ``k`` points covers
``k * bin`` iterations, each record of the horizon taking its point's value.

The forecasts of a step, one per expert, are independent, so they need not form a
distribution: a row with a negative value is clipped at 0, and a row whose sum is off 1 is
renormalised, only where needed, and both are counted (``stats``, logged to MLflow as
``arima.rows_clipped`` / ``arima.rows_renormalised`` beside ``arima.rows``; a row is one
forecast point of one layer).

Order. ``order="p,d,q"`` fixes it for every series; ``order="auto"`` selects one order for the
whole trace, once, with the procedure of :func:`select_order`: on the last window of the last
training trace when the task gives some, else on the history once it fills a window (until
then it fits :data:`INTERIM_ORDER`). The procedure, as in the seed paper (stationarity tests,
then the correlation structure), per series:

1. d: the smallest d in 0..2 for which the d-times differenced series is stationary by both
   tests at 5%: ADF rejects a unit root *and* KPSS does not reject level stationarity.
2. p, q: with d fixed, the (p, q) in 0..2 x 0..2 of least AIC (the information criterion in
   place of reading ACF/PACF plots by eye; both aim at the same short AR/MA structure).
3. The trace's order is the most frequent (p, d, q) over its series.

The default, ``"0,1,1"``, is the order this procedure picks on smartmoe-ae's 100-point windows
(most series I(1)): simple exponential smoothing with a fitted weight, whose forecast is flat at
the smoothed level. On the built-in tracer traces the tests call most windows stationary and
pick AR orders with a mean instead; chosen per trace with ``order=auto`` they forecast a little
better on some traces and worse on others (``python benchmarks/arima_order.py`` and the
measurements in docs/models.md).

Refit policy: the task's. ``refit()`` marks the coefficients stale; the next ``predict``
re-estimates them on the trailing window (and forecasts). Between refits ``predict`` re-applies
the last coefficients to the newest window (Kalman filter only, no estimation), so "once"
estimates once and then only updates state. Series with too few points to fit
(< ``min_points``), constant series, and fits that raise fall back to the window mean and are
counted.

Engines: ``engine="statsforecast"`` (default) fits with statsforecast's ARIMA (CSS-ML, the R
``forecast::Arima`` port); ``engine="statsmodels"`` with statsmodels' state-space ARIMA (exact
ML). Same order, same window, same scaling. They agree where the likelihood's maximum lies
inside the invertible region (tests/models/test_arima.py, on real series of both kinds of
trace) and differ where a model is over-differenced, e.g. (0, 1, 1) on a stationary window,
whose moving-average maximum sits at the boundary (docs/models.md). statsforecast is about 3x
faster per fit (``python benchmarks/arima_fits.py``).

Parallel: the series are split into chunks and fitted in a process pool
(``concurrent.futures.ProcessPoolExecutor``, fork start method, forkserver in a process that has
initialised CUDA: :func:`pool_start_method`) of ``n_jobs`` workers (-1: all
cores; 1: in this process). The pool lives as long as the predictor.

Default cost: smartmoe-ae (768 series, 40 origins) with 100-point windows and refit at every
origin is about 30k fits: about 3 minutes on 2 cores with statsforecast (docs/models.md).
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

from .base import ParamError, Predictor, record_spacing
from .processes import die_with_parent

#: status codes per series, returned by the workers
FITTED, REUSED, CONSTANT, SHORT, FAILED = range(5)
STATUS_NAMES = {
    FITTED: "series_fitted",
    REUSED: "series_filtered",
    CONSTANT: "series_constant",
    SHORT: "series_short",
    FAILED: "series_failed",
}


def parse_order(order: str) -> tuple[int, int, int] | None:
    """ "p,d,q" -> (p, d, q); "auto" -> None."""
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


def _sf_forecast(model: Any, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    from statsforecast.arima import forecast_arima

    with np.errstate(all="ignore"):
        f = forecast_arima(model, h=horizon, level=list(INTERVAL_LEVELS))
    mean = np.asarray(f["mean"], dtype=np.float64)
    half = (f["upper"].to_numpy(dtype=np.float64) - f["lower"].to_numpy(dtype=np.float64)) / 2  # [horizon, levels]
    return mean, half


def _sm_fit(y: np.ndarray, order: tuple[int, int, int], model: Any = None) -> Any:
    from statsmodels.tsa.arima.model import ARIMA

    spec = ARIMA(y, order=order, trend="c" if order[1] == 0 else "n")
    if model is not None:
        return spec.filter(model)
    return spec.fit()


def _sm_forecast(model: Any, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    f = model.get_forecast(horizon)
    mean = np.asarray(f.predicted_mean, dtype=np.float64)
    half = np.stack(
        [np.diff(np.asarray(f.conf_int(alpha=1 - c / 100)), axis=1)[:, 0] / 2 for c in INTERVAL_LEVELS], axis=1
    )
    return mean, half


#: The central prediction intervals (nominal %) the engines are asked for: their bounds are the quantiles at
#: :data:`models.base.QUANTILE_LEVELS` (0.4/0.6 from the 20% interval ... 0.01/0.99 from the 98%; the median
#: is the mean).
INTERVAL_LEVELS = (20, 40, 60, 80, 90, 98)


def level_interval(level: float) -> int:
    """The index in :data:`INTERVAL_LEVELS` of the central interval with a bound at quantile `level` (-1: median)."""
    if abs(level - 0.5) < 1e-9:
        return -1
    return INTERVAL_LEVELS.index(int(round(abs(2 * level - 1) * 100)))


ENGINES = {"statsforecast": (_sf_fit, _sf_forecast), "statsmodels": (_sm_fit, _sm_forecast)}


def _portable(engine: str, model: Any) -> Any:
    """What of a fitted model is kept to re-apply it later (small, picklable)."""
    if engine == "statsmodels":
        return np.asarray(model.params, dtype=np.float64)
    return {k: v for k, v in model.items() if k not in ("x", "residuals", "fitted")}  # the data stays here


def _z(levels: Sequence[int]) -> np.ndarray:
    """The standard normal's upper quantile of each central interval (nominal %)."""
    from statistics import NormalDist

    return np.array([NormalDist().inv_cdf(0.5 + c / 200) for c in levels])


def fit_forecast(
    y: np.ndarray, order: tuple[int, int, int], engine: str, horizon: int, min_points: int, state: Any = None
) -> tuple[np.ndarray, np.ndarray, Any, int]:
    """Forecast one series: (forecast [horizon], half-widths of the engine's prediction intervals
    [horizon, INTERVAL_LEVELS], model state to re-apply, status code).

    With `state` the coefficients are re-applied to `y` (filtering only); without, estimated. A series
    forecast by its window mean (too short, or a failed fit) gets the intervals of independent normal
    draws with the window's spread; a constant one, none.
    """
    fit, forecast = ENGINES[engine]
    mean = float(np.mean(y)) if len(y) else 0.0
    spread = np.broadcast_to((float(np.std(y, ddof=1)) if len(y) > 1 else 0.0) * _z(INTERVAL_LEVELS),
                             (horizon, len(INTERVAL_LEVELS)))
    if len(y) < min_points:
        return np.full(horizon, mean), spread, None, SHORT
    if np.ptp(y) < 1e-9:
        return np.full(horizon, float(y[-1])), np.zeros((horizon, len(INTERVAL_LEVELS))), None, CONSTANT
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if state is not None:
                model = fit(y, order, state if engine == "statsmodels" else dict(state))
            else:
                model = fit(y, order)
            f, half = forecast(model, horizon)
        if f.shape != (horizon,) or not np.isfinite(f).all():
            raise FloatingPointError("non-finite forecast")
        half = np.where(np.isfinite(half) & (half >= 0), half, spread)  # an undefined interval: the window's spread
        return f, half, _portable(engine, model), REUSED if state is not None else FITTED
    except Exception:
        if state is not None:  # re-applying failed (e.g. a now-constant window): estimate anew
            return fit_forecast(y, order, engine, horizon, min_points)
        return np.full(horizon, mean), spread, None, FAILED


def _fit_chunk(Y: np.ndarray, order, engine, horizon, min_points, states) -> tuple[np.ndarray, np.ndarray, list, list]:
    """Worker: fit_forecast over the rows of Y [n, W]."""
    out = np.empty((len(Y), horizon))
    half = np.empty((len(Y), horizon, len(INTERVAL_LEVELS)))
    new_states, codes = [], []
    for i, y in enumerate(Y):
        out[i], half[i], s, c = fit_forecast(y, order, engine, horizon, min_points, states[i] if states else None)
        new_states.append(s)
        codes.append(c)
    return out, half, new_states, codes


def _one_blas_thread():
    """One BLAS thread: statsmodels makes many tiny BLAS calls, which extra threads only slow
    down (about 9x here); the workers fill the cores instead."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:
        import contextlib

        return contextlib.nullcontext()


def pool_start_method() -> str:
    """``fork`` (fast: the workers inherit the loaded libraries) unless this process has initialised CUDA (a
    predictor planning inside a GPU training job, bench.live): a forked child of a CUDA process can die as it
    starts, so the workers then come from a fresh ``forkserver`` (``spawn`` where there is none)."""
    import multiprocessing as mp
    import sys

    methods = mp.get_all_start_methods()
    torch = sys.modules.get("torch")
    cuda_live = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    if "fork" in methods and not cuda_live:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _warm_up(engine: str, parent_pid: int | None) -> None:
    """Worker initializer: die with the harness, import the engine once per process, not once per task."""
    die_with_parent(parent_pid)
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


def select_order(
    series: np.ndarray, max_d: int = 2, max_p: int = 2, max_q: int = 2
) -> tuple[tuple[int, int, int], dict]:
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


# ---- the series a model fits ------------------------------------------------------------------
def point_layout(steps: np.ndarray, window: int, bin_iterations: int) -> tuple[int, int]:
    """(records averaged into one point, points in a full window) for a trace's record spacing."""
    spacing = record_spacing(steps)
    k = max(1, int(round(bin_iterations / spacing)))
    return k, max(1, int(round(window / spacing)) // k)


def binned_window(p: np.ndarray, steps: np.ndarray, window: int, bin_iterations: int) -> np.ndarray:
    """[points, L, E]: the last `window` iterations of `p` [T, L, E] averaged into points of
    `bin_iterations`, the last point ending at the last record (a partial oldest bin is left out)."""
    k, points = point_layout(steps, window, bin_iterations)
    n = min(len(p) // k, points) * k
    if n == 0:
        return p.mean(axis=0, keepdims=True)
    return p[len(p) - n :].reshape(n // k, k, *p.shape[1:]).mean(axis=1)


def fitted_series(p: np.ndarray, steps: np.ndarray, window: int, bin_iterations: int) -> np.ndarray:
    """[L*E, points]: what the models fit, every (layer, expert) series' binned window as E * p."""
    x = binned_window(p, steps, window, bin_iterations)
    n, L, E = x.shape
    return np.ascontiguousarray((x * E).reshape(n, L * E).T)


def within_bin_variance(x: np.ndarray, steps: np.ndarray, window: int, bin_iterations: int) -> np.ndarray:
    """[L*E]: the variance of one record of `x` [T, L, E] around its bin's mean over the binned window (0 for
    bins of one record), in the series' units: what a record adds to the spread of the bin mean a model forecasts."""
    k, points = point_layout(steps, window, bin_iterations)
    n = min(len(x) // k, points) * k
    L, E = x.shape[1:]
    if k < 2 or n == 0:
        return np.zeros(L * E)
    b = x[len(x) - n :].reshape(n // k, k, L * E)
    return ((b - b.mean(axis=1, keepdims=True)) ** 2).sum(axis=(0, 1)) / (n - n // k)


def record_quantiles(F: np.ndarray, half: np.ndarray, within: np.ndarray, layers: int, experts: int) -> np.ndarray:
    """[points, L, E, Q]: quantiles of one record's share at :data:`models.base.QUANTILE_LEVELS` from the series'
    forecasts `F` [L*E, points] in units of ``E p`` and their intervals' half-widths `half` [L*E, points, levels].

    The engines' intervals are normal (mean +- z se); a record is its bin's mean plus its own deviation within the
    bin, independent of the bin's forecast error, so each half-width ``z se`` becomes ``z sqrt(se^2 + within)``.
    Clipped to [0, 1]; monotone in the level because the half-widths grow with the interval."""
    from .base import QUANTILE_LEVELS

    z = _z(INTERVAL_LEVELS)
    half = np.sqrt(half**2 + z**2 * within[:, None, None])  # [S, points, levels]
    cols = []
    for level in QUANTILE_LEVELS:
        i = level_interval(level)
        cols.append(F if i < 0 else F + np.sign(level - 0.5) * half[..., i])
    q = np.maximum.accumulate(np.stack(cols, axis=-1), axis=-1) / experts  # [S, points, Q]
    return np.clip(q.reshape(layers, experts, *q.shape[1:]).transpose(2, 0, 1, 3), 0.0, 1.0)


# ---- the predictor ----------------------------------------------------------------------------
#: What ``order="auto"`` fits until the history fills a window to select from (the order the
#: procedure picks on smartmoe-ae's windows; see docs/models.md).
INTERIM_ORDER = (0, 1, 1)


class Arima(Predictor):
    """The seed paper's ARIMA: one model per (layer, expert) series on a trailing window (docs/models.md)."""

    name = "arima"
    defaults = {
        "order": "0,1,1",
        "window": 1000,
        "bin": 10,
        "engine": "statsforecast",
        "n_jobs": -1,
        "min_points": 20,
        "select_series": 96,
    }
    search_space = {
        "window": ("log", 200, 4000),
        "order": ("cat", ["1,0,1", "1,1,1", "2,1,2", "1,0,0", "0,1,1", "2,0,2"]),
    }
    version = 3  # 3: quantiles (predict_quantiles); 2: window and bin in iterations (1: window in records, no binning)

    def __init__(self, **params):
        super().__init__(**params)
        parse_order(self.params["order"])  # refuse a malformed order now, not at the first origin
        if self.params["engine"] not in ENGINES:
            raise ParamError(f"arima: engine must be one of {sorted(ENGINES)}, got {self.params['engine']!r}")
        if self.params["bin"] < 1 or self.params["window"] < 2 * self.params["bin"]:
            raise ParamError(
                "arima: bin must be at least 1 iteration and window at least 2 bins "
                f"(got window={self.params['window']}, bin={self.params['bin']})"
            )
        self._pool = None
        self.stats: Counter = Counter()
        self.selected: dict | None = None

    # -- pool
    def _workers(self) -> int:
        n = self.params["n_jobs"]
        return len(os.sched_getaffinity(0)) if n in (-1, 0) else max(1, n)

    def _executor(self):
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            method = pool_start_method()
            # a forked worker's parent is this process; a forkserver's worker is the server's child (the server
            # ends when this process does)
            parent = os.getpid() if method == "fork" else None
            self._pool = ProcessPoolExecutor(
                self._workers(), mp_context=mp.get_context(method), initializer=_warm_up,
                initargs=(self.params["engine"], parent),
            )
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def _map(self, Y: np.ndarray, order, horizon: int, states: list | None):
        """Forecast every row of Y [series, points] `horizon` points ahead, in the pool: (forecasts, interval
        half-widths, states, status codes)."""
        args = (order, self.params["engine"], horizon, self.params["min_points"])
        workers = self._workers()
        if workers == 1 or len(Y) < 2:
            with _one_blas_thread():
                return _fit_chunk(Y, *args, states)
        bounds = np.linspace(0, len(Y), min(len(Y), 4 * workers) + 1).astype(int)
        futures = [
            self._executor().submit(_fit_chunk, Y[a:b], *args, states[a:b] if states else None)
            for a, b in zip(bounds[:-1], bounds[1:])
            if b > a
        ]
        parts = [f.result() for f in futures]
        return (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            [s for p in parts for s in p[2]],
            [c for p in parts for c in p[3]],
        )

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
            t = training[-1]
            self._select(np.asarray(t.proportions), np.asarray(t.steps))

    def _series(self, p: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return fitted_series(p, steps, self.params["window"], self.params["bin"])

    def _select(self, p: np.ndarray, steps: np.ndarray) -> None:
        series = self._series(p, steps)
        rng = np.random.default_rng(0)
        pick = rng.choice(len(series), size=min(len(series), self.params["select_series"]), replace=False)
        self._order, self.selected = select_order(series[np.sort(pick)])
        self.selected["order"] = ",".join(map(str, self._order))

    def refit(self) -> None:
        self._stale = True

    def predict(self, horizon: int) -> np.ndarray:
        h = self.history
        L, E = h.layers, h.experts
        Y = self._series(h.proportions, h.steps)
        k, full = point_layout(h.steps, self.params["window"], self.params["bin"])
        if self._order is None and Y.shape[1] >= full:  # auto: select once the history fills a window
            self._select(h.proportions, h.steps)
            self._states = None  # fitted with the interim order
        order = self._order or INTERIM_ORDER
        points = -(-horizon // k)
        states = None if self._stale or self._states is None else self._states
        t0 = time.perf_counter()
        F, half, new_states, codes = self._map(Y, order, points, states)
        self.stats["fit_seconds"] += time.perf_counter() - t0
        self.stats.update(STATUS_NAMES[c] for c in codes)
        if states is None:
            self.stats["estimations"] += 1
            self._stale = False  # a series left unfitted (too short, failed) is estimated at its next forecast
        self._states = new_states
        which = np.arange(horizon) // k  # a record takes its point's value
        within = within_bin_variance(h.proportions * E, h.steps, self.params["window"], self.params["bin"])
        self._quantiles = (len(h), horizon, record_quantiles(F, half, within, L, E)[which])
        return self._finish((F.T / E).reshape(points, L, E))[which]

    def predict_quantiles(self, records: int) -> np.ndarray:
        """The engine's prediction intervals of the forecast :meth:`predict` made at this origin (fitted then),
        widened for a record's spread within its bin; see :func:`record_quantiles`."""
        cached = getattr(self, "_quantiles", None)
        if cached is None or cached[:2] != (len(self.history), records):
            self.predict(records)
            cached = self._quantiles
        return cached[2]

    def _finish(self, F: np.ndarray) -> np.ndarray:
        """Clip and renormalise each forecast point's row [points, L, E] only where needed; count both."""
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
        info = {
            "order": ",".join(map(str, self._order)) if self._order else None,
            "selected": self.selected,
            "stats": dict(self.stats),
            "workers": self._workers(),
        }
        return report(folder, metrics=metrics, json_files={"arima_stats.json": info})
