"""sktime forecasters through the adapter: naive (last, mean, drift), Theta, AutoETS."""

import numpy as np
import pytest

from models import ParamError, predictor_class
from models.baselines import LastValue, SlidingWindowAverage


def test_naive_last_and_mean_match_the_numpy_baselines(small_trace, feed):
    c, s = small_trace.counts, small_trace.steps
    naive = predictor_class("sktime:NaiveForecaster")
    last = feed(naive(strategy="last"), c, s, 80).predict(30)
    np.testing.assert_allclose(last, feed(LastValue(), c, s, 80).predict(30), atol=1e-12)
    mean = feed(naive(strategy="mean", window=300), c, s, 80).predict(30)
    np.testing.assert_allclose(mean, feed(SlidingWindowAverage(window=300), c, s, 80).predict(30), atol=1e-12)


def test_drift_is_clipped_renormalised_and_counted(feed):
    steps = np.arange(20) * 10 + 1
    counts = np.tile([400, 300, 200, 100], (20, 1, 1))
    counts[:, 0, 0] = np.linspace(400, 20, 20).astype(int)  # expert 0 falls fast: a drift line goes below 0
    pred = feed(predictor_class("sktime:NaiveForecaster")(strategy="drift"), counts, steps)
    phat = pred.predict(50)
    assert phat.shape == (50, 1, 4) and (phat >= 0).all()
    np.testing.assert_allclose(phat.sum(axis=2), 1.0)
    assert (
        phat[-1, 0, 0] == 0.0
        and pred.stats["rows_clipped"] > 0
        and pred.stats["rows_renormalised"] >= pred.stats["rows_clipped"]
    )
    extras = pred.mlflow_extras(None)["metrics"]
    assert extras["adapter.rows_clipped_frac"] == pred.stats["rows_clipped"] / 50


@pytest.mark.parametrize(
    "spec,params",
    [("sktime:ThetaForecaster", {}), ("sktime:AutoETS", {}), ("sktime:NaiveForecaster", {"strategy": "drift"})],
)
def test_runs_through_the_harness(spec, params, evaluate_on):
    pred = predictor_class(spec)(**params)
    ev = evaluate_on(pred, stride=300)
    frame = ev.frame()
    assert len(frame) and np.isfinite(frame["error_rate"]).all()
    assert pred.stats["library_fits"] == frame["origin"].nunique()  # refit "every": one fit per origin
    assert pred.stats["fallback_forecasts"] == 0


def test_params_go_to_the_library_constructor():
    cls = predictor_class("sktime:ThetaForecaster")
    assert cls is predictor_class("sktime:ThetaForecaster") and cls.name == "sktime:ThetaForecaster"
    assert {"window", "min_records", "fit_every", "deseasonalize", "sp"} <= set(cls.defaults)
    pred = cls(sp=2, deseasonalize="true")
    assert pred.library_kwargs() == {"sp": 2}  # deseasonalize=True is sktime's default; the adapter's is False
    assert pred.new_estimator().get_params()["sp"] == 2
    with pytest.raises(ParamError, match="unknown parameter"):
        cls(alpha=0.5)
    with pytest.raises(LookupError, match="no forecaster"):
        predictor_class("sktime:NoSuchForecaster")


def test_between_refits_the_fitted_path_continues(small_trace, small_task, evaluate_on):
    pred = predictor_class("sktime:NaiveForecaster")(strategy="last")
    seen = {}
    predict = pred.predict
    pred.predict = lambda h: seen.setdefault(len(pred.history), predict(h))
    evaluate_on(pred, refit="every:2")
    origins = sorted(seen)
    p = small_trace.proportions
    for i, o in enumerate(origins):  # the fit at origin i-(i%2) forecasts its last record for ever after
        fitted_at = origins[i - i % 2]
        np.testing.assert_allclose(seen[o][0], p[fitted_at - 1], atol=1e-12)
    assert pred.stats["library_fits"] == (len(origins) + 1) // 2


def test_too_little_history_falls_back_to_the_window_mean(small_trace, feed):
    pred = feed(predictor_class("sktime:ThetaForecaster")(min_records=10), small_trace.counts, small_trace.steps, 4)
    np.testing.assert_allclose(pred.predict(3)[0], small_trace.proportions[:4].mean(axis=0))
    assert pred.stats["fallback_forecasts"] == 1 and pred.stats["library_fits"] == 0


def test_prediction_intervals_pass_through_as_quantiles(small_trace, feed, evaluate_on):
    """ThetaForecaster has prediction intervals: the adapter gives sktime's own predict_quantiles, at the
    benchmark's levels, from the model of the point forecast; a forecaster without them stays point-only."""
    from bench.evaluate import check_quantiles
    from models.base import QUANTILE_LEVELS

    c, s = small_trace.counts, small_trace.steps
    theta = feed(predictor_class("sktime:ThetaForecaster")(), c, s, 80)
    assert theta.probabilistic and not predictor_class("sktime:Croston")().probabilistic
    phat = theta.predict(30)
    q = check_quantiles(theta.predict_quantiles(30), 30, 2, 6)
    # the library's own quantiles of series 0 (layer 0, expert 0) at the same fit
    f = theta._state[0]
    direct = f.predict_quantiles(fh=np.arange(1, 31), alpha=list(QUANTILE_LEVELS)).to_numpy()[:, : len(QUANTILE_LEVELS)]
    np.testing.assert_allclose(q[:, 0, 0], np.clip(np.sort(direct, axis=1), 0, 1), atol=1e-12)
    assert (q[..., -1] >= q[..., 0]).all() and (q[..., -1] > q[..., 0]).any()
    assert np.abs(q[..., QUANTILE_LEVELS.index(0.5)] - phat).max() < 0.05  # the median is the point forecast's
    ev = evaluate_on(theta, stride=300)
    assert {"quantile_loss", "coverage_90"} <= set(ev.frame().columns)
