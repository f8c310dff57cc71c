import numpy as np
import pytest

from models import kernels
from models.base import History


@pytest.fixture(scope="module")
def past():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, (300, 3, 7))
    counts[:, :, 0] += 1
    steps = np.cumsum(rng.integers(1, 4, 300))  # irregular spacing
    return counts, counts / counts.sum(axis=2, keepdims=True), steps


def test_window_means_are_numpys_means_bit_for_bit(past):
    _, p, steps = past
    origins = np.array([1, 2, 17, 100, 250, 299])
    starts = kernels.window_starts(steps, origins, 40)
    got = kernels.window_means(p, starts, origins)
    for i, o in enumerate(origins):
        h = History(3, 7)
        h.append(past[0][:o], steps[:o])
        assert h.since(40) == slice(starts[i], o)
        assert np.array_equal(got[i], p[starts[i] : o].mean(axis=0))


def test_block_sums_and_count_cumsum(past):
    counts, p, _ = past
    bounds = np.array([5, 5, 90, 300])
    sums = kernels.block_sums(p, bounds)
    assert np.array_equal(sums[-1], ((p[:5].sum(0) + p[5:90].sum(0)) + p[90:300].sum(0)))
    assert np.array_equal(sums[0], sums[1])
    c = kernels.count_cumsum(counts)
    assert c.dtype == np.int64 and np.array_equal(c[90] - c[5], counts[5:90].sum(axis=0))


def test_ema_states_match_the_predictor(past):
    from models.baselines import ExponentialMovingAverage

    counts, p, steps = past
    origins = np.array([1, 3, 40, 299])
    got = kernels.ema_states(p, steps, origins, 0.97)
    for i, o in enumerate(origins):
        m = ExponentialMovingAverage(decay=0.97)
        m.start(3, 7)
        m.observe(counts[:o], steps[:o])
        assert np.array_equal(m.predict(1)[0], got[i] / got[i].sum(axis=-1, keepdims=True))
