"""The look-ahead test: a forecast that scores implausibly well has seen the future, by whatever route.

It looks only at scores, so it does not matter how a predictor reached the truth. Four facts
about a forecast made without the truth, per horizon, over the rolling origins:

1. on average it cannot score below the multinomial noise floor (``bench.metrics.noise_floor``):
   disqualified when the one-sided upper bound of ``mean error / mean noise floor`` is below
   `NOISE_MARGIN` (1);
2. nor come anywhere near it at a whole origin: disqualified when at some origin the error,
   averaged over layers, is below `ORIGIN_NOISE_FRACTION` (half) of the noise floor. An origin
   averages hundreds of steps' sampling noise, so only a forecast that knew the steps gets there;
   this catches the truth used at a few origins only;
3. it does not beat the hindsight floor (:mod:`bench.hindsight`: the better of the best constant
   and the best line per expert, chosen with the horizon in hand) by a wide margin on average:
   disqualified when the upper bound of ``mean error / mean hindsight floor`` is below
   `HINDSIGHT_MARGIN` (0.9, a 10% win over hindsight);
4. nor at many (origin, layer) cells: disqualified when the lower bound of the share of cells whose
   error is below `HINDSIGHT_MARGIN` x their hindsight floor exceeds `SHARE_LIMIT` (5%). This
   catches a forecast that uses the truth only sometimes, or on a drifting trace where the
   hindsight floor is far below every honest score (mean ratios cannot see it there).

A forecast constant over the horizon can never fail 3 or 4: at every cell its error is at least
the constant floor, which is at least the hindsight floor. Means are over origins, then layers.
Tests 1 and 2 assume token-choice routing (each token picks its experts independently, so a
step's loads vary at least as a multinomial does); under expert-choice or balanced assignment
loads need not vary at all, and only 3 and 4 apply.

The bounds come from a moving-block bootstrap over origins: neighbouring origins share most of
their horizon, so origins are resampled in blocks of ``ceil(horizon / stride)`` consecutive ones,
`RESAMPLES` times, with a fixed seed: the same scores always give the same verdict. The bounds
are one-sided at `LEVEL` (99%).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .evaluate import Evaluation
    from .hindsight import OriginFloors

NOISE_MARGIN = 1.0
ORIGIN_NOISE_FRACTION = 0.5
HINDSIGHT_MARGIN = 0.9
SHARE_LIMIT = 0.05
LEVEL = 0.99
RESAMPLES = 10_000
SEED = 20_240_501


@dataclass(frozen=True)
class Verdict:
    """The outcome of the look-ahead test for one run at one horizon."""

    disqualified: bool
    reasons: list[str]
    horizon: int  # iterations
    origins: int  # origins scored
    block_origins: int  # bootstrap block length, in origins
    level: float  # one-sided confidence of the bounds
    noise_ratio: float  # mean error / mean noise floor
    noise_ratio_upper: float
    origin_noise_ratio_min: float  # the smallest per-origin (layer-mean) error / noise floor
    origins_below_noise: int  # origins where that ratio is below ORIGIN_NOISE_FRACTION
    hindsight_ratio: float  # mean error / mean hindsight floor
    hindsight_ratio_upper: float
    beaten_share: float  # share of (origin, layer) cells with error < HINDSIGHT_MARGIN x hindsight floor
    beaten_share_lower: float
    settings: dict[str, float] = field(default_factory=dict)  # margins, limit, resamples, seed

    def to_dict(self) -> dict:
        """Plain JSON-able values (non-finite ratios become None)."""
        out = asdict(self)
        for k, v in out.items():
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
        return out


def _as_grid(name: str, values, shape: tuple[int, ...] | None) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [origins, layers], got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape} like errors")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return arr


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, np.nan))


def _percentile(values: np.ndarray, q: float) -> float:
    """The q-th percentile of the finite-or-infinite values, NaN (0/0 ratios) left out; NaN if none."""
    kept = values[~np.isnan(values)]
    return float(np.percentile(kept, q)) if len(kept) else math.nan


def block_bootstrap_means(per_origin: np.ndarray, block: int, resamples: int = RESAMPLES, seed: int = SEED,
                          circular: bool = False) -> np.ndarray:
    """Moving-block bootstrap of the mean over origins of each row of ``per_origin[K, O]``: [K, resamples].

    Each resample strings together ``ceil(O / block)`` blocks of `block` consecutive origins drawn
    with replacement, the last one cut so that it has O origins; block sums come from cumulative
    sums, so memory is ``K x resamples x O / block``. With `circular` (Politis and Romano's
    circular block bootstrap) a block may wrap from the last origin to the first, so that every
    origin is drawn equally often: the resampled means are centred on the sample mean even when the
    series trends (the moving blocks under-draw both ends), which matters when two series with
    different trends are compared through a ratio of their means.
    """
    count = per_origin.shape[1]
    block = max(1, min(block, count))
    blocks = -(-count // block)
    starts = np.random.default_rng(seed).integers(0, count if circular else count - block + 1,
                                                  size=(resamples, blocks))
    wrapped = np.concatenate([per_origin, per_origin[:, : block - 1]], axis=1) if circular else per_origin
    cum = np.concatenate([np.zeros((len(per_origin), 1)), np.cumsum(wrapped, axis=1)], axis=1)
    lengths = np.full(blocks, block)
    lengths[-1] = count - block * (blocks - 1)
    sums = cum[:, starts + lengths] - cum[:, starts]  # [K, resamples, blocks]
    return sums.sum(axis=2) / count


def verdict(errors, noise_floor, hindsight, origin_steps, horizon: int, stride: int,
            token_choice: bool = True) -> Verdict:
    """Whether a run's scores at one horizon are too good for a forecast made without the truth.

    `errors`, `noise_floor` and `hindsight` are ``[origins, layers]`` (``error_rate``, the noise
    floor and :attr:`bench.hindsight.OriginFloors.hindsight` at the origins the run did not fail
    at), `origin_steps` their iterations, increasing; `horizon` and `stride` are the task's.
    `token_choice` False (expert-choice routing: loads need not vary as a multinomial) drops the
    two noise-floor rules.
    """
    err = _as_grid("errors", errors, None)
    noise = _as_grid("noise_floor", noise_floor, err.shape)
    hind = _as_grid("hindsight", hindsight, err.shape)
    steps = np.asarray(origin_steps)
    if steps.shape != (len(err),) or (len(steps) > 1 and np.any(np.diff(steps) <= 0)):
        raise ValueError(f"origin_steps must be {len(err)} increasing iterations, one per row of errors")
    if len(err) == 0 or err.shape[1] == 0:
        raise ValueError("no scored origins: nothing to test")
    if horizon <= 0 or stride <= 0:
        raise ValueError(f"horizon and stride must be positive, got {horizon} and {stride}")

    per_origin = np.stack([err.mean(axis=1), noise.mean(axis=1), hind.mean(axis=1),
                           (err < HINDSIGHT_MARGIN * hind).mean(axis=1)])  # [4, O]
    block = min(-(-horizon // stride), len(err))
    boot = block_bootstrap_means(per_origin, block)  # [4, RESAMPLES]
    tail = 100 * (1 - LEVEL)
    point = per_origin.mean(axis=1)
    noise_ratio, hind_ratio = float(_ratio(point[0], point[1])), float(_ratio(point[0], point[2]))
    noise_upper = _percentile(_ratio(boot[0], boot[1]), 100 - tail)
    hind_upper = _percentile(_ratio(boot[0], boot[2]), 100 - tail)
    share, share_lower = float(point[3]), _percentile(boot[3], tail)
    origin_noise = _ratio(per_origin[0], per_origin[1])
    below_noise = origin_noise < ORIGIN_NOISE_FRACTION

    pct = f"{100 * LEVEL:g}%"
    reasons = []
    if token_choice and noise_upper < NOISE_MARGIN:
        reasons.append(f"mean error is {noise_ratio:.3f}x the multinomial noise floor (upper {pct} bound "
                       f"{noise_upper:.3f} < {NOISE_MARGIN:g}): below what the true distribution itself scores")
    if token_choice and below_noise.any():
        reasons.append(f"{int(below_noise.sum())} of {len(err)} origins (the first at iteration "
                       f"{int(steps[below_noise][0])}) score below {ORIGIN_NOISE_FRACTION:g}x their noise floor: "
                       f"only a forecast that knew the steps' sampling gets that close")
    if hind_upper < HINDSIGHT_MARGIN:
        reasons.append(f"mean error is {hind_ratio:.3f}x the hindsight floor (upper {pct} bound {hind_upper:.3f} "
                       f"< {HINDSIGHT_MARGIN:g}): better than the best constant or line chosen with the future known")
    if share_lower > SHARE_LIMIT:
        reasons.append(f"{100 * share:.1f}% of (origin, layer) cells score below {HINDSIGHT_MARGIN:g}x their "
                       f"hindsight floor (lower {pct} bound {100 * share_lower:.1f}% > {100 * SHARE_LIMIT:g}%)")
    return Verdict(
        disqualified=bool(reasons), reasons=reasons, horizon=int(horizon), origins=len(err), block_origins=block,
        level=LEVEL, noise_ratio=noise_ratio, noise_ratio_upper=noise_upper,
        origin_noise_ratio_min=_percentile(origin_noise, 0), origins_below_noise=int(below_noise.sum()),
        hindsight_ratio=hind_ratio, hindsight_ratio_upper=hind_upper,
        beaten_share=share, beaten_share_lower=share_lower,
        settings={"noise_margin": NOISE_MARGIN, "origin_noise_fraction": ORIGIN_NOISE_FRACTION,
                  "hindsight_margin": HINDSIGHT_MARGIN, "share_limit": SHARE_LIMIT, "resamples": RESAMPLES,
                  "seed": SEED},
    )


def run_scores(evaluation: Evaluation, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin steps [O], error_rate [O, L], noise_floor [O, L]) of one horizon of an evaluation.

    Failed origins are left out: the harness charges them a fallback's error, and the test is
    about the predictor's own forecasts.
    """
    layers = len(evaluation.layer_names)
    rows = sorted((r for r in evaluation.rows if r["horizon"] == horizon and not r.get("failed")),
                  key=lambda r: (r["origin_step"], r["layer"]))
    steps = np.array([r["origin_step"] for r in rows[::layers]], dtype=np.int64)
    errors = np.array([r["error_rate"] for r in rows], dtype=np.float64).reshape(len(steps), layers)
    noise = np.array([r["noise_floor"] for r in rows], dtype=np.float64).reshape(len(steps), layers)
    return steps, errors, noise


def judge(evaluation: Evaluation, floors: dict[int, OriginFloors], stride: int,
          token_choice: bool = True) -> dict[int, Verdict]:
    """The verdict at every horizon of an evaluation, given the trace's floors for its task.

    A run is disqualified when any of its horizons is. A horizon at which every origin failed
    has no verdict.
    """
    out = {}
    for horizon in evaluation.horizons:
        steps, errors, noise = run_scores(evaluation, horizon)
        if not len(steps):
            continue
        hindsight = floors[horizon].hindsight[floors[horizon].rows_for(steps)]
        out[horizon] = verdict(errors, noise, hindsight, steps, horizon, stride, token_choice)
    return out
