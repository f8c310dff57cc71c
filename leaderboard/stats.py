"""How sure the leaderboard is: bootstrap intervals, ties, and the headroom skill.

**Intervals.** In one cell (dataset, task, horizon) every model is scored at the same rolling
origins, and neighbouring origins share most of their horizon. The cell's origins are resampled
in circular blocks of ``ceil(horizon / stride)`` consecutive origins (:func:`bench.fairplay.
block_bootstrap_means`: every origin drawn equally often, so the resamples centre on the
estimate even though errors trend from the transient state to the stable one), `RESAMPLES` times
with a seed fixed by the cell, the *same* resamples for every model (so differences are paired).
A model's error in a resample is the mean over the resampled origins, then over layers.
Intervals are the central `LEVEL` (95%) percentiles.

**Ties.** Two models tie in a cell when the interval of their difference in ``error_rate`` (all)
contains 0; a tie counts half in the win rate, as in fev.

**Headroom skill.** The part of the baseline's closable gap a model closes. Per cell, with ``e``
the model's ``error_rate``, ``b`` the baseline's and ``o`` the hindsight floor (the best constant
or line chosen with the future known, docs/protocol.md), the remaining share of the gap is
``r = (e - o) / (b - o)``; it is clipped to [`CLIP_LOW`, `CLIP_HIGH`] (fev's range for relative
errors) and aggregated over cells as fev aggregates relative errors: ``headroom skill = 1 -
geometric mean of r``. 0 is the baseline, 1 would be the hindsight oracle, and a cell with a tiny
gap cannot dominate (its ratio is clipped). The window skill is the same on ``window_error``,
whose hindsight floor is 0 (the horizon's true mean), i.e. ``1 - gmean(clip(e / b))``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Hashable, Mapping

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
CLIP_LOW, CLIP_HIGH = 1e-3, 5.0


def interval(values: np.ndarray) -> list[float] | None:
    """The central LEVEL interval of bootstrap values, or None without any."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = 100 * (1 - LEVEL) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def clipped_log_ratio(num, den):
    """log of num / den clipped to [CLIP_LOW, CLIP_HIGH] (NaN where den <= 0); works on arrays."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.asarray(den) > 0, np.asarray(num) / np.asarray(den), np.nan)
    return np.log(np.clip(ratio, CLIP_LOW, CLIP_HIGH))


def skill_of(logs: list) -> float | None:
    """1 - geometric mean of the ratios whose logs are given (NaN logs left out)."""
    xs = [x for x in logs if x == x]
    return 1 - math.exp(sum(xs) / len(xs)) if xs else None


def cell_seed(key: tuple) -> int:
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:4], "little")


@dataclass
class CellSample:
    """One cell's bootstrap: per model the mean error per resample (and per layer), the floor's."""

    error: dict[Hashable, np.ndarray]  # model -> [RESAMPLES] mean error_rate (origins, then layers)
    window: dict[Hashable, np.ndarray]  # model -> [RESAMPLES] mean window_error
    layers: dict[Hashable, np.ndarray]  # model -> [L, RESAMPLES] per-layer mean error_rate
    hindsight: np.ndarray | None  # [RESAMPLES] mean hindsight floor, None where the rows lack it
    #: False where one resampled block spans every origin: each resample is the whole sample, so the cell's own
    #: intervals would have width 0 (it still counts, at its value, in the aggregates over cells).
    spread: bool = True

    def difference(self, a: Hashable, b: Hashable) -> np.ndarray:
        return self.error[a] - self.error[b]

    def cell_interval(self, values: np.ndarray) -> tuple[float, float] | None:
        """The interval of a statistic of this cell's resamples; None where the cell has no spread."""
        return interval(values) if self.spread else None

    def tie(self, a: Hashable, b: Hashable) -> bool:
        ci = interval(self.difference(a, b))
        return ci is not None and ci[0] <= 0 <= ci[1]


def block_length(horizon: int, stride: int) -> int:
    """Origins per resampled block: as many as one horizon spans, so overlapping horizons stay together."""
    return max(1, math.ceil(horizon / stride))


def resample_means(rows: np.ndarray, horizon: int, stride: int, key: tuple) -> np.ndarray:
    """``[k, RESAMPLES]`` means of per-origin `rows` (``[k, origins]``) over one cell's resamples of its origins.

    Circular blocks of ``ceil(horizon / stride)`` origins, seeded by the cell's `key`: every series of a cell with
    as many origins is resampled alike, so differences between them are paired.
    """
    from bench.fairplay import block_bootstrap_means

    return block_bootstrap_means(np.asarray(rows, dtype=np.float64), block_length(horizon, stride), RESAMPLES,
                                 cell_seed(key), circular=True)


def _grid(frame, horizon: int, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(origin steps [O], values [O, L]) of one column at one horizon, or None where the rows lack it."""
    if frame is None or frame.empty or column not in frame.columns:
        return None
    df = frame[frame["horizon"] == horizon]
    if df.empty:
        return None
    table = df.pivot_table(index="origin_step", columns="layer", values=column, aggfunc="first").sort_index()
    if table.isna().any().any():
        return None
    return table.index.to_numpy(), table.to_numpy(dtype=np.float64)


def sample_cell(frames: Mapping[Hashable, object], horizon: int, stride: int, key: tuple) -> CellSample | None:
    """Paired block bootstrap of every model whose per-origin rows cover the cell's common origins.

    `frames` maps a model to its per-origin rows (pandas, as ``origins.parquet``); models whose rows
    are missing or cover other origins are left out (they get no interval).
    """
    grids = {m: (_grid(f, horizon, "error_rate"), _grid(f, horizon, "window_error")) for m, f in frames.items()}
    grids = {m: g for m, g in grids.items() if g[0] is not None and g[1] is not None}
    if not grids:
        return None
    steps = {tuple(g[0][0]) for g in grids.values()}
    common = max(steps, key=lambda s: sum(tuple(g[0][0]) == s for g in grids.values()))
    grids = {m: g for m, g in grids.items() if tuple(g[0][0]) == common and g[0][1].shape == g[1][1].shape}
    models = list(grids)
    layers = next(iter(grids.values()))[0][1].shape[1]
    grids = {m: g for m, g in grids.items() if g[0][1].shape[1] == layers}
    models = list(grids)
    hind = next((_grid(frames[m], horizon, "hindsight_floor") for m in models), None)
    rows = [grids[m][0][1].mean(axis=1) for m in models] + [grids[m][1][1].mean(axis=1) for m in models]
    rows += [grids[m][0][1][:, layer] for m in models for layer in range(layers)]
    if hind is not None and tuple(hind[0]) == common:
        rows.append(hind[1].mean(axis=1))
    boot = resample_means(np.stack(rows), horizon, stride, key)
    M = len(models)
    return CellSample(
        error={m: boot[i] for i, m in enumerate(models)},
        window={m: boot[M + i] for i, m in enumerate(models)},
        layers={m: boot[2 * M + i * layers: 2 * M + (i + 1) * layers] for i, m in enumerate(models)},
        hindsight=boot[-1] if len(rows) > M * (2 + layers) else None,
        spread=len(common) > block_length(horizon, stride),
    )
