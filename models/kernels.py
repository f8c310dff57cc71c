"""Numpy kernels that compute the built-in estimators at many origins at once.

A kernel takes the records before the last origin (``counts``/``proportions``/``steps``) and
the origin record indices (ascending), and returns one ``[L, E]`` estimate per origin that uses
only the records before *that* origin. It performs, per origin, the same floating-point
operations in the same order as the estimator's :meth:`~models.base.Predictor.predict` does on
the history the harness shows it, so the two paths agree bit for bit
(tests/bench/test_evaluate.py checks every built-in dataset it is given). The classes in
:mod:`models.baselines` and :mod:`models.engines` are thin wrappers over them, the layout of
statsforecast's window models (a numpy kernel plus a class holding the parameters).

Sums of token counts are exact in int64 whatever their order, so they come from one
cumulative sum. Sums of proportions are not: they are added record by record in time order,
exactly as ``numpy.add.reduce`` over the first axis adds them, vectorised across origins.
"""

from __future__ import annotations

import numpy as np


def window_starts(steps: np.ndarray, origins: np.ndarray, iterations: int) -> np.ndarray:
    """First record of the last `iterations` iterations before each origin (at least the record before it),
    as :meth:`models.base.History.since` finds it on the history ``steps[:origin]``."""
    origins = np.asarray(origins, dtype=np.int64)
    starts = np.searchsorted(steps, steps[origins - 1] - iterations, side="right")
    return np.minimum(starts, origins - 1)


def window_means(p: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``p[starts[i]:ends[i]].mean(axis=0)`` for every i, ``[n, L, E]``, bit for bit: rows added in time order."""
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    lengths = ends - starts
    if len(starts) == 0:
        return np.zeros((0,) + p.shape[1:])
    acc = p[starts].astype(np.float64, copy=True)
    for k in range(1, int(lengths.max())):
        live = np.flatnonzero(lengths > k)
        if len(live) == len(starts):
            acc += p[starts + k]
        else:
            acc[live] += p[starts[live] + k]
    return acc / lengths[:, None, None]


def block_sums(p: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Running sums of ``p[bounds[i-1]:bounds[i]].sum(axis=0)`` over the blocks between consecutive `bounds`
    (the first block from record 0): the state of an estimator that adds each ``observe`` call's sum."""
    out = np.empty((len(bounds),) + p.shape[1:])
    total, prev = np.zeros(p.shape[1:]), 0
    for i, b in enumerate(np.asarray(bounds, dtype=np.int64).tolist()):
        if b > prev:
            total += p[prev:b].sum(axis=0)
        out[i] = total
        prev = b
    return out


def count_cumsum(counts: np.ndarray) -> np.ndarray:
    """``[T + 1, L, E]`` int64 cumulative token counts (row 0 is zero): any window's sum is exact."""
    out = np.zeros((len(counts) + 1,) + counts.shape[1:], dtype=np.int64)
    np.cumsum(counts, axis=0, dtype=np.int64, out=out[1:])
    return out


def ema_states(p: np.ndarray, steps: np.ndarray, origins: np.ndarray, decay: float) -> np.ndarray:
    """The exponential moving average of the proportions over the records before each origin, ``[n, L, E]``
    (not normalised), updated record by record as :class:`models.baselines.ExponentialMovingAverage` does."""
    origins = np.asarray(origins, dtype=np.int64)
    out = np.empty((len(origins),) + p.shape[1:])
    if len(origins) == 0:
        return out
    state, last = p[0].copy(), steps[0]
    i = 0
    for t in range(1, int(origins[-1]) + 1):
        while i < len(origins) and origins[i] == t:
            out[i] = state
            i += 1
        if t == origins[-1]:
            break
        a = decay ** float(steps[t] - last)
        state *= a
        state += (1.0 - a) * p[t]
        last = steps[t]
    return out
