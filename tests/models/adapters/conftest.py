"""A small SYNTHETIC trace and a way to run predictors on it for the adapter tests."""

import numpy as np
import pytest

from bench.evaluate import evaluate
from bench.task import Task
from datasets_registry.synthetic import switching_trace


@pytest.fixture(scope="session")
def small_trace():
    """120 records every 10th iteration, 2 layers x 6 experts: 12 series."""
    return switching_trace(records=120, layers=2, experts=6, switch=60, step_every=10, seed=4)


@pytest.fixture(scope="session")
def small_task(small_trace):
    return Task(small_trace.id, horizons=(200, 400), stride=200, min_history=200)


@pytest.fixture
def feed():
    """feed(predictor, counts, steps, upto) -> the predictor after start, observe(upto records) and refit."""

    def run(pred, counts, steps, upto=None, refit=True):
        upto = len(steps) if upto is None else upto
        pred.start(counts.shape[1], counts.shape[2])
        pred.observe(np.array(counts[:upto]), np.array(steps[:upto]))
        if refit:
            pred.refit()
        return pred

    return run


@pytest.fixture
def evaluate_on(small_trace, small_task):
    def run(pred, **task_changes):
        import dataclasses

        ev = evaluate(small_trace, pred, dataclasses.replace(small_task, **task_changes))
        assert not ev.failures, ev.failures[:2]
        return ev

    return run
