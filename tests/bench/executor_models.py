"""Predictors and an Optuna objective for tests/bench/test_executors.py (loaded by file path in workers)."""

from __future__ import annotations

import time

from models.baselines import SlidingWindowAverage
from models.base import Predictor


class SlowAverage(SlidingWindowAverage):
    """sw_avg that takes `delay` seconds per forecast, so units last long enough to lose a worker."""

    name = "slow_avg"
    defaults = {"window": 20, "delay": 0.0}

    def predict(self, horizon):
        time.sleep(self.params["delay"])
        return super().predict(horizon)


class Broken(Predictor):
    """Fails before the first origin: the whole unit fails, every time."""

    name = "broken"

    def start(self, layers, experts, training=()):
        raise RuntimeError("broken on purpose")


def quadratic(trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    return (x - 2) ** 2
