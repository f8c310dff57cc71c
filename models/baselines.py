"""Baselines: the seed paper's sliding-window average and what production systems use.

All forecasts here are constant over the horizon (an estimate of the current distribution),
computed over layers and experts at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from . import kernels
from .base import Predictor


class SlidingWindowAverage(Predictor):
    """SW_Avg of the seed paper: mean proportion over the last `window` iterations."""

    name = "sw_avg"
    defaults = {"window": 100}
    replayable = True
    layerwise = True
    search_space = {"window": ("log", 10, 2000)}

    def predict(self, horizon):
        h = self.history
        return self.repeat(h.proportions[h.since(self.params["window"])].mean(axis=0), horizon)

    def predict_all(self, counts, proportions, steps, origins, origin_steps):
        return kernels.window_means(proportions, kernels.window_starts(steps, origins, self.params["window"]), origins)


class LastValue(Predictor):
    """The last observed proportions."""

    name = "last"
    replayable = True
    layerwise = True

    def predict(self, horizon):
        return self.repeat(self.history.proportions[-1], horizon)

    def predict_all(self, counts, proportions, steps, origins, origin_steps):
        return proportions[np.asarray(origins) - 1].copy()


class ExponentialMovingAverage(Predictor):
    """EMA of the proportions with a decay per iteration (default 0.95).

    Records spaced by d iterations decay by ``decay**d``, so the estimate means the same on
    traces recorded every iteration and every 10th. Not TensorRT-LLM's balancer: that one decays
    token counts by 0.9 per pass and clears them at each placement update (``trtllm``,
    models/engines.py).
    """

    name = "ema"
    defaults = {"decay": 0.95}
    replayable = True  # the state is updated record by record, however the records arrive
    layerwise = True
    search_space = {"decay": ("float", 0.5, 0.9999)}

    def start(self, layers, experts, training=()):
        super().start(layers, experts, training)
        self._state = None
        self._last_step = None

    def update(self, proportions, steps):
        d = self.params["decay"]
        for p, s in zip(proportions, steps):
            if self._state is None:
                self._state = p.copy()
            else:
                a = d ** float(s - self._last_step)
                self._state *= a
                self._state += (1.0 - a) * p
            self._last_step = s

    def predict(self, horizon):
        return self.repeat(self._state / self._state.sum(axis=-1, keepdims=True), horizon)

    def predict_all(self, counts, proportions, steps, origins, origin_steps):
        state = kernels.ema_states(proportions, steps, origins, self.params["decay"])
        return state / state.sum(axis=-1, keepdims=True)


class StaticShare(Predictor):
    """MoE-GPS's distribution-only predictor: the mean share over all history seen.

    With `source="training"` and training traces, the mean share over the training traces
    instead (fixed, never updated: a profile measured on earlier runs).
    """

    name = "static"
    defaults = {"source": "history"}
    layerwise = True

    def start(self, layers, experts, training=()):
        self._sum = np.zeros((layers, experts))
        self._fixed = None
        super().start(layers, experts, training)

    def fit(self, training: Sequence):
        if self.params["source"] == "training":
            self._fixed = np.mean([t.proportions.mean(axis=0) for t in training], axis=0)

    def update(self, proportions, steps):
        self._sum += proportions.sum(axis=0)

    def predict(self, horizon):
        if self._fixed is not None:
            return self.repeat(self._fixed, horizon)
        return self.repeat(self._sum / len(self.history), horizon)

    def predict_all(self, counts, proportions, steps, origins, origin_steps):
        """The harness's origin-by-origin path observes the records between consecutive origins in one call each:
        the running sum adds the same blocks."""
        if self._fixed is not None:
            return np.broadcast_to(self._fixed, (len(origins),) + self._fixed.shape).copy()
        origins = np.asarray(origins, dtype=np.int64)
        return kernels.block_sums(proportions, origins) / origins[:, None, None]


class SlidingWindowSum(Predictor):
    """Token counts summed over the last `window` iterations, normalised (the EPLB engines' statistic).

    Unlike SW_Avg it weights records by their token counts. With `rebalance_every` > 0 the
    estimate is refreshed only every that many iterations counted from the first origin it is
    asked at; 0 refreshes at every origin. The engines' own schedules, as they ship, are
    `sglang` and `vllm` (models/engines.py).
    """

    name = "sw_sum"
    defaults = {"window": 1000, "rebalance_every": 0}
    layerwise = True
    search_space = {"window": ("log", 10, 5000)}

    @property
    def replayable(self):  # with rebalancing, the estimate depends on when it was last refreshed
        return self.params["rebalance_every"] <= 0

    def start(self, layers, experts, training=()):
        super().start(layers, experts, training)
        self._estimate = None
        self._refreshed_at = None

    def predict(self, horizon):
        h, every = self.history, self.params["rebalance_every"]
        now = int(h.steps[-1])
        if self._estimate is None or every <= 0 or now - self._refreshed_at >= every:
            total = h.counts[h.since(self.params["window"])].sum(axis=0).astype(np.float64)
            self._estimate = total / total.sum(axis=-1, keepdims=True)
            self._refreshed_at = now
        return self.repeat(self._estimate, horizon)

    def predict_all(self, counts, proportions, steps, origins, origin_steps):
        """From one cumulative sum of the counts (exact in integers); with rebalancing, each origin takes the
        estimate of the last origin at which it was refreshed, as the calls of :meth:`predict` in order would."""
        origins = np.asarray(origins, dtype=np.int64)
        every, csum = self.params["rebalance_every"], kernels.count_cumsum(counts)
        source, refreshed_at = np.empty(len(origins), dtype=np.int64), None
        for i, o in enumerate(origins.tolist()):
            now = int(steps[o - 1])
            if refreshed_at is None or every <= 0 or now - refreshed_at >= every:
                at, refreshed_at = o, now
            source[i] = at
        starts = kernels.window_starts(steps, source, self.params["window"])
        total = (csum[source] - csum[starts]).astype(np.float64)
        return total / total.sum(axis=-1, keepdims=True)
