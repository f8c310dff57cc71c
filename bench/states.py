"""Label every (record, layer) of a trace transient or stable.

The detector (causal: a label uses only records up to its own):

1. ``w`` = the records spanning ``window`` iterations (at least 2).
2. *Drift*: the L1 distance over experts between the mean proportions of the last ``w`` records
   and of the ``w`` before them: how far the load distribution moved in one window.
3. *Noise*: what that drift would be if the proportions were only fluctuating around a fixed
   distribution. Each expert's per-record fluctuation ``sigma_e`` is estimated from first
   differences over the same ``2w`` records (``var(diff) / 2``); two means of ``w`` such records
   differ by ``sigma_e * sqrt(2 / w)`` in standard deviation, so the expected L1 drift is
   ``sqrt(2/pi) * sqrt(2/w) * sum_e sigma_e``. Because this scale is the trace's own, one
   threshold serves 16 and 128 experts, large and small batches, every-step or every-10th-step
   recording.
4. *Ratio* = drift / noise, centred on the record (the ``w`` records before it against the ``w``
   from it on) and smoothed with a centred rolling median over ``smooth`` iterations; a record
   is *stable* where the ratio is at most ``threshold`` and *transient* above it. Records within
   ``w`` of either end of the trace, where a window is incomplete, are transient (training
   starts in the transient state) at the start and take the last computed label at the end.

The labels describe the trace after the fact (they use records on both sides of a point, like
a person reading the plot); they are never shown to predictors.

This follows the seed paper's use of variance and range over windows of 10 and 100 iterations:
first differences stand for the short window, the window means for the long one.
"""

from __future__ import annotations

import numpy as np

from models.base import record_spacing

from .task import StateConfig

TRANSIENT, STABLE = "transient", "stable"
#: The three ways every aggregate is reported: over all origins, and over those of layers in each state.
STATES = ("all", TRANSIENT, STABLE)


def _records_for(steps: np.ndarray, iterations: int) -> int:
    return max(2, int(round(iterations / max(record_spacing(steps), 1.0))))


def _ratio_grid(p: np.ndarray, steps: np.ndarray, cfg: StateConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """The drift/noise ratio at grid records: (centres [K], ratio [K, L], grid spacing g).

    For speed on long traces the ratio is evaluated every ``g = w // 10`` records, with windows
    made of whole blocks of ``g`` records (``g = 1``, every record, when ``w < 20``). One pass
    over the trace sums each block's proportions and squared first differences; every window
    mean is then a difference of cumulative block sums.
    """
    T, L, E = p.shape
    w = _records_for(steps, cfg.window)
    g = max(1, w // 10)
    nb = max(1, w // g)
    w = nb * g
    Tb = T // g
    if Tb < 2 * nb:
        return np.zeros(0, dtype=np.int64), np.zeros((0, L)), g
    n = Tb * g
    ps = np.empty((Tb, L, E))
    d2s = np.empty((Tb, L, E))
    chunk = max(g, ((1 << 21) // (L * E)) // g * g)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        block = p[s:e]
        prev = p[s - 1 : e - 1] if s > 0 else np.concatenate([p[:1], p[: e - 1]])
        ps[s // g : e // g] = block.reshape(-1, g, L, E).sum(axis=1)
        d2s[s // g : e // g] = ((block - prev) ** 2).reshape(-1, g, L, E).sum(axis=1)
    zero = np.zeros((1, L, E))
    cp = np.concatenate([zero, np.cumsum(ps, axis=0)])
    cd = np.concatenate([zero, np.cumsum(d2s, axis=0)])
    k = np.arange(2 * nb, Tb + 1)  # the pair of windows covers blocks k-2nb .. k-1
    drift = np.abs((cp[k] - 2 * cp[k - nb] + cp[k - 2 * nb]) / w).sum(axis=2)
    sigma = np.sqrt((cd[k] - cd[k - 2 * nb]) / (2 * w) / 2.0)
    noise = np.sqrt(2 / np.pi) * np.sqrt(2.0 / w) * sigma.sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(noise > 0, drift / noise, np.where(drift > 0, np.inf, 0.0))
    return (k - nb) * g, ratio, g


def _expand(centres: np.ndarray, values: np.ndarray, T: int) -> np.ndarray:
    """Give every record the value at the last grid centre at or before it (NaN before the first)."""
    out = np.full((T,) + values.shape[1:], np.nan)
    if len(centres):
        idx = np.searchsorted(centres, np.arange(T), side="right") - 1
        ok = idx >= 0
        out[ok] = values[idx[ok]]
        out[centres[-1] + 1 :] = np.nan  # past the last full window pair
        out[centres[-1]] = values[-1]
    return out


def drift_ratio(p: np.ndarray, steps: np.ndarray, cfg: StateConfig = StateConfig()) -> np.ndarray:
    """The unsmoothed drift/noise ratio [T, L], centred: at record t it compares the ``w``
    records before t with the ``w`` from t on (NaN where either window is incomplete)."""
    centres, ratio, _ = _ratio_grid(p, steps, cfg)
    return _expand(centres, ratio, p.shape[0])


def _rolling_median(x: np.ndarray, k: int) -> np.ndarray:
    """Centred rolling median over k rows, edges padded with the first and last rows."""
    if k <= 1 or len(x) == 0:
        return x
    from numpy.lib.stride_tricks import sliding_window_view

    half = k // 2
    padded = np.concatenate([np.repeat(x[:1], half, axis=0), x, np.repeat(x[-1:], k - 1 - half, axis=0)])
    return np.median(sliding_window_view(padded, k, axis=0), axis=-1)


def detect_states(p: np.ndarray, steps: np.ndarray, cfg: StateConfig = StateConfig()) -> np.ndarray:
    """Boolean [T, L]: True where stable, False where transient."""
    centres, ratio, g = _ratio_grid(p, steps, cfg)
    smooth = max(1, _records_for(steps, cfg.smooth) // g) if cfg.smooth else 1
    stable_grid = _rolling_median(ratio, smooth) <= cfg.threshold
    stable = _expand(centres, stable_grid.astype(float), p.shape[0])
    valid = ~np.isnan(stable).any(axis=1)
    if valid.any():
        last = len(valid) - 1 - int(np.argmax(valid[::-1]))
        stable[last + 1 :] = stable[last]
    return np.nan_to_num(stable, nan=0.0).astype(bool)  # incomplete windows at the start: transient


def state_names(stable: np.ndarray) -> np.ndarray:
    return np.where(stable, STABLE, TRANSIENT)
