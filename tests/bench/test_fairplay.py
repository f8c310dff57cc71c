"""The look-ahead test: honest models pass, forecasts that use the truth are disqualified."""

import json

import numpy as np
import pytest

from bench import fairplay
from bench.evaluate import evaluate
from bench.fairplay import block_bootstrap_means, judge, run_scores, verdict
from bench.hindsight import floors_at_origins
from bench.metrics import forecast_errors
from bench.task import Task, rolling_origins
from datasets_registry import registry
from models.baselines import SlidingWindowAverage
from models.registry import predictor_class

DATASETS = ("gpt3-125m-16e-top2-s1", "tiny-cpu-s1")
HONEST = ("sw_avg", "last", "ema", "static", "sw_sum")


@pytest.fixture(scope="module", params=DATASETS)
def case(request):
    """A trace, the default task, its floors and sw_avg's evaluation."""
    trace = registry.load(request.param)
    task = Task(request.param)
    floors = floors_at_origins(trace.proportions, trace.steps, task)
    return trace, task, floors, evaluate(trace, predictor_class("sw_avg")(), task)


def cheat_verdicts(case, forecast):
    """{horizon: (verdict, mean error)} of a forecast made from the truth.

    ``forecast(i, record, truth, sw_avg_estimate) -> phat`` at the i-th origin (record index `record`).
    """
    trace, task, floors, base = case
    out = {}
    for H, o in rolling_origins(trace.steps, task).items():
        steps, _, noise = run_scores(base, H)
        errors = []
        for i, (rec, n) in enumerate(zip(o.records.tolist(), o.lengths.tolist())):
            truth = trace.proportions[rec : rec + n]
            estimate = np.asarray(base.window_forecasts[H][int(trace.steps[rec])])
            errors.append(forecast_errors(forecast(i, rec, truth, estimate), truth)["error_rate"])
        errors = np.array(errors)
        out[H] = (verdict(errors, noise, floors[H].hindsight, steps, H, task.stride), errors.mean())
    return out


@pytest.mark.parametrize("model", HONEST)
def test_honest_models_are_not_disqualified(case, model):
    trace, task, floors, _ = case
    verdicts = judge(evaluate(trace, predictor_class(model)(), task), floors, task.stride)
    assert set(verdicts) == set(task.horizons)
    for v in verdicts.values():
        assert not v.disqualified and v.reasons == []
        # a forecast constant over the horizon never beats the hindsight floor at any cell
        assert v.beaten_share == 0 and v.hindsight_ratio >= 1


def test_the_truth_is_disqualified_by_every_test(case):
    for v, _ in cheat_verdicts(case, lambda i, rec, truth, est: truth).values():
        assert v.disqualified and len(v.reasons) == 4
        assert v.noise_ratio == 0 and v.hindsight_ratio == 0 and v.beaten_share == 1
        assert v.origins_below_noise == v.origins


def test_the_truth_mixed_with_sw_avg_is_disqualified(case):
    for v, _ in cheat_verdicts(case, lambda i, rec, truth, est: 0.5 * truth + 0.5 * est).values():
        assert v.disqualified
        assert any("hindsight floor" in r for r in v.reasons)


def test_the_truth_plus_sampling_noise_is_disqualified(case):
    """Each step resampled with its own routed slots: an error at the noise floor, far below hindsight."""
    trace = case[0]
    rng = np.random.default_rng(1)

    def resampled(i, rec, truth, est):
        slots = trace.totals[rec : rec + len(truth)].astype(np.int64)
        return rng.multinomial(slots, truth) / slots[..., None]

    for v, _ in cheat_verdicts(case, resampled).values():
        assert v.noise_ratio == pytest.approx(1.0, abs=0.05)
        assert v.disqualified and v.hindsight_ratio < 0.5


def test_a_cheat_at_some_origins_is_flagged_or_gains_little(case):
    """The truth, or the truth mixed 50/50 with sw_avg, at every k-th origin; sw_avg elsewhere.

    The truth itself is flagged however rarely it is used: one origin scored below half its
    noise floor suffices. The mix is flagged from a third of the origins on. Mixed in more
    rarely it can pass, but then it gains little over sw_avg: each mixed origin is a beaten cell
    in every layer, so the beaten share is about 1/k, and once its lower bound is under
    `SHARE_LIMIT` the mix (which halves the error where used) gains about half of that.
    """
    _, task, _, base = case
    honest = {H: run_scores(base, H)[1].mean() for H in task.horizons}
    passed = 0
    for k in (2, 3, 5, 8, 12, 20, 40):
        truth_at_k = cheat_verdicts(case, lambda i, rec, truth, est: truth if i % k == 0 else est)
        assert all(v.disqualified and v.origins_below_noise for v, _ in truth_at_k.values()), k
        mixed_at_k = cheat_verdicts(case, lambda i, rec, truth, est: 0.5 * (truth + est) if i % k == 0 else est)
        for H, (v, cheat_error) in mixed_at_k.items():
            if k <= 3:
                assert v.disqualified, (k, H)
            if not v.disqualified:
                passed += 1
                assert 1 - cheat_error / honest[H] < 2 * fairplay.SHARE_LIMIT, (k, H)
    assert passed  # the bound above was exercised


def test_the_verdict_is_deterministic_and_json_able(case):
    trace, task, floors, base = case
    steps, errors, noise = run_scores(base, 1000)
    hind = floors[1000].hindsight[floors[1000].rows_for(steps)]
    first = verdict(errors * 0.6, noise, hind, steps, 1000, task.stride)
    second = verdict(errors * 0.6, noise, hind, steps, 1000, task.stride)
    assert first == second
    assert json.loads(json.dumps(first.to_dict())) == first.to_dict()
    assert first.to_dict()["settings"]["seed"] == fairplay.SEED


def test_block_bootstrap_matches_explicit_resampling():
    rng = np.random.default_rng(3)
    values = rng.random((2, 23))
    got = block_bootstrap_means(values, block=5, resamples=50, seed=11)
    starts = np.random.default_rng(11).integers(0, 23 - 5 + 1, size=(50, 5))
    for r in range(50):
        idx = np.concatenate([np.arange(s, s + 5) for s in starts[r]])[:23]
        assert got[:, r] == pytest.approx(values[:, idx].mean(axis=1), rel=1e-12)
    # one block of everything: every resample is the sample itself
    whole = block_bootstrap_means(values, block=23, resamples=4)
    assert whole == pytest.approx(np.repeat(values.mean(axis=1)[:, None], 4, axis=1))


def test_bounds_are_percentiles_of_the_block_bootstrap():
    """Blocks of ceil(horizon / stride) origins, ratios of resampled means, one-sided at LEVEL."""
    rng = np.random.default_rng(8)
    err, noise, hind = 0.2 + rng.random((3, 37, 4))
    v = verdict(err, noise, hind, np.arange(37) * 100, 1050, 100)
    per_origin = np.stack([err.mean(1), noise.mean(1), hind.mean(1), (err < fairplay.HINDSIGHT_MARGIN * hind).mean(1)])
    boot = block_bootstrap_means(per_origin, 11)
    tail = 100 * (1 - fairplay.LEVEL)
    assert v.block_origins == 11
    assert v.noise_ratio_upper == pytest.approx(np.percentile(boot[0] / boot[1], 100 - tail))
    assert v.hindsight_ratio_upper == pytest.approx(np.percentile(boot[0] / boot[2], 100 - tail))
    assert v.beaten_share_lower == pytest.approx(np.percentile(boot[3], tail))
    assert v.hindsight_ratio == pytest.approx(err.mean() / hind.mean())


def test_bounds_straddle_the_estimates_and_shrink_with_more_origins():
    rng = np.random.default_rng(5)

    def width(origins):
        err = 1 + 0.2 * rng.random((origins, 3))
        v = verdict(err, np.full_like(err, 0.5), np.ones_like(err), np.arange(origins) * 100, 1000, 100)
        assert v.noise_ratio_upper >= v.noise_ratio and v.hindsight_ratio_upper >= v.hindsight_ratio
        return v.hindsight_ratio_upper - v.hindsight_ratio

    assert width(400) < width(40)


class Flaky(SlidingWindowAverage):
    """sw_avg that fails at every third origin."""

    calls = 0

    def predict(self, records):
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError("no forecast here")
        return super().predict(records)


def test_failed_origins_are_left_out(case):
    trace, task, floors, base = case
    run = evaluate(trace, Flaky(), task)
    verdicts = judge(run, floors, task.stride)
    for H, v in verdicts.items():
        failed = {f["origin_step"] for f in run.failures if f["horizon"] == H}
        steps, errors, _ = run_scores(run, H)
        assert failed and not failed & set(steps.tolist())
        assert v.origins == len(steps) == len(floors[H].origins) - len(failed)
        assert errors == pytest.approx(run_scores(base, H)[1][floors[H].rows_for(steps)])
        assert not v.disqualified


@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "noise_floor": a["noise_floor"][:-1]}, "noise_floor has shape"),
    (lambda a: {**a, "errors": np.where(a["errors"] > 0.5, np.nan, a["errors"])}, "errors must be finite"),
    (lambda a: {**a, "origin_steps": a["origin_steps"][::-1]}, "increasing"),
    (lambda a: {**a, "errors": a["errors"][0]}, r"\[origins, layers\]"),
    (lambda a: {**a, "stride": 0}, "positive"),
])
def test_bad_input_gets_a_clear_error(change, message):
    rng = np.random.default_rng(0)
    args = {"errors": rng.random((6, 2)), "noise_floor": np.full((6, 2), 0.1), "hindsight": np.full((6, 2), 0.3),
            "origin_steps": np.arange(6) * 100, "horizon": 1000, "stride": 100}
    with pytest.raises(ValueError, match=message):
        verdict(**change(args))
