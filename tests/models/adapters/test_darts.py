"""darts models through the adapter: NaiveMean, NaiveDrift, ExponentialSmoothing, and TiDE trained globally."""

import numpy as np
import pytest

from bench.conformance import check_predictor
from models import predictor_class
from models.baselines import SlidingWindowAverage


def test_naive_mean_is_sw_avg_and_naive_drift_is_the_line_through_the_window_ends(small_trace, feed):
    c, s, p = small_trace.counts, small_trace.steps, small_trace.proportions
    mean = feed(predictor_class("darts:NaiveMean")(window=400), c, s, 90).predict(20)
    np.testing.assert_allclose(mean, feed(SlidingWindowAverage(window=400), c, s, 90).predict(20), atol=1e-12)
    pred = feed(predictor_class("darts:NaiveDrift")(window=400), c, s, 90)
    drift = pred.predict(20)
    w = p[50:90]  # the last 400 iterations: 40 records
    line = w[-1] + np.arange(1, 21)[:, None, None] * (w[-1] - w[0]) / (len(w) - 1)
    raw_ok = (line >= 0).all(axis=2)
    expected = line / line.sum(axis=2, keepdims=True)
    np.testing.assert_allclose(drift[raw_ok], expected[raw_ok], atol=1e-9)
    assert pred.stats["library_fits"] == 1 and pred.stats["rows_clipped"] == int((~raw_ok).sum())


def test_exponential_smoothing_takes_enum_params_as_strings(small_trace, feed, evaluate_on):
    cls = predictor_class("darts:ExponentialSmoothing")
    assert cls.defaults["trend"] is None and cls.defaults["seasonal"] is None  # simple exponential smoothing
    from darts.utils.utils import ModelMode

    holt = cls(trend="additive", damped="true")
    assert holt.new_estimator().trend is ModelMode.ADDITIVE and holt.new_estimator().damped is True
    assert cls().new_estimator().trend is None and cls(trend="NONE").new_estimator().trend is ModelMode.NONE
    phat = feed(holt, small_trace.counts, small_trace.steps, 60).predict(10)
    assert phat.shape == (10, 2, 6) and np.allclose(phat.sum(axis=2), 1)
    pred = cls()
    frame = evaluate_on(pred, stride=300).frame()
    assert np.isfinite(frame["error_rate"]).all() and pred.stats["library_fits"] == frame["origin"].nunique()


def test_tide_trains_one_global_model_and_reuses_it_between_fits(small_trace, evaluate_on):
    cls = predictor_class("darts:TiDEModel")
    assert (
        cls.global_model
        and cls.defaults["fit_every"] == 1000
        and cls.defaults["n_epochs"] == 5
        and cls.defaults["center"] == "last"
    )
    runs = []
    for _ in range(2):
        pred = cls(n_epochs=2, input_chunk_length=8, output_chunk_length=4, fit_every=600)
        seen = {}
        predict = pred.predict
        pred.predict = lambda h, pred=pred, predict=predict, seen=seen: seen.setdefault(len(pred.history), predict(h))
        evaluate_on(pred)
        runs.append(seen)
    origins = sorted(runs[0])
    assert pred.stats["library_fits"] < len(origins) and pred.stats["library_fits"] >= 2
    for o in origins:  # same seed, same data: the same forecasts
        np.testing.assert_allclose(runs[0][o], runs[1][o], atol=1e-9)
    assert not np.allclose(runs[0][origins[1]][0], runs[0][origins[2]][0])  # forecasts from the current window


def test_unknown_model_and_required_params():
    with pytest.raises(LookupError, match="no forecasting model"):
        predictor_class("darts:NoSuchModel")
    tcn = predictor_class("darts:TCNModel")
    assert {"input_chunk_length", "output_chunk_length"} <= tcn.required


def test_a_darts_adapter_passes_the_conformance_suite(small_trace):
    report = check_predictor("darts:NaiveDrift", dataset=small_trace, records=100, layers=2)
    assert report.ok, report.text()


def test_a_run_is_logged_to_mlflow_with_the_adapter_counts(small_trace):
    import mlflow

    from bench import runner, tracking
    from datasets_registry import registry

    registry.add(small_trace, "synthetic-adapters")
    result = runner.run("darts:NaiveDrift", "synthetic-adapters", task=None, params={"window": 300})
    assert result.failures == 0 and result.model == "darts:NaiveDrift"
    tracking.connect(None)
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.data.params["model.window"] == "300" and run.data.tags["model"] == "darts:NaiveDrift"
    assert run.data.metrics["adapter.forecasts"] > 0 and "adapter.rows_clipped_frac" in run.data.metrics
    assert "h1000/error_rate/all" in run.data.metrics


def test_sampled_quantiles_of_a_probabilistic_model_pass_through(small_trace, feed, evaluate_on):
    """ExponentialSmoothing samples paths: the adapter gives their quantiles at the benchmark's levels;
    NaiveDrift (deterministic in darts) stays point-only."""
    from bench.evaluate import check_quantiles
    from models.base import QUANTILE_LEVELS

    c, s = small_trace.counts, small_trace.steps
    assert not predictor_class("darts:NaiveDrift")().probabilistic
    es = feed(predictor_class("darts:ExponentialSmoothing")(), c, s, 80)
    assert es.probabilistic
    phat = es.predict(20)
    q = check_quantiles(es.predict_quantiles(20), 20, 2, 6)
    assert (q[..., -1] > q[..., 0]).all()  # sample paths spread
    assert np.abs(q[..., QUANTILE_LEVELS.index(0.5)] - phat).max() < 0.05
    ev = evaluate_on(predictor_class("darts:ExponentialSmoothing")(), stride=300)
    assert np.isfinite(ev.frame()["coverage_80"]).all()
