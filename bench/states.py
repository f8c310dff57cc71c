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

from .task import StateConfig

TRANSIENT, STABLE = "transient", "stable"


def _records_for(steps: np.ndarray, iterations: int) -> int:
    spacing = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
    return max(2, int(round(iterations / max(spacing, 1.0))))


def _rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    """Trailing mean over w records along axis 0; NaN where fewer than w records exist."""
    c = np.cumsum(np.concatenate([np.zeros((1,) + x.shape[1:]), x]), axis=0)
    out = np.full(x.shape, np.nan)
    out[w - 1 :] = (c[w:] - c[:-w]) / w
    return out


def drift_ratio(p: np.ndarray, steps: np.ndarray, cfg: StateConfig = StateConfig()) -> np.ndarray:
    """The unsmoothed drift/noise ratio [T, L], centred: at record t it compares the ``w``
    records before t with the ``w`` from t on (NaN where either window is incomplete)."""
    T = p.shape[0]
    w = _records_for(steps, cfg.window)
    out = np.full(p.shape[:2], np.nan)
    if T < 2 * w + 1:
        return out
    mean = _rolling_mean(p, w)  # [T, L, E]
    drift = np.full(p.shape[:2], np.nan)
    drift[2 * w - 1 :] = np.abs(mean[2 * w - 1 :] - mean[w - 1 : T - w]).sum(axis=2)
    d = np.diff(p, axis=0)  # d[t-1] = p[t] - p[t-1]
    d = np.concatenate([np.full((1,) + d.shape[1:], np.nan), d])
    d2 = np.nan_to_num(d) ** 2
    var_d = _rolling_mean(d2, 2 * w - 1)  # mean of squared diffs within the 2w records
    sigma = np.sqrt(var_d / 2.0)
    noise = np.sqrt(2 / np.pi) * np.sqrt(2.0 / w) * sigma.sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(noise > 0, drift / noise, np.where(drift > 0, np.inf, 0.0))
    out[: 2 * w - 1] = np.nan
    centred = np.full_like(out, np.nan)
    centred[: T - w + 1] = out[w - 1 :]
    return centred


def _rolling_median(x: np.ndarray, k: int) -> np.ndarray:
    if k <= 1:
        return x
    out = np.full_like(x, np.nan)
    from numpy.lib.stride_tricks import sliding_window_view

    valid = ~np.isnan(x).any(axis=1)
    first = int(np.argmax(valid)) if valid.any() else len(x)
    xs = x[first:]
    if len(xs) == 0:
        return out
    valid_rows = ~np.isnan(xs).any(axis=1)
    last = int(len(xs) - np.argmax(valid_rows[::-1]))  # one past the last valid row
    xs = xs[:last]
    half = k // 2
    padded = np.concatenate([np.repeat(xs[:1], half, axis=0), xs, np.repeat(xs[-1:], k - 1 - half, axis=0)])
    out[first : first + last] = np.median(sliding_window_view(padded, k, axis=0), axis=-1)
    return out


def detect_states(p: np.ndarray, steps: np.ndarray, cfg: StateConfig = StateConfig()) -> np.ndarray:
    """Boolean [T, L]: True where stable, False where transient."""
    ratio = _rolling_median(drift_ratio(p, steps, cfg), _records_for(steps, cfg.smooth) if cfg.smooth else 1)
    stable = ratio <= cfg.threshold  # NaN (window incomplete) compares False: transient
    valid = ~np.isnan(ratio).any(axis=1)
    if valid.any():
        last = len(valid) - 1 - int(np.argmax(valid[::-1]))
        stable[last + 1 :] = stable[last]
    return stable


def state_names(stable: np.ndarray) -> np.ndarray:
    return np.where(stable, STABLE, TRANSIENT)
