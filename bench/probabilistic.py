"""Scores of a quantile forecast: weighted quantile loss, interval coverage and width (docs/protocol.md).

All functions work on one origin's horizon for every layer at once, like bench.metrics: quantiles
``qhat[H, L, E, Q]`` at :data:`models.base.QUANTILE_LEVELS`, actual shares ``p[H, L, E]``; results are ``[L]``.

The quantile loss is scoringrules' (a maintained library of proper scoring rules; docs/protocol.md
says why that one): ``crps_quantile``, twice the mean pinball loss over the levels, which
approximates the CRPS. Summed over experts and averaged over the horizon's records it is in the
same unit as `error_rate` (a share's L1 distance): a forecast whose every quantile is its point
forecast scores ``sum_e |phat - p|`` times the levels' mean weight, near `error_rate` itself.
Because a record's shares sum to 1, this is fev's *weighted* quantile loss (pinball losses over
the sum of the actual values) per record.
"""

from __future__ import annotations

import numpy as np

from models.base import QUANTILE_LEVELS

#: Central intervals scored for coverage: nominal coverage in percent -> (lower level, upper level).
INTERVALS = {80: (0.1, 0.9), 90: (0.05, 0.95)}
#: The scores of one quantile forecast (:func:`quantile_scores`), per (origin, layer).
QUANTILE_SCORES = ("quantile_loss", "coverage_80", "coverage_90", "width_90")
#: What a probabilistic run adds per (origin, layer), beside the point forecast's metrics.
METRICS = QUANTILE_SCORES + ("reference_quantile_loss",)
#: sw_quantiles' window (iterations): the reference every quantile loss is scaled by, sw_avg's default window.
REFERENCE_WINDOW = 100


def scoring_rules():
    """scoringrules, with its numpy backend alone.

    Where numba is installed (it is: statsforecast needs it), scoringrules 0.10, the last release for
    Python 3.11, compiles all its numba kernels when imported: 17 s on 2 CPU cores, for kernels this
    module never calls (the library's issue #80; compiled lazily from 0.11, which needs Python 3.12).
    With numba hidden for the import it loads in about half a second; numba itself is untouched.
    """
    import sys

    if "scoringrules" not in sys.modules:
        numba = sys.modules.get("numba")
        sys.modules["numba"] = None  # an import of numba now raises ImportError, which scoringrules handles
        try:
            import scoringrules  # noqa: F401
        finally:
            if numba is None:
                del sys.modules["numba"]
            else:
                sys.modules["numba"] = numba
    return sys.modules["scoringrules"]


def quantile_record_scores(qhat: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """quantile_loss, coverage_80, coverage_90 and width_90 per record and layer ``[H, L]`` (a horizon's score
    is their mean over its records)."""
    levels = np.asarray(QUANTILE_LEVELS)
    crps = scoring_rules().crps_quantile(p, qhat, levels, backend="numpy")  # [H, L, E]
    out = {"quantile_loss": crps.sum(axis=2)}
    for nominal, (lo, hi) in INTERVALS.items():
        low, high = qhat[..., QUANTILE_LEVELS.index(lo)], qhat[..., QUANTILE_LEVELS.index(hi)]
        out[f"coverage_{nominal}"] = ((p >= low) & (p <= high)).mean(axis=2)
        if nominal == 90:
            out["width_90"] = (high - low).sum(axis=2)
    return out


def quantile_scores(qhat: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """The scores of one origin's quantile forecast per layer ``[L]``: :func:`quantile_record_scores` averaged."""
    return {k: v.mean(axis=0) for k, v in quantile_record_scores(qhat, p).items()}


def reference_quantiles(p_past: np.ndarray, steps_past: np.ndarray) -> np.ndarray:
    """[L, E, Q]: sw_quantiles' forecast from the records before an origin (the last `REFERENCE_WINDOW` iterations)."""
    from models.probabilistic import window_quantiles

    start = int(np.searchsorted(steps_past, steps_past[-1] - REFERENCE_WINDOW, side="right"))
    return window_quantiles(p_past[min(start, len(p_past) - 1) :])


def scaled_quantile_loss(quantile_loss: float, reference: float) -> float:
    """The quantile loss over sw_quantiles' on the same origins (below 1: a better spread), as fev scales by
    seasonal naive's; a ratio of the aggregated means, never a mean of per-origin ratios."""
    return quantile_loss / reference if reference > 0 else float("nan")


#: Ratio metrics computed after aggregation from the means of their parts (as bench.placement.DERIVED).
DERIVED = {"scaled_quantile_loss": (("quantile_loss", "reference_quantile_loss"), scaled_quantile_loss)}
