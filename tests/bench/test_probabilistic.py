"""Scores of quantile forecasts (bench/probabilistic.py), against the pinball loss written out by hand."""

import numpy as np
import pytest

from bench.aggregate import summarize
from bench.probabilistic import quantile_record_scores, quantile_scores, reference_quantiles
from models.base import QUANTILE_LEVELS


def pinball(level: float, quantile: np.ndarray, actual: np.ndarray) -> np.ndarray:
    return np.where(actual >= quantile, level * (actual - quantile), (1 - level) * (quantile - actual))


def test_quantile_loss_is_twice_the_mean_pinball_loss_summed_over_experts():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=(5, 3))  # [H, L, E]
    q = np.sort(rng.uniform(0, 0.4, (5, 3, 6, len(QUANTILE_LEVELS))), axis=-1)
    by_hand = 2 * np.mean([pinball(a, q[..., i], p) for i, a in enumerate(QUANTILE_LEVELS)], axis=0)
    scores = quantile_scores(q, p)
    np.testing.assert_allclose(scores["quantile_loss"], by_hand.sum(axis=2).mean(axis=0))
    inside_90 = (p >= q[..., QUANTILE_LEVELS.index(0.05)]) & (p <= q[..., QUANTILE_LEVELS.index(0.95)])
    np.testing.assert_allclose(scores["coverage_90"], inside_90.mean(axis=(0, 2)))
    assert quantile_record_scores(q, p)["coverage_80"].shape == (5, 3)


def test_a_point_forecast_as_quantiles_scores_near_its_l1_error():
    """Every quantile at the point forecast: the loss is the L1 error times the levels' mean weight, and the
    zero-width intervals cover only exact hits."""
    rng = np.random.default_rng(1)
    p, phat = rng.dirichlet(np.ones(8), size=(4, 2)), rng.dirichlet(np.ones(8), size=(4, 2))
    q = np.repeat(phat[..., None], len(QUANTILE_LEVELS), axis=-1)
    scores = quantile_scores(q, p)
    above = p >= phat
    weight = np.where(above[..., None], QUANTILE_LEVELS, 1 - np.asarray(QUANTILE_LEVELS)).mean(axis=-1)
    np.testing.assert_allclose(scores["quantile_loss"], (2 * weight * np.abs(p - phat)).sum(axis=2).mean(axis=0))
    assert (scores["coverage_90"] == 0).all() and (scores["width_90"] == 0).all()


def test_the_reference_is_the_last_100_iterations_quantiles():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(4), size=(300, 2))
    steps = np.arange(300) * 10  # a record every 10th iteration: the window is the last 10 records
    np.testing.assert_allclose(reference_quantiles(p, steps)[..., QUANTILE_LEVELS.index(0.5)],
                               np.median(p[-10:], axis=0))


def test_the_scaled_quantile_loss_is_a_ratio_of_means_by_state():
    import pandas as pd

    frame = pd.DataFrame({"horizon": 10, "origin": [0, 0, 1, 1], "layer": [0, 1, 0, 1], "records": 5,
                          "state": ["stable", "transient", "stable", "stable"],
                          "quantile_loss": [0.1, 0.4, 0.3, 0.2], "reference_quantile_loss": [0.2, 0.4, 0.2, 0.4]})
    h = summarize(frame, [], (10,), ["quantile_loss", "reference_quantile_loss"], 2)[10]
    stable = ((0.1 + 0.3) / 2 + 0.2) / 2 / (((0.2 + 0.2) / 2 + 0.4) / 2)  # mean over origins, then layers
    assert h.value("scaled_quantile_loss", "stable") == pytest.approx(stable)
    assert h.value("scaled_quantile_loss", "transient") == pytest.approx(1.0)
