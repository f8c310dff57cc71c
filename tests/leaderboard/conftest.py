"""Runs shared by the leaderboard tests: sw_avg, ema and last on smartmoe-ae and on a small second trace."""

from __future__ import annotations

import pytest

MODELS = ("sw_avg", "ema", "last")
SECOND = "lb-switch"  # a SYNTHETIC trace (datasets_registry.synthetic), small: 4 layers x 16 experts, 400 records


def add_second_dataset(name: str = SECOND) -> str:
    from datasets_registry import registry
    from datasets_registry.synthetic import switching_trace

    if not any(e.id == name for e in registry.entries()):
        registry.add(switching_trace(records=400, layers=4, experts=16, switch=120, step_every=10, seed=3), name)
    return name


@pytest.fixture(scope="session")
def runs_2x2(smartmoe):
    """{(model, dataset): result} for MODELS on smartmoe-ae and the second trace, logged to the session's store."""
    from bench import runner

    second = add_second_dataset()
    return {(m, d): runner.run(m, d) for d in ("smartmoe-ae", second) for m in MODELS}
