"""ARIMA: valid forecasts, clipping counted, engines agree, parallel == serial, order selection."""

import numpy as np
import pytest

from bench.evaluate import check_forecast, evaluate
from bench.task import Task
from datasets_registry.trace import Trace
from models import ParamError, predictor_class
from models.arima import Arima, fit_forecast, select_order


@pytest.fixture(scope="module")
def small(smartmoe):
    """150 records (1,500 iterations) of 3 layers x 32 experts of the real SmartMoE-AE trace."""
    return Trace.from_arrays(smartmoe.counts[:150, :3], smartmoe.steps[:150])


def test_registry_maps_arima():
    assert predictor_class("arima") is Arima


def test_forecasts_are_valid_and_every_row_is_accounted_for(small, tmp_path):
    pred = Arima(n_jobs=1, window=60)
    ev = evaluate(small, pred, Task(dataset="x", horizons=(300,), stride=400))
    assert not ev.failures and len(ev.frame()) == 3 * 3  # 3 origins x 3 layers
    # each forecast row went through the clip/renormalise step and was counted there
    assert pred.stats["rows"] == 3 * 30 * 3  # origins x records x layers
    assert pred.stats["estimations"] == 3
    assert pred.stats["series_short"] == 96  # the first origin has 10 records < min_records: window mean
    assert pred.stats["series_fitted"] + pred.stats["series_constant"] == 2 * 96
    out = pred.predict(7)
    check_forecast(out, 7, 3, 32)
    extras = pred.mlflow_extras(tmp_path)  # what the runner logs to MLflow
    assert extras["metrics"]["arima.rows"] == pred.stats["rows"]
    assert extras["metrics"]["arima.rows_clipped"] == pred.stats["rows_clipped"]
    assert (tmp_path / "arima_stats.json").exists()


def test_clipping_and_renormalising_only_where_needed():
    pred = Arima(n_jobs=1)
    F = np.array([[[0.5, 0.5, 0.0], [0.6, -0.1, 0.3], [0.2, 0.2, 0.2]]])  # [H=1, L=3, E=3]
    out = pred._finish(F)
    np.testing.assert_array_equal(out[0, 0], [0.5, 0.5, 0.0])  # valid: left alone
    np.testing.assert_allclose(out[0, 1], [2 / 3, 0.0, 1 / 3])  # clipped, then renormalised
    np.testing.assert_allclose(out[0, 2], [1 / 3] * 3)  # renormalised only
    assert dict(pred.stats) == {"rows": 3, "rows_clipped": 1, "values_clipped": 1, "rows_renormalised": 2}


def test_statsforecast_agrees_with_statsmodels_on_real_series(smartmoe):
    """Tolerance, in units of the uniform share 1/E (series are fitted as E*p, level ~1):
    median over series of the mean |difference| of 100-record forecasts < 1e-3, every series
    < 5e-2, and the two engines' mean absolute error against the actual next 100 records
    within 5% of each other. Both maximise the same likelihood; they differ where it is flat."""
    E = smartmoe.experts if hasattr(smartmoe, "experts") else smartmoe.shape[2]
    p = smartmoe.proportions * E
    rng = np.random.default_rng(0)
    cols = rng.choice(p.shape[1] * E, size=12, replace=False)
    Y = p[200:300].reshape(100, -1).T[cols]
    truth = p[300:400].reshape(100, -1).T[cols]
    sf = np.array([fit_forecast(y, (0, 1, 1), "statsforecast", 100, 20)[0] for y in Y])
    sm = np.array([fit_forecast(y, (0, 1, 1), "statsmodels", 100, 20)[0] for y in Y])
    diff = np.abs(sf - sm).mean(axis=1)
    assert np.median(diff) < 1e-3 and diff.max() < 5e-2, diff
    err_sf, err_sm = np.abs(sf - truth).mean(), np.abs(sm - truth).mean()
    assert abs(err_sf - err_sm) < 0.05 * err_sm, (err_sf, err_sm)


def test_process_pool_gives_the_serial_result(small):
    task = Task(dataset="x", horizons=(200,), stride=500)
    a, b = Arima(n_jobs=1, window=40), Arima(n_jobs=2, window=40)
    fa, fb = evaluate(small, a, task).frame(), evaluate(small, b, task).frame()
    np.testing.assert_allclose(fa["error_rate"], fb["error_rate"], rtol=0, atol=1e-12)
    assert b._pool is not None and a._pool is None  # the parallel one really used a process pool


def test_refit_once_estimates_once_then_reapplies(small):
    pred = Arima(n_jobs=1, window=40)
    ev = evaluate(small, pred, Task(dataset="x", horizons=(200,), stride=300, min_history=300, refit="once"))
    assert not ev.failures
    assert pred.stats["estimations"] == 1 and pred.stats["series_filtered"] > 0


def test_order_selection_finds_the_differencing():
    rng = np.random.default_rng(3)
    e = rng.normal(size=(3, 301))
    walk = np.cumsum(e[:, 1:] + 0.5 * e[:, :-1], axis=1)  # ARIMA(0,1,1)
    order, rep = select_order(walk)
    assert order[1] == 1 and rep["d"] == {1: 3}
    order, rep = select_order(rng.normal(size=(3, 300)))  # white noise
    assert order[1] == 0


def test_bad_params_are_refused():
    with pytest.raises(ParamError, match="order"):
        Arima(order="1,x,1")
    with pytest.raises(ParamError, match="engine"):
        Arima(engine="R")
    assert Arima(order="auto").params["order"] == "auto"
