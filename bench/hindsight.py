"""The hindsight floor: the best score of a simple forecast chosen with the horizon's truth in hand.

A forecast made at the origin cannot know the horizon; the best member of a simple family
picked *after* seeing it is therefore a yardstick that an honest forecast is very unlikely to
beat by a wide margin (:mod:`bench.fairplay` uses it to spot forecasts that saw the future).

Two families, per (layer, expert) series of one origin's truth ``p[n, L, E]``:

- *constant*: the per-expert median over the horizon minimises each expert's term of
  ``error_rate`` separately, so its error is a lower bound for every constant forecast,
  simplex-constrained or not (exact). For ``mape`` the same holds with the weighted median
  (weights ``1 / max(p, 1/(100E))``). For ``window_error`` the floor is 0 by definition: the
  horizon's true mean is a constant forecast and scores exactly 0.
- *line*: the least-absolute-deviations (LAD) line per expert over the horizon's steps
  (iterations), the richer family that follows a drifting load. An exact linear program per
  series would cost L x E x origins solver calls, so the lines are fitted by iteratively
  reweighted least squares (IRLS) over many series at once: weights ``1 / max(|r|, delta)`` with
  ``delta`` shrinking from the mean residual to 1e-6 of it (a smoothing continuation, which
  halves the iterations), in float32, stopping when a layer's error improves by less than
  `LINE_RTOL` (relative) in an iteration. The value reported is the float64 error of the best
  line any iterate reached, or of the median if lower: an error some line really scores, so
  never below the exact minimum and never above the constant floor. The tests hold it within
  1e-4 (relative, per layer) of exact LP fits; measured on real slices, it is within 3e-5.

Neither floor is a running sum (medians and reweighted fits), so cumulative sums do not help;
memory is a few copies of one horizon's window, whatever the trace's length.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .task import Origins, Task, rolling_origins

#: IRLS: at most this many reweightings; stop when no layer's error improved by more than
#: `LINE_RTOL` (relative) in the last one.
LINE_ITERATIONS = 100
LINE_RTOL = 1e-6
#: IRLS works on blocks of whole layers of about this many values (cache-sized float32 buffers).
BLOCK_VALUES = 1 << 18


def _check_window(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 3 or p.shape[0] == 0:
        raise ValueError(f"expected proportions p[n, L, E] with n >= 1, got shape {p.shape}")
    return p


def _median_fit(ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-series median of ``ys[S, n]`` and the sum of |residual| it leaves, both [S].

    For an even n any value between the two middle ones minimises the sum; the upper one is taken.
    """
    k = ys.shape[1] // 2
    med = np.partition(ys, k, axis=1)[:, k]
    return med, np.abs(ys - med[:, None]).sum(axis=1)


def constant_floor(p: np.ndarray) -> np.ndarray:
    """error_rate [L] of the per-expert median of ``p[n, L, E]``: no constant forecast scores less."""
    p = _check_window(p)
    n, L, E = p.shape
    return _median_fit(p.reshape(n, -1).T)[1].reshape(L, E).sum(axis=1) / n


def constant_mape_floor(p: np.ndarray) -> np.ndarray:
    """mape [L] of the per-expert weighted median of ``p[n, L, E]``: no constant forecast scores less.

    The weights are those of ``mape`` in :func:`bench.metrics.forecast_errors`.
    """
    p = _check_window(p)
    n, L, E = p.shape
    ys = p.reshape(n, -1).T
    ws = 1.0 / np.maximum(ys, 1.0 / (100 * E))
    order = np.argsort(ys, axis=1)
    cum = np.cumsum(np.take_along_axis(ws, order, axis=1), axis=1)
    k = (cum < 0.5 * cum[:, -1:]).sum(axis=1)  # the first value whose cumulative weight reaches half
    wmed = np.take_along_axis(ys, np.take_along_axis(order, k[:, None], axis=1), axis=1)
    return (ws * np.abs(ys - wmed)).sum(axis=1).reshape(L, E).sum(axis=1) / (n * E)


def _scaled_time(steps: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(tau, centre, scale): steps as ``centre + scale * tau`` with tau in [-1, 1]."""
    t = np.asarray(steps, dtype=np.float64)
    centre = float(t.mean())
    scale = max(float(np.abs(t - centre).max()), 1.0)
    return (t - centre) / scale, centre, scale


def lad_lines(ys: np.ndarray, steps: np.ndarray, layer_size: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-absolute-deviations lines for every series of ``ys[S, n]`` over ``steps[n]`` (IRLS).

    Returns (sum of |residual| [S], intercept [S], slope [S] per step) of the line
    ``intercept + slope * steps``. The stopping rule looks at sums over consecutive groups of
    `layer_size` series (one group of all by default).
    """
    ys = np.asarray(ys, dtype=np.float64)
    tau, centre, scale = _scaled_time(steps)
    total, a, b = _lad_fit(ys, tau, _median_fit(ys), layer_size or len(ys))
    return total, a - b * centre / scale, b / scale


def _lad_fit(ys: np.ndarray, tau: np.ndarray, median: tuple[np.ndarray, np.ndarray], layer_size: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`lad_lines` in a time `tau` scaled into [-1, 1] (well-conditioned 2x2 systems)."""
    S, n = ys.shape
    med, med_total = median
    if n < 2:
        return med_total, med, np.zeros(S)
    y32, tau32 = ys.astype(np.float32), tau.astype(np.float32)
    design = np.stack([np.ones(n), tau, tau * tau], axis=1).astype(np.float32)  # [n, 3]
    a = ys.mean(axis=1)
    b = (ys - a[:, None]) @ tau / (tau @ tau)  # the least-squares line starts it
    best_total = np.full(S, np.inf)
    best_a, best_b = a.copy(), b.copy()
    resid, weight = np.empty_like(y32), np.empty_like(y32)
    for k in range(LINE_ITERATIONS):
        np.multiply.outer(b.astype(np.float32), tau32, out=resid)
        resid += a.astype(np.float32)[:, None]
        np.subtract(y32, resid, out=resid)
        np.abs(resid, out=weight)
        total = weight.sum(axis=1, dtype=np.float64)
        layer_before = best_total.reshape(-1, layer_size).sum(axis=1)
        better = total < best_total
        best_total = np.where(better, total, best_total)
        best_a, best_b = np.where(better, a, best_a), np.where(better, b, best_b)
        gain = layer_before - best_total.reshape(-1, layer_size).sum(axis=1)
        if k > 0 and np.all(gain <= LINE_RTOL * layer_before):
            break
        delta = max(0.5**k, 1e-6) * np.maximum(total / n, 1e-12)  # smoothing continuation
        np.maximum(weight, delta.astype(np.float32)[:, None], out=weight)
        np.reciprocal(weight, out=weight)
        resid *= weight  # w * r: the IRLS step is a Newton step on the smoothed objective
        sw, swt, swtt = (weight @ design).astype(np.float64).T
        gs, gt = (resid @ design[:, :2]).astype(np.float64).T
        det = sw * swtt - swt * swt
        ok = det > 0
        det = np.where(ok, det, 1.0)
        a = a + np.where(ok, (swtt * gs - swt * gt) / det, 0.0)
        b = b + np.where(ok, (sw * gt - swt * gs) / det, 0.0)
    exact = np.abs(ys - best_a[:, None] - np.multiply.outer(best_b, tau)).sum(axis=1)
    use_median = med_total <= exact
    return (np.where(use_median, med_total, exact), np.where(use_median, med, best_a),
            np.where(use_median, 0.0, best_b))


def _window_floors(window: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(constant floor [L], line floor [L]) of one horizon ``window[n, L, E]``."""
    n, L, E = window.shape
    tau = _scaled_time(steps)[0]
    const, line = np.empty(L), np.empty(L)
    per_block = max(1, BLOCK_VALUES // (n * E))
    for first in range(0, L, per_block):
        layers = slice(first, min(first + per_block, L))
        ys = np.ascontiguousarray(window[:, layers].reshape(n, -1).T)  # [layers * E, n]
        count = ys.shape[0] // E
        median = _median_fit(ys)
        const[layers] = median[1].reshape(count, E).sum(axis=1) / n
        line[layers] = _lad_fit(ys, tau, median, E)[0].reshape(count, E).sum(axis=1) / n
    return const, line


def line_floor(p: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """error_rate [L] of the best straight line in the steps per expert of ``p[n, L, E]`` (LAD, IRLS)."""
    p = _check_window(p)
    steps = np.asarray(steps)
    if steps.shape != (len(p),):
        raise ValueError(f"steps has shape {steps.shape}, expected ({len(p)},) to match p")
    return _window_floors(p, steps)[1]


@dataclass(frozen=True)
class OriginFloors:
    """Hindsight floors of one horizon at every rolling origin, rows aligned with the origins."""

    horizon: int  # iterations
    origins: np.ndarray  # [O] origin record indices (bench.task.rolling_origins)
    origin_steps: np.ndarray  # [O] their iterations
    constant: np.ndarray  # [O, L] error_rate of the per-expert median
    line: np.ndarray  # [O, L] error_rate of the per-expert LAD line
    constant_mape: np.ndarray | None = None  # [O, L] mape of the per-expert weighted median, if asked for

    @property
    def hindsight(self) -> np.ndarray:
        """[O, L] error_rate of the better of the two families (the floor the fair-play test uses)."""
        return np.minimum(self.constant, self.line)

    def rows_for(self, origin_steps) -> np.ndarray:
        """Row indices of the given origin iterations (e.g. the origins a run did not fail at)."""
        origin_steps = np.asarray(origin_steps, dtype=np.int64)
        idx = np.minimum(np.searchsorted(self.origin_steps, origin_steps), max(len(self.origin_steps) - 1, 0))
        found = self.origin_steps[idx] == origin_steps if len(self.origin_steps) else np.zeros(len(origin_steps), bool)
        if not np.all(found):
            missing = origin_steps[~found][:5].tolist()
            raise ValueError(f"iterations {missing} are not origins of horizon {self.horizon}")
        return idx


def floors_at_origins(p: np.ndarray, steps: np.ndarray, task: Task, mape: bool = False,
                      origins: dict[int, Origins] | None = None, offset: int = 0) -> dict[int, OriginFloors]:
    """The hindsight floors at every origin of `task` on a trace's ``p[T, L, E]`` and ``steps[T]``.

    Horizon -> floors, rows in the order of :func:`bench.task.rolling_origins`. They depend only
    on the trace and the task, not on a predictor: compute them once per (dataset, task). `mape`
    adds the weighted-median floor of ``mape`` (a sort per origin).

    `origins` (horizon -> :class:`~bench.task.Origins`) replaces the task's own, with records counted
    from `offset`, the record that ``p[0]`` is: the floors of some origins of a longer trace from the
    records their windows cover (bench.sharded). The layers are always all of ``p``'s: the line fit's
    stopping rule looks at blocks of layers.
    """
    steps = np.asarray(steps)
    if np.ndim(p) != 3 or len(p) != len(steps):
        raise ValueError(f"p has shape {np.shape(p)}, expected [{len(steps)}, L, E] to match steps")
    L = p.shape[1]
    out = {}
    for H, o in (rolling_origins(steps, task) if origins is None else origins).items():
        count = len(o.records)
        const, line = np.empty((count, L)), np.empty((count, L))
        cmape = np.empty((count, L)) if mape else None
        for i, (rec, n) in enumerate(zip((o.records - offset).tolist(), o.lengths.tolist())):
            window = np.asarray(p[rec : rec + n], dtype=np.float64)
            const[i], line[i] = _window_floors(window, steps[rec : rec + n])
            if cmape is not None:
                cmape[i] = constant_mape_floor(window)
        out[H] = OriginFloors(H, o.records.copy(), steps[o.records - offset].astype(np.int64), const, line, cmape)
    return out


def cached_floors(p: np.ndarray, steps: np.ndarray, task: Task, path: Path) -> dict[int, OriginFloors]:
    """:func:`floors_at_origins`, kept in `path` (an ``.npz``) so that every model on one task reuses them.

    A cache file that cannot be read, or holds other origins, is computed again and replaced
    (atomically: a reader never sees half a file).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {int(H): OriginFloors(int(H), z[f"h{H}/origins"], z[f"h{H}/origin_steps"], z[f"h{H}/constant"],
                                        z[f"h{H}/line"]) for H in z["horizons"]}
        if set(out) == set(task.horizons) and all(
                np.array_equal(out[H].origins, o.records) for H, o in rolling_origins(steps, task).items()):
            return out
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        pass
    out = floors_at_origins(p, steps, task)
    arrays = {"horizons": np.array(sorted(out), dtype=np.int64)}
    for H, f in out.items():
        arrays.update({f"h{H}/origins": f.origins, f"h{H}/origin_steps": f.origin_steps, f"h{H}/constant": f.constant,
                       f"h{H}/line": f.line})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return out
