"""The engines' estimators against forecasts worked out by hand on small traces."""

import numpy as np
import pytest

from models import ParamError, predictor_class
from models.engines import VLLMEPLB, SGLangEPLB, TensorRTLLMLoadBalancer


def forecast_at(pred, counts, steps, origin_step):
    """The forecast at the origin `origin_step`, having seen every record before it."""
    seen = steps < origin_step
    pred.start(counts.shape[1], counts.shape[2])
    pred.observe(counts[seen], steps[seen])
    return pred.forecast(np.array([origin_step, origin_step + 1]))


# one layer, two experts, passes 0..11: expert 0 gets 1..12 tokens, expert 1 always 10
STEPS = np.arange(12)
COUNTS = np.stack([STEPS + 1, np.full(12, 10)], axis=1)[:, None, :]


def test_sglang_sums_its_buffer_at_each_rebalance_and_holds_it():
    pred = SGLangEPLB(rebalance_num_iterations=4, buffer_size=3)  # rebalances after passes 4, 8: serves from 5, 9
    assert np.allclose(forecast_at(pred, COUNTS, STEPS, 4)[:, 0], 0.5)  # no rebalance before pass 5: uniform
    # at pass 7 the placement of the rebalance after pass 4 stands: the buffer held passes 2, 3, 4
    expected = np.array([3 + 4 + 5, 30]) / (12 + 30)
    np.testing.assert_allclose(forecast_at(pred, COUNTS, STEPS, 7)[0, 0], expected)
    np.testing.assert_allclose(forecast_at(pred, COUNTS, STEPS, 8)[1, 0], expected)  # constant over the horizon
    np.testing.assert_allclose(forecast_at(pred, COUNTS, STEPS, 9)[0, 0], np.array([7 + 8 + 9, 30]) / (24 + 30))


def test_sglang_unbounded_buffer_sums_every_pass_so_far():
    pred = SGLangEPLB(rebalance_num_iterations=4, buffer_size=-1)
    np.testing.assert_allclose(forecast_at(pred, COUNTS, STEPS, 9)[0, 0], np.array([45, 90]) / 135)  # passes 0..8


def test_vllm_first_rearranges_after_a_quarter_interval_then_every_interval():
    pred = VLLMEPLB(window_size=3, step_interval=8)  # counter starts at 6 of 8: rearranges after 2 passes, then 10
    assert np.allclose(forecast_at(pred, COUNTS, STEPS, 1)[:, 0], 0.5)
    np.testing.assert_allclose(forecast_at(pred, COUNTS, STEPS, 2)[0, 0], np.array([1 + 2, 20]) / 23)  # passes 0, 1
    np.testing.assert_allclose(forecast_at(pred, COUNTS, STEPS, 9)[0, 0], np.array([3, 20]) / 23)  # still that one
    np.testing.assert_allclose(forecast_at(pred, COUNTS, STEPS, 10)[0, 0], np.array([8 + 9 + 10, 30]) / 57)


def test_the_defaults_are_the_engines():
    steps = np.arange(4000)
    counts = np.stack([steps + 1, np.full(4000, 1000)], axis=1)[:, None, :]
    sglang = SGLangEPLB()
    assert np.allclose(forecast_at(sglang, counts, steps, 1000)[0, 0], 0.5)
    first = counts[1:1001].sum(axis=0)[0]  # the end of pass 1,000: a buffer of passes 1..1000
    np.testing.assert_allclose(forecast_at(sglang, counts, steps, 1001)[0, 0], first / first.sum())
    np.testing.assert_allclose(forecast_at(sglang, counts, steps, 2000)[0, 0], first / first.sum())
    vllm = VLLMEPLB()
    assert np.allclose(forecast_at(vllm, counts, steps, 749)[0, 0], 0.5)
    first = counts[:750].sum(axis=0)[0]
    np.testing.assert_allclose(forecast_at(vllm, counts, steps, 3749)[0, 0], first / first.sum())
    then = counts[2750:3750].sum(axis=0)[0]
    np.testing.assert_allclose(forecast_at(vllm, counts, steps, 3750)[0, 0], then / then.sum())
    assert TensorRTLLMLoadBalancer().params == {"decay_factor": 0.9, "layer_updates_per_iter": 1}


def test_trtllm_decays_counts_since_each_layers_own_update():
    # three layers, one updated a pass: plan passes 0, 1, 2 and an idle pass 3 (equal plan sizes), so a cycle of 4
    counts = np.stack([COUNTS[:, 0], COUNTS[:, 0] * [1, 2], COUNTS[:, 0] * [3, 1]], axis=1)
    phat = forecast_at(TensorRTLLMLoadBalancer(), counts, STEPS, 8)[0]
    w = 0.9 ** np.arange(3, -1, -1)  # the four passes since the last update, the newest weighing 1
    layer0 = w @ COUNTS[1:5, 0]  # updated at pass 4 (serving from 5): passes 1..4
    layer1 = w @ (COUNTS[2:6, 0] * [1, 2])  # updated at pass 5 (serving from 6): passes 2..5
    layer2 = w @ (COUNTS[3:7, 0] * [3, 1])  # updated at pass 6 (serving from 7): passes 3..6
    for layer, load in enumerate((layer0, layer1, layer2)):
        np.testing.assert_allclose(phat[layer], load / load.sum())
    # two layers a pass: plan {0, 2} then {1}, unequal sizes, so no idle pass and a cycle of 2
    assert TensorRTLLMLoadBalancer(layer_updates_per_iter=2).plan(3) == (2, 2)
    assert TensorRTLLMLoadBalancer().plan(3) == (3, 4)
    phat = forecast_at(TensorRTLLMLoadBalancer(layer_updates_per_iter=2, decay_factor=0.5), counts, STEPS, 8)[0]
    load = 0.5 * COUNTS[5, 0] + COUNTS[6, 0]  # layer 0 updated at pass 6: passes 5, 6
    np.testing.assert_allclose(phat[0], load / load.sum())


def test_trtllm_defaults_on_one_layer_decay_the_two_passes_of_its_cycle():
    # one layer, one update a pass: a plan of pass 0 and, its first and last passes updating equally many layers,
    # an idle pass: a cycle of 2. The update at pass 10 serves from 11 and decays passes 9 and 10 by 0.9 per pass.
    phat = forecast_at(TensorRTLLMLoadBalancer(), COUNTS, STEPS, 11)
    load = 0.9 * COUNTS[9, 0] + COUNTS[10, 0]
    np.testing.assert_allclose(phat[0, 0], load / load.sum())
    np.testing.assert_allclose(phat[1, 0], load / load.sum())  # held over the horizon
    # the first update, at pass 0, serves from pass 1 on pass 0's counts alone
    np.testing.assert_allclose(forecast_at(TensorRTLLMLoadBalancer(), COUNTS, STEPS, 1)[0, 0], np.array([1, 10]) / 11)


def test_a_sparse_trace_uses_the_records_of_the_window():
    steps = np.arange(0, 120, 10)  # every 10th iteration
    pred = SGLangEPLB(rebalance_num_iterations=40, buffer_size=40)  # serves from 41, 81: passes 1..40, 41..80
    np.testing.assert_allclose(forecast_at(pred, COUNTS, steps, 90)[0, 0],
                               COUNTS[5:9, 0].sum(axis=0) / COUNTS[5:9, 0].sum())  # records at 50, 60, 70, 80


def test_engine_settings_the_engines_refuse_are_refused():
    for pred in (SGLangEPLB(rebalance_num_iterations=10, buffer_size=20), VLLMEPLB(step_interval=0),
                 TensorRTLLMLoadBalancer(layer_updates_per_iter=0)):
        with pytest.raises(ParamError):
            pred.start(1, 2)


def test_the_registry_lists_them_with_their_sources():
    from models.registry import ENGINE_ESTIMATORS, about_class

    for name in ENGINE_ESTIMATORS:
        info = about_class(predictor_class(name))
        assert info["source"] and "@" in info["source"], name
        assert predictor_class(name).replayable
