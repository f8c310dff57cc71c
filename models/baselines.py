"""Baselines: the seed paper's sliding-window average and what production systems use.

All forecasts here are constant over the horizon (an estimate of the current distribution),
computed over layers and experts at once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Predictor


class SlidingWindowAverage(Predictor):
    """SW_Avg of the seed paper: mean proportion over the last `window` iterations."""

    name = "sw_avg"
    defaults = {"window": 100}
    replayable = True
    search_space = {"window": ("log", 10, 2000)}

    def predict(self, horizon):
        h = self.history
        return self.repeat(h.proportions[h.since(self.params["window"])].mean(axis=0), horizon)


class LastValue(Predictor):
    """The last observed proportions."""

    name = "last"
    replayable = True

    def predict(self, horizon):
        return self.repeat(self.history.proportions[-1], horizon)


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


class StaticShare(Predictor):
    """MoE-GPS's distribution-only predictor: the mean share over all history seen.

    With `source="training"` and training traces, the mean share over the training traces
    instead (fixed, never updated: a profile measured on earlier runs).
    """

    name = "static"
    defaults = {"source": "history"}

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


class SlidingWindowSum(Predictor):
    """Token counts summed over the last `window` iterations, normalised (the EPLB engines' statistic).

    Unlike SW_Avg it weights records by their token counts. With `rebalance_every` > 0 the
    estimate is refreshed only every that many iterations counted from the first origin it is
    asked at; 0 refreshes at every origin. The engines' own schedules, as they ship, are
    `sglang` and `vllm` (models/engines.py).
    """

    name = "sw_sum"
    defaults = {"window": 1000, "rebalance_every": 0}
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
