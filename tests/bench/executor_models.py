"""Predictors and an Optuna objective for tests/bench/test_executors.py (loaded by file path in workers)."""

from __future__ import annotations

import time

from models.baselines import SlidingWindowAverage


class SlowAverage(SlidingWindowAverage):
    """sw_avg that takes `delay` seconds per forecast, so units last long enough to lose a worker."""

    name = "slow_avg"
    defaults = {"window": 20, "delay": 0.0}

    def predict(self, horizon):
        time.sleep(self.params["delay"])
        return super().predict(horizon)


class Broken(SlidingWindowAverage):
    """A run whose unit the test makes fail (a failure inside the predictor's own calls is not a unit failure:
    those origins fail, are charged, and the run completes)."""

    name = "broken"


def quadratic(trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    return (x - 2) ** 2
