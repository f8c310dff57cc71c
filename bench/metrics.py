"""Forecast errors and the noise floor, exactly as the protocol defines them.

All functions work on one origin's horizon for every layer at once: ``phat`` and ``p`` are
``[H, L, E]`` and results are ``[L]``.
"""

from __future__ import annotations

import numpy as np

#: What a run reports per horizon: the forecast's errors, then the two floors every error is read against
#: (the multinomial noise floor, and the hindsight floor of bench.hindsight).
METRICS = ("error_rate", "window_error", "mape", "noise_floor", "hindsight_floor")


def forecast_errors(phat: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """error_rate, window_error and mape per layer for one origin."""
    return forecast_errors_prefixes(phat, p, (len(p),))[len(p)]


def forecast_errors_prefixes(phat: np.ndarray, p: np.ndarray, lengths, buffers: dict | None = None
                             ) -> dict[int, dict[str, np.ndarray]]:
    """:func:`forecast_errors` of the first ``n`` records, for each ``n`` in `lengths` (one origin's horizons):
    the element-wise work is done once for the longest, and the numbers are those of separate calls bit for bit
    (the same values, reduced over the same contiguous layout).

    `buffers`, a dict kept between calls, holds the work arrays, so that a loop over origins does not
    allocate (and fault in) fresh ones each time.
    """
    E = p.shape[-1]
    need = max(lengths)
    buffers = {} if buffers is None else buffers
    if "diff" not in buffers or buffers["diff"].shape[0] < need or buffers["diff"].shape[1:] != p.shape[1:]:
        buffers["diff"] = np.empty((need,) + p.shape[1:])
        buffers["ratio"] = np.empty((need,) + p.shape[1:])
    diff, ratio = buffers["diff"][:need], buffers["ratio"][:need]
    np.subtract(phat[:need], p[:need], out=diff)
    np.abs(diff, out=diff)
    np.maximum(p[:need], 1.0 / (100 * E), out=ratio)
    np.divide(diff, ratio, out=ratio)
    out = {}
    for n in lengths:
        out[n] = {
            "error_rate": diff[:n].sum(axis=2).mean(axis=0),
            "window_error": np.abs(phat[:n].mean(axis=0) - p[:n].mean(axis=0)).sum(axis=1),
            "mape": ratio[:n].mean(axis=(0, 2)),
        }
    return out


def noise_floor(q: np.ndarray, n: np.ndarray) -> np.ndarray:
    """E|sum_e (X_e/N - q_e)| for X ~ Multinomial(N, q), per layer: exact, by linearity.

    Each marginal X_e is Binomial(N, q_e), whose mean absolute deviation has de Moivre's
    closed form ``2 (m+1) (1-q) P(X = m+1)`` with ``m = floor(N q)``.
    `q` is ``[L, E]`` (each row a distribution), `n` the routed slots per step ``[L]``.
    """
    from scipy.stats import binom

    n = np.rint(np.asarray(n, dtype=np.float64))[:, None]
    q = np.clip(q, 0.0, 1.0)
    m = np.floor(n * q)
    mad = 2.0 * (m + 1.0) * (1.0 - q) * binom.pmf(m + 1.0, n, q)
    return mad.sum(axis=1) / n[:, 0]


#: What a per-source run adds per horizon (docs/protocol.md, "Per-source loads"): the errors of the forecast
#: [source, expert] shares on the pairs whose tokens cross a source boundary and on all pairs, and the share of the
#: tokens that truly cross (the traffic the errors are read against).
SOURCE_METRICS = ("traffic_error", "source_error", "remote_share")


def expert_hosts(sources: int, experts: int) -> np.ndarray:
    """The source (rank or node) hosting each expert under the contiguous expert-parallel layout: expert ``e`` on
    source ``floor(e * sources / experts)``, i.e. ``experts / sources`` consecutive experts per source. [E] ints."""
    return np.arange(experts, dtype=np.int64) * sources // experts


def crossing(sources: int, experts: int) -> np.ndarray:
    """[S, E] booleans: whether source ``s``'s tokens for expert ``e`` leave ``s`` (the expert is hosted elsewhere)."""
    return expert_hosts(sources, experts)[None, :] != np.arange(sources)[:, None]


def source_errors(phat: np.ndarray, p: np.ndarray, cross: np.ndarray) -> dict[str, np.ndarray]:
    """traffic_error and source_error per layer for one origin: ``phat`` and ``p`` are ``[H, L, S, E]`` shares of
    each layer's routed tokens (every [S, E] slice sums to 1), `cross` the [S, E] pairs that cross a boundary."""
    diff = np.abs(phat - p)
    return {"traffic_error": (diff * cross).sum(axis=(2, 3)).mean(axis=0),
            "source_error": diff.sum(axis=(2, 3)).mean(axis=0)}


def remote_share(p: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """The share of each layer's routed tokens that cross a source boundary, mean over the horizon: [L]."""
    return (p * cross).sum(axis=(2, 3)).mean(axis=0)
