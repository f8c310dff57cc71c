import json

import numpy as np
import pytest

from bench import runner
from bench.evaluate import ForecastError, check_forecast, check_quantiles, evaluate
from bench.task import Task
from datasets_registry import registry
from datasets_registry.synthetic import switching_trace
from models.base import QUANTILE_LEVELS, Predictor
from models.baselines import SlidingWindowAverage


@pytest.fixture(scope="module")
def trace():
    return switching_trace(records=400, layers=2, experts=8, switch=150, seed=5)


TASK = Task("synthetic", horizons=(50, 100), stride=25, min_history=25)


class Peeker(Predictor):
    """Tries every way the API offers to reach records at or after the origin."""

    name = "peeker"
    seen_future = False

    def predict(self, horizon):
        h = self.history
        full = len(h)
        for arr in (h.proportions, h.counts, h.steps):
            base = arr.base
            while base is not None:  # views lead only to the predictor's own buffer
                assert not np.any(base[full:] != 0), "future data reachable through .base"
                base = getattr(base, "base", None)
        try:
            h.proportions[full]
            Peeker.seen_future = True
        except IndexError:
            pass
        with pytest.raises(ValueError):
            h.proportions[0, 0, 0] = 1.0  # read-only
        return self.repeat(h.proportions[-1], horizon)


def test_a_predictor_cannot_reach_the_future(trace):
    ev = evaluate(trace, Peeker(), TASK)
    assert not ev.failures and not Peeker.seen_future


def test_observed_history_is_exactly_the_past(trace):
    seen = []

    class Recorder(Predictor):
        name = "recorder"

        def predict(self, horizon):
            seen.append(self.history.steps.copy())
            return self.repeat(self.history.proportions[-1], horizon)

    evaluate(trace, Recorder(), TASK)
    for steps_seen, o in zip(
        seen, sorted(set(r["origin"] for r in evaluate(trace, SlidingWindowAverage(), TASK).rows))
    ):
        np.testing.assert_array_equal(steps_seen, trace.steps[:o])


class Flaky(Predictor):
    """Raises at some origins, returns garbage at others."""

    name = "flaky"
    calls = 0

    def predict(self, horizon):
        Flaky.calls += 1
        k = Flaky.calls % 4
        if k == 1:
            raise RuntimeError("model exploded")
        if k == 2:
            return np.full((horizon, 2, 8), np.nan)
        if k == 3:
            return np.ones((horizon, 2, 8))  # rows sum to 8
        return self.repeat(self.history.proportions[-1], horizon)


def test_failures_are_recorded_and_the_run_goes_on(trace):
    Flaky.calls = 0
    ev = evaluate(trace, Flaky(), TASK)
    errors = {f["error"].split(":")[1].strip() for f in ev.failures}
    assert {"RuntimeError", "ForecastError"} <= errors
    ok = {r["origin"] for r in ev.rows if not r["failed"]}
    failed = {f["origin"] for f in ev.failures}
    assert ok and not ok & failed
    assert failed == {r["origin"] for r in ev.rows if r["failed"]}  # failed origins are scored too: charged
    assert len(ok) == (len(ok) + len(failed)) // 4  # every 4th call succeeds
    assert all(np.isfinite(r["error_rate"]) for r in ev.rows)


def test_a_failed_origin_is_charged_the_worse_of_uniform_and_sw_avg(trace):
    """Refusing the hard origins never pays: a clone of sw_avg that raises wherever it would score worse than
    its mean scores no better than sw_avg itself."""
    base = evaluate(trace, SlidingWindowAverage(), TASK)
    err = {(r["horizon"], r["origin"], r["layer"]): r["error_rate"] for r in base.rows}
    mean_err = float(np.mean(list(err.values())))
    hard = {o for (H, o, layer), e in err.items() if H == 50 and e > mean_err}

    class Refuser(SlidingWindowAverage):
        name = "refuser"

        def predict(self, records):
            if int(np.searchsorted(trace.steps, self.target_steps[0])) in hard:
                raise RuntimeError("too hard")
            return super().predict(records)

    ev = evaluate(trace, Refuser(), TASK)
    assert {f["origin"] for f in ev.failures} == hard
    for r in ev.rows:
        assert r["error_rate"] >= err[(r["horizon"], r["origin"], r["layer"])] - 1e-12
        if r["failed"]:
            uniform = float(
                np.abs(trace.proportions[r["origin"] : r["origin"] + r["records"], r["layer"]] - 1 / 8)
                .sum(axis=1)
                .mean()
            )
            assert r["error_rate"] == pytest.approx(max(uniform, err[(r["horizon"], r["origin"], r["layer"])]))


def test_an_exception_in_start_fails_every_origin_without_a_traceback(trace):
    class BadStart(SlidingWindowAverage):
        def start(self, layers, experts, training=()):
            raise ValueError("no GPU here")

    ev = evaluate(trace, BadStart(), TASK)
    assert ev.failures and all("failed to start: ValueError: no GPU here" in f["error"] for f in ev.failures)
    assert all(r["failed"] for r in ev.rows)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (np.zeros((3, 2, 8)), "sum to 1"),
        (np.full((3, 2, 8), 1 / 8)[:, :, :7], "shape"),
        (-np.full((3, 2, 8), 1 / 8), "negative"),
        ("not an array", "not an array"),
    ],
)
def test_check_forecast(bad, fragment):
    with pytest.raises(ForecastError, match=fragment):
        check_forecast(bad, 3, 2, 8)


def test_static_dataset_is_refused():
    from datasets_registry.trace import Card, Trace

    t = Trace.from_arrays(np.ones((1, 2, 4)), [0], Card(id="s", static=True))
    with pytest.raises(ValueError, match="static dataset"):
        evaluate(t, SlidingWindowAverage(), TASK)


def test_interrupted_run_resumes_without_redoing_finished_origins(tmp_path, trace):
    calls = []

    class Counting(SlidingWindowAverage):
        name = "counting"

        def predict(self, horizon):
            calls.append(int(self.history.steps[-1]))
            return super().predict(horizon)

    journal = tmp_path / "journal.jsonl"
    full = evaluate(trace, Counting(), TASK)
    n = len(calls)
    calls.clear()

    # an exception that escapes the predictor is a recorded failure, so interrupt from outside
    def progress(done, total):
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(trace, Counting(), TASK, journal=journal, progress=progress)
    assert len(calls) == 5
    lines = journal.read_text().splitlines()
    assert len(lines) == 5
    with open(journal, "a") as f:
        f.write('{"origin": 1')  # a torn last line from a crash is ignored
    calls.clear()
    resumed = evaluate(trace, Counting(), TASK, journal=journal)
    assert len(calls) == n - 5  # only the unfinished origins were forecast
    assert resumed.rows == full.rows


def test_a_damaged_journal_line_is_recomputed_with_a_warning(trace, tmp_path):
    journal = tmp_path / "journal.jsonl"
    full = evaluate(trace, SlidingWindowAverage(), TASK, journal=journal)
    lines = journal.read_text().splitlines()
    rec = json.loads(lines[2])
    rec["horizons"][next(iter(rec["horizons"]))]["metrics"]["error_rate"][0] = 0.0  # a flipped value, checksum kept
    lines[2] = json.dumps(rec)
    journal.write_text("\n".join(lines) + "\n")
    with pytest.warns(RuntimeWarning, match="line 3 is damaged"):
        again = evaluate(trace, SlidingWindowAverage(), TASK, journal=journal)
    assert again.rows == full.rows
    assert len(journal.read_text().splitlines()) == len(lines)  # cut at line 3, then written again


def test_runs_are_cached_and_logged(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MOE_LOAD_BENCH_HOME", str(tmp_path))
    registry.add(switching_trace(records=400, layers=2, experts=8, switch=150, seed=5), "syn")
    task = Task("syn", horizons=(50,), stride=50, min_history=25)
    first = runner.run("sw_avg", "syn", task=task, params={"window": 20})
    assert first.mlflow_run_id and not first.cached
    again = runner.run("sw_avg", "syn", task=task, params={"window": 20})
    assert again.cached and again == first
    other = runner.run("sw_avg", "syn", task=task, params={"window": 40}, track=False)
    assert not other.cached and other.horizons != first.horizons
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.get_run(first.mlflow_run_id)
    assert run.data.tags["model"] == "sw_avg" and run.data.tags["dataset"] == "syn"
    assert run.data.metrics["h50/error_rate/all"] == pytest.approx(first.value(50, "error_rate"))
    assert run.data.params["model.window"] == "20"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"origins.parquet", "error_over_steps.png", "hottest_experts.png", "per_layer_errors.png"} <= arts


GOOD_QUANTILES = np.broadcast_to(np.linspace(0.0, 0.5, len(QUANTILE_LEVELS)), (3, 2, 8, len(QUANTILE_LEVELS)))


@pytest.mark.parametrize(
    "bad, fragment",
    [
        (GOOD_QUANTILES[..., :-1], "shape"),
        (GOOD_QUANTILES[..., ::-1], "decreases with the level"),
        (GOOD_QUANTILES + 0.6, "outside \\[0, 1\\]"),
        (np.where(GOOD_QUANTILES > 0.2, np.nan, GOOD_QUANTILES), "NaN"),
        ("quantiles", "not an array"),
    ],
)
def test_check_quantiles(bad, fragment):
    check_quantiles(GOOD_QUANTILES, 3, 2, 8)
    with pytest.raises(ForecastError, match=fragment):
        check_quantiles(bad, 3, 2, 8)


def test_point_only_predictors_are_never_asked_for_quantiles(trace):
    rows = evaluate(trace, SlidingWindowAverage(), TASK).rows
    assert not {"quantile_loss", "coverage_90", "reference_quantile_loss"} & set(rows[0])


def test_a_bad_quantile_forecast_fails_its_origin_and_is_charged(trace):
    """Quantiles that cross at some origins fail those origins; their quantile scores are the worse forecast's of
    uniform and sw_quantiles, so they never beat sw_quantiles' (the reference) and the run goes on."""
    from models.probabilistic import SlidingWindowQuantiles

    class Crossing(SlidingWindowQuantiles):
        name = "crossing"

        def predict_quantiles(self, records):
            q = super().predict_quantiles(records)
            return q[..., ::-1] if len(self.history) % 50 < 25 else q

    ev = evaluate(trace, Crossing(), TASK)
    assert ev.failures and all("decreases with the level" in f["error"] for f in ev.failures)
    assert not all(r["failed"] for r in ev.rows)
    for r in ev.rows:
        assert r["quantile_loss"] >= r["reference_quantile_loss"] - 1e-12
        if not r["failed"]:
            assert r["quantile_loss"] == pytest.approx(r["reference_quantile_loss"])  # sw_quantiles is the reference


# --------------------------------------------------------------------------- per-source loads

#: source_counts [T=5, L=1, S=2, E=2]: two records of history, the two records an origin at step 2 forecasts, and
#: one after them. Under the contiguous layout expert e lives on source e, so the pairs (0, 1) and (1, 0) cross.
SPLIT = np.array([[[[3, 1], [1, 3]]], [[[3, 1], [1, 3]]], [[[2, 2], [0, 4]]], [[[4, 0], [2, 2]]],
                  [[[9, 9], [9, 9]]]])
SPLIT_TASK = Task("split", horizons=(2,), stride=2, min_history=2)


def split_trace():
    from datasets_registry.trace import Card, Trace

    card = Card(id="split", extra={"sources": {"count": 2, "unit": "rank", "layout": "rank s: its own batch"}})
    return Trace.from_arrays(SPLIT.sum(axis=2), np.arange(5), card, extras={"source_counts": SPLIT})


class OwnSplit(Predictor):
    """Forecasts per source: 0.4 of the tokens cross each way, 0.1 stay; remembers the split it was shown."""

    name = "own_split"

    def predict(self, records):
        return self.repeat(np.full((1, 2), 0.5), records)

    def predict_sources(self, records):
        self.shown = self.history.source_counts.copy()
        return self.repeat(np.array([[[0.1, 0.4], [0.4, 0.1]]]), records)


class Last(Predictor):
    name = "last_point"

    def predict(self, records):
        return self.repeat(self.history.proportions[-1], records)


def only_origin(ev, metric):
    (row,) = ev.rows
    return row[metric]


def test_a_per_source_forecast_is_scored_on_the_tokens_that_cross_by_hand():
    """Truth at records 2, 3: shares [[.25, .25], [0, .5]] and [[.5, 0], [.25, .25]]; crossing pairs (0,1), (1,0)."""
    own = OwnSplit()
    ev = evaluate(split_trace(), own, SPLIT_TASK, per_source=True)
    np.testing.assert_array_equal(own.shown, SPLIT[:2])  # the past split only
    # record 2: |.4 - .25| + |.4 - 0| = .55; record 3: |.4 - 0| + |.4 - .25| = .55
    assert only_origin(ev, "traffic_error") == pytest.approx(0.55)
    # record 2: .15 + .15 + .4 + .4; record 3: .4 + .4 + .15 + .15
    assert only_origin(ev, "source_error") == pytest.approx(1.1)
    assert only_origin(ev, "remote_share") == pytest.approx(0.25)  # .25 + 0 and 0 + .25


def test_a_point_forecast_is_split_by_the_past_shares_by_hand():
    """History: expert 0's tokens come 3:1 from sources 0:1, expert 1's 1:3. Last forecasts [.5, .5], split into
    [[.375, .125], [.125, .375]]."""
    ev = evaluate(split_trace(), Last(), SPLIT_TASK, per_source=True)
    # record 2: |.125 - .25| + |.125 - 0| = .25; record 3: |.125 - 0| + |.125 - .25| = .25
    assert only_origin(ev, "traffic_error") == pytest.approx(0.25)
    # record 2: .125 + .125 + .125 + .125; record 3 the same
    assert only_origin(ev, "source_error") == pytest.approx(0.5)
    plain = evaluate(split_trace(), Last(), SPLIT_TASK)
    assert "traffic_error" not in plain.rows[0] and "remote_share" not in plain.rows[0]
    assert plain.rows[0]["error_rate"] == ev.rows[0]["error_rate"]


class BadSplit(OwnSplit):
    name = "bad_split"

    def predict_sources(self, records):
        return np.full((records, 1, 2, 2), 0.5)  # sums to 2


def test_a_bad_per_source_forecast_fails_the_origin_and_is_charged():
    ev = evaluate(split_trace(), BadSplit(), SPLIT_TASK, per_source=True)
    assert "do not sum to 1" in ev.failures[0]["error"]
    # charged the worse of uniform (every pair 1/4) and sw_avg's [.5, .5] split by the past shares (.25, above)
    # uniform: record 2: |.25 - .25| + |.25 - 0| = .25; record 3: .25 + 0 = .25
    assert only_origin(ev, "traffic_error") == pytest.approx(0.25)
    # uniform: record 2: 0 + 0 + .25 + .25 = .5; record 3: .25 + .25 + 0 + 0 = .5; the split's is .5 too
    assert only_origin(ev, "source_error") == pytest.approx(0.5)


def test_per_source_scoring_needs_a_dataset_with_sources(trace):
    with pytest.raises(ValueError, match="no per-source split"):
        evaluate(trace, Last(), TASK, per_source=True)


def test_check_source_forecast_rules():
    from bench.evaluate import check_source_forecast

    good = np.full((3, 1, 2, 2), 0.25)
    assert check_source_forecast(good, 3, 1, 2, 2) is not None
    for bad, fragment in ((good[:, :, :1], "shape"), (good * np.nan, "NaN"), (good - 0.5, "negative"),
                          (good * 2, "sum to 1"), ("x", "not an array")):
        with pytest.raises(ForecastError, match=fragment):
            check_source_forecast(bad, 3, 1, 2, 2)


# ---- the vectorised path of the built-in estimators --------------------------------------------------------------

#: Every built-in estimator with a vectorised path, with settings that make each of its branches happen on short traces.
VECTORISED = [
    ("sw_avg", {}), ("sw_avg", {"window": 500}), ("last", {}), ("ema", {}), ("ema", {"decay": 0.999}),
    ("static", {}), ("sw_sum", {}), ("sw_sum", {"window": 300, "rebalance_every": 400}),
    ("sglang", {}), ("sglang", {"rebalance_num_iterations": 300, "buffer_size": 100}),
    ("vllm", {}), ("vllm", {"window_size": 100, "step_interval": 400}),
]
#: The small built-in traces (the probes, recorded every 100 iterations, and the short ones); all of them with
#: MOE_LOAD_BENCH_ALL_BUILTIN=1.
SMALL_BUILTIN = ("probe", "tiny-cpu", "serve")


def _builtin_ids():
    import os

    ids = sorted(e.id for e in registry.entries() if e.kind == "builtin")
    if os.environ.get("MOE_LOAD_BENCH_ALL_BUILTIN"):
        return ids
    return [i for i in ids if any(k in i for k in SMALL_BUILTIN)]


def _task_for(tr) -> Task:
    span = int(tr.steps[-1] - tr.steps[0])
    return Task(tr.id, horizons=(span // 10, span // 5), stride=max(1, span // 25), min_history=max(1, span // 25))


@pytest.mark.parametrize("dataset", _builtin_ids())
def test_vectorised_path_is_the_origin_by_origin_path(dataset):
    """Rows, window forecasts and failures are identical, bit for bit, for every vectorised built-in estimator."""
    from bench.evaluate import builtin_vectorised
    from models import predictor_class

    tr = registry.load(dataset)
    task = _task_for(tr)
    for name, params in VECTORISED:
        fast, slow = predictor_class(name)(**params), predictor_class(name)(**params)
        assert builtin_vectorised(fast), name
        a, b = evaluate(tr, fast, task), evaluate(tr, slow, task, vectorised=False)
        assert a.frame().equals(b.frame()), (name, params)
        assert a.window_forecasts == b.window_forecasts and a.failures == b.failures, (name, params)
        assert not a.failures


def test_vectorised_path_only_for_the_packages_own_classes(trace):
    from bench.evaluate import builtin_vectorised
    from models.baselines import ExponentialMovingAverage

    class Mine(SlidingWindowAverage):  # a subclass may change predict: it goes origin by origin
        def predict(self, horizon):
            return self.repeat(np.full((self.history.layers, self.history.experts), 1 / self.history.experts), horizon)

    class Impostor(SlidingWindowAverage):  # claims a built-in's module and name
        pass

    Impostor.__module__, Impostor.__qualname__ = "models.baselines", "SlidingWindowAverage"
    assert builtin_vectorised(SlidingWindowAverage()) and builtin_vectorised(ExponentialMovingAverage())
    assert not builtin_vectorised(Mine()) and not builtin_vectorised(Impostor())
    ev = evaluate(trace, Mine(), TASK)
    assert all(np.allclose(np.asarray(w), 1 / 8) for h in ev.window_forecasts.values() for w in h.values())


def test_vectorised_path_falls_back_on_a_bad_estimate(trace, monkeypatch):
    """Estimates that are not valid forecasts (here NaN) are not used: the origin-by-origin path runs instead."""
    calls = []

    def broken(self, counts, proportions, steps, origins, origin_steps):
        calls.append(len(origins))
        return np.full((len(origins),) + counts.shape[1:], np.nan)

    monkeypatch.setattr(SlidingWindowAverage, "predict_all", broken)
    a = evaluate(trace, SlidingWindowAverage(), TASK)
    b = evaluate(trace, SlidingWindowAverage(), TASK, vectorised=False)
    assert calls and a.frame().equals(b.frame()) and not a.failures
