"""The Python API: a run, its numbers, its per-origin rows and its forecasts in a few lines."""

from __future__ import annotations

import numpy as np
import pytest

from models.baselines import ExponentialMovingAverage


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_five_lines_on_smartmoe(smartmoe, home):
    from bench import run

    result = run("sw_avg", "smartmoe-ae", horizons=[1000], params={"window": 100})
    frame = result.to_frame(per_origin=True)
    curve = frame.groupby("origin_step").error_rate.mean()
    assert len(curve) == result.horizons[1000].origins == 40
    # the summary is the mean over origins, then layers, of the same rows
    assert frame.groupby("layer").error_rate.mean().mean() == pytest.approx(result.value(1000, "error_rate"))
    summary = result.to_frame()
    assert set(summary.columns) >= {"horizon", "metric", "state", "value"}
    assert summary.query("metric == 'error_rate' and state == 'stable'").value.item() == result.value(
        1000, "error_rate", "stable")
    forecasts = result.forecasts(1000)
    assert forecasts.predicted.shape == forecasts.actual.shape == (40, smartmoe.layers, smartmoe.experts)
    np.testing.assert_allclose(forecasts.predicted.sum(axis=2), 1.0)


def test_a_class_from_a_notebook_and_reading_back(home):
    from bench import load_results, run

    class Smooth(ExponentialMovingAverage):
        name = "smooth_notebook"

    first = run(Smooth(decay=0.9), "tiny-cpu-s1", horizons=[1000], track=False)
    assert first.model == "smooth_notebook" and first.model_source == "python" and not first.cached
    assert run(Smooth, "tiny-cpu-s1", horizons=[1000], params={"decay": 0.9}, track=False).cached
    assert [r.run_key for r in load_results("tiny-cpu-s1", model="smooth_notebook")] == [first.run_key]
    assert load_results("tiny-cpu-s1@2") == []


def test_a_notebook_class_cannot_take_a_builtin_name(home):
    from bench import run

    class Impostor(ExponentialMovingAverage):
        name = "sw_avg"

    with pytest.raises(LookupError, match="belongs to a built-in"):
        run(Impostor, "tiny-cpu-s1", horizons=[1000], track=False)
