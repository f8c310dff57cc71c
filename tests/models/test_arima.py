"""ARIMA: valid forecasts, clipping counted, binning in iterations, engines agree, parallel == serial, orders."""

import numpy as np
import pytest

from bench.evaluate import check_forecast, evaluate
from bench.task import Task
from datasets_registry.trace import Trace
from models import ParamError, predictor_class
from models.arima import Arima, binned_window, fit_forecast, fitted_series, select_order


@pytest.fixture(scope="module")
def small(smartmoe):
    """150 records (1,500 iterations) of 3 layers x 32 experts of the real SmartMoE-AE trace."""
    return Trace.from_arrays(smartmoe.counts[:150, :3], smartmoe.steps[:150])


def test_registry_maps_arima():
    assert predictor_class("arima") is Arima


def test_forecasts_are_valid_and_every_row_is_accounted_for(small, tmp_path):
    pred = Arima(n_jobs=1, window=600)  # 60 records of smartmoe-ae (every 10th iteration)
    ev = evaluate(small, pred, Task(dataset="x", horizons=(300,), stride=400))
    assert not ev.failures and len(ev.frame()) == 3 * 3  # 3 origins x 3 layers
    # each forecast row went through the clip/renormalise step and was counted there
    assert pred.stats["rows"] == 3 * 30 * 3  # origins x records x layers
    assert pred.stats["estimations"] == 3
    assert pred.stats["series_short"] == 96  # the first origin has 10 points < min_points: window mean
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


@pytest.fixture(scope="module")
def per_step():
    """2,000 iterations of 2 layers x 16 experts of a tracer trace, recorded at every iteration,
    and the same load recorded every 10th iteration (counts summed over each 10 iterations)."""
    from datasets_registry import registry

    tr = registry.load("gpt3-125m-16e-top2-s1")
    c = tr.counts[:2000, :2].astype(np.int64)
    assert (c.sum(axis=2) == c[0].sum(axis=1)).all()  # the same routed slots every step: means of p = p of sums
    every = Trace.from_arrays(c, tr.steps[:2000])
    tenth = Trace.from_arrays(c.reshape(200, 10, 2, 16).sum(axis=1), tr.steps[9:2000:10])
    return every, tenth


def test_binned_window_averages_whole_bins_ending_at_the_last_record():
    p = np.arange(2 * 25, dtype=float).reshape(25, 2, 1)
    x = binned_window(p, np.arange(1, 26), window=20, bin_iterations=5)  # 4 bins of 5 records: records 5..24
    np.testing.assert_array_equal(
        x[:, 0, 0], [p[5:10, 0, 0].mean(), p[10:15, 0, 0].mean(), p[15:20, 0, 0].mean(), p[20:25, 0, 0].mean()]
    )
    x = binned_window(p[:7], np.arange(1, 8), window=20, bin_iterations=5)  # shorter than the window: whole bins only
    np.testing.assert_array_equal(x[:, 1, 0], [p[2:7, 1, 0].mean()])
    steps10 = np.arange(10, 260, 10)  # recorded every 10th iteration: a 10-iteration bin is one record
    np.testing.assert_array_equal(binned_window(p, steps10, window=100, bin_iterations=10), p[-10:])


def test_window_and_bin_are_iterations_whatever_the_recording_rate(per_step):
    """The same load recorded every iteration and every 10th gives the same model and forecast."""
    every, tenth = per_step
    a, b = Arima(n_jobs=1), Arima(n_jobs=1)  # window 1,000 iterations in 10-iteration points
    for pred, tr, n, horizon in ((a, every, 2000, 1000), (b, tenth, 200, 100)):
        pred.start(2, 16)
        pred.observe(tr.counts[:n], tr.steps[:n])
    fa, fb = a.predict(1000), b.predict(100)
    check_forecast(fa, 1000, 2, 16)
    assert a.stats["series_fitted"] == b.stats["series_fitted"] == 32  # 100 points each, not 1,000 and 100
    np.testing.assert_allclose(fa[::10], fb, rtol=0, atol=1e-9)
    assert (fa.reshape(100, 10, 2, 16) == fa[::10, None]).all()  # a record takes the value of its 10-iteration point


#: (trace, order) pairs on which the fast path is claimed to agree with statsmodels: the default
#: order on smartmoe-ae, and the AR orders with a mean that the order selection picks on both
#: kinds of trace (docs/models.md says where the engines differ: (0,1,1) on the tracer traces).
AGREEING = [
    ("smartmoe-ae", (0, 1, 1)),
    ("smartmoe-ae", (1, 0, 0)),
    ("gpt3-125m-16e-top2-s1", (1, 0, 0)),
    ("gpt3-125m-16e-top2-s1", (2, 0, 2)),
]


@pytest.mark.parametrize("dataset, order", AGREEING)
def test_statsforecast_agrees_with_statsmodels_on_real_series(request, dataset, order):
    """Tolerance, in units of the uniform share 1/E (series are fitted as E*p, level ~1), on 8
    series of 100 ten-iteration points from the middle of the trace, as the predictor takes them:
    median over series of the mean |difference| of 100-point forecasts < 1e-3, every series
    < 5e-2, and the two engines' mean absolute error against the actual next 100 points within
    5% of each other."""
    from datasets_registry import registry

    tr = request.getfixturevalue("smartmoe") if dataset == "smartmoe-ae" else registry.load(dataset)
    T, L, E = tr.shape
    Y = fitted_series(tr.proportions[: T // 2], tr.steps[: T // 2], 2000, 10)  # 200 points
    Y = Y[np.random.default_rng(0).choice(L * E, size=8, replace=False)]
    fit, truth = Y[:, :100], Y[:, 100:200]
    sf = np.array([fit_forecast(y, order, "statsforecast", 100, 20)[0] for y in fit])
    sm = np.array([fit_forecast(y, order, "statsmodels", 100, 20)[0] for y in fit])
    diff = np.abs(sf - sm).mean(axis=1)
    assert np.median(diff) < 1e-3 and diff.max() < 5e-2, diff
    err_sf, err_sm = np.abs(sf - truth).mean(), np.abs(sm - truth).mean()
    assert abs(err_sf - err_sm) < 0.05 * err_sm, (err_sf, err_sm)


def test_process_pool_gives_the_serial_result(small):
    task = Task(dataset="x", horizons=(200,), stride=500)
    a, b = Arima(n_jobs=1, window=400), Arima(n_jobs=2, window=400)
    fa, fb = evaluate(small, a, task).frame(), evaluate(small, b, task).frame()
    np.testing.assert_allclose(fa["error_rate"], fb["error_rate"], rtol=0, atol=1e-12)
    assert b._pool is not None and a._pool is None  # the parallel one really used a process pool


def test_a_process_with_cuda_gets_workers_from_a_forkserver_with_the_same_result(small, monkeypatch):
    """Planning inside a GPU training job: forked children of a CUDA process can die, so the pool forks from a
    fresh server there; the forecasts do not change."""
    import torch

    from models import arima

    assert arima.pool_start_method() == "fork" or not torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert arima.pool_start_method() == "forkserver"
    task = Task(dataset="x", horizons=(200,), stride=500)
    a, b = Arima(n_jobs=1, window=400), Arima(n_jobs=2, window=400)
    fa, fb = evaluate(small, a, task).frame(), evaluate(small, b, task).frame()
    np.testing.assert_allclose(fa["error_rate"], fb["error_rate"], rtol=0, atol=1e-12)
    assert b._pool._mp_context.get_start_method() == "forkserver"


def test_refit_once_estimates_once_then_reapplies(small):
    pred = Arima(n_jobs=1, window=400)
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
    with pytest.raises(ParamError, match="window at least 2 bins"):
        Arima(window=15, bin=10)
    with pytest.raises(ParamError, match="unknown parameter"):
        Arima(min_records=20)  # the version-1 name: points, not records, now
    assert Arima(order="auto").params["order"] == "auto"


def test_bench_run_arima_on_a_tracer_trace_is_logged_to_mlflow(bench_run):
    """`python -m bench run --model arima` end to end on the built-in tiny tracer trace (every iteration recorded)."""
    result, run, artifacts, _ = bench_run(
        "--model",
        "arima",
        "--dataset",
        "tiny-cpu-s1",
        "--horizon",
        "1000",
        "--stride",
        "1500",
        "--param",
        "n_jobs=1",
        "--param",
        "window=500",
    )
    h = result["horizons"]["1000"]
    assert result["failures"] == 0 and h["n_origins"] == 3
    assert h["error_rate"]["all"] > h["noise_floor"]["all"] > 0
    m = run.data.metrics
    assert m["h1000/error_rate/all"] == pytest.approx(h["error_rate"]["all"])
    # origins at iterations 100, 1600, 3100; 2 layers x 8 experts. The first has 10 points (< min_points):
    # window means; the others fit 50 ten-iteration points each.
    assert m["arima.series_short"] == 16 and m["arima.series_fitted"] + m.get("arima.series_constant", 0) == 2 * 16
    assert m["arima.rows"] == 3 * 100 * 2  # 100 ten-iteration points per 1,000-iteration forecast, per layer
    assert run.data.params["model.window"] == "500" and run.data.params["model.bin"] == "10"
    assert {"arima_stats.json", "origins.parquet"} <= artifacts


def test_order_auto_selects_on_the_training_trace_before_the_first_forecast(per_step):
    every, tenth = per_step
    pred = Arima(order="auto", select_series=8, n_jobs=1)
    pred.start(2, 16, [every])  # the order is chosen in fit, on the training trace's binned window
    assert pred._order is not None and pred.selected["series"] == 8
    assert pred.selected["order"] == ",".join(map(str, pred._order))
    pred.observe(tenth.counts[:150], tenth.steps[:150])
    check_forecast(pred.predict(20), 20, 2, 16)


def test_order_auto_on_history_waits_for_a_full_window(per_step):
    """Without training traces the order is selected on the first full window (100 points with the
    defaults), not on the few points of the first origins; until then the interim order forecasts."""
    _, tenth = per_step
    pred = Arima(order="auto", select_series=8, n_jobs=1)
    pred.start(2, 16)
    pred.observe(tenth.counts[:50], tenth.steps[:50])  # 50 points of 10 iterations: half a window
    check_forecast(pred.predict(20), 20, 2, 16)
    assert pred.selected is None and pred.stats["series_fitted"] == 32  # fitted with the interim (0,1,1)
    pred.observe(tenth.counts[50:100], tenth.steps[50:100])  # a full window
    check_forecast(pred.predict(20), 20, 2, 16)
    assert pred.selected is not None and pred.selected["series"] == 8
    assert pred.selected["order"] == ",".join(map(str, pred._order))


def test_kill_9_of_a_run_leaves_no_pool_worker(tmp_path):
    """ARIMA's fit workers die with the command that started them, even when it is killed with SIGKILL."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    env = {**os.environ, "MOE_LOAD_BENCH_HOME": str(tmp_path), "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--model",
            "arima",
            "--dataset",
            "tiny-cpu-s1",
            "--param",
            "n_jobs=2",
            "--no-track",
            "--force",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def children(pid: int) -> list[int]:
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    deadline = time.monotonic() + 120
    while len(children(proc.pid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    workers = children(proc.pid)
    assert len(workers) >= 2, "the pool never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [
            w
            for w in workers
            if Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split(")")[-1].split()[:1]
        ]
    for w in alive:
        os.kill(w, signal.SIGKILL)
    assert not alive, f"pool workers left behind after kill -9: {alive}"


def test_quantiles_are_the_engines_intervals_widened_for_a_record_within_its_bin():
    from models.arima import INTERVAL_LEVELS, _z, record_quantiles
    from models.base import QUANTILE_LEVELS

    F = np.array([[2.0, 2.0]])  # one series (L=1, E=2 ... here one of two experts) two points, in units of E p
    se = 0.5
    half = np.broadcast_to(se * _z(INTERVAL_LEVELS), (1, 2, len(INTERVAL_LEVELS)))
    q = record_quantiles(np.vstack([F, F]), np.vstack([half, half]), np.array([0.0, 0.75]), 1, 2)  # [2, 1, 2, Q]
    from statistics import NormalDist

    for e, sd in ((0, se), (1, (se**2 + 0.75) ** 0.5)):
        want = [min(1.0, max(0.0, NormalDist(2.0, sd).inv_cdf(lv) / 2)) for lv in QUANTILE_LEVELS]
        np.testing.assert_allclose(q[0, 0, e], want, atol=1e-9)


@pytest.mark.parametrize("engine", ["statsforecast", "statsmodels"])
def test_quantiles_are_valid_and_cover_the_real_trace(small, engine):
    """Both engines' intervals on 3 layers of smartmoe-ae: valid quantiles, whose 80% and 90% intervals cover
    near their nominal share of the actual records (0.90 and 0.93 measured with either engine)."""
    from bench.evaluate import check_quantiles

    pred = Arima(n_jobs=1, window=600, engine=engine)
    assert pred.probabilistic
    ev = evaluate(small, pred, Task(dataset="x", horizons=(300,), stride=400))
    frame = ev.frame()
    assert not ev.failures
    assert 0.75 < frame["coverage_80"].mean() < 0.97 and 0.85 < frame["coverage_90"].mean() < 0.99
    q = check_quantiles(pred.predict_quantiles(7), 7, 3, 32)
    assert (q[..., -1] > q[..., 0]).any()
