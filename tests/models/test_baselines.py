import numpy as np
import pytest

from models import ParamError, predictor_class
from models.baselines import ExponentialMovingAverage, SlidingWindowAverage, SlidingWindowSum, StaticShare


def feed(pred, counts, steps, chunks=3):
    pred.start(counts.shape[1], counts.shape[2])
    for part_c, part_s in zip(np.array_split(counts, chunks), np.array_split(steps, chunks)):
        pred.observe(part_c, part_s)
    return pred


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 1000, (60, 3, 5))
    steps = np.arange(60) * 10 + 1
    return counts, steps, counts / counts.sum(axis=2, keepdims=True)


def test_sw_avg_averages_the_last_window_of_iterations(data):
    counts, steps, p = data
    phat = feed(SlidingWindowAverage(window=100), counts, steps).predict(4)
    assert phat.shape == (4, 3, 5)
    np.testing.assert_allclose(phat[0], p[-10:].mean(axis=0))  # 100 iterations = 10 records here
    np.testing.assert_allclose(phat[3], phat[0])


def test_ema_decays_per_iteration_not_per_record(data):
    counts, steps, p = data
    phat = feed(ExponentialMovingAverage(decay=0.9), counts, steps).predict(1)[0]
    a = 0.9 ** 10
    s = p[0].copy()
    for t in range(1, len(p)):
        s = a * s + (1 - a) * p[t]
    np.testing.assert_allclose(phat, s / s.sum(axis=-1, keepdims=True))


def test_static_is_the_mean_share_of_all_history(data):
    counts, steps, p = data
    np.testing.assert_allclose(feed(StaticShare(), counts, steps).predict(2)[1], p.mean(axis=0))


def test_sw_sum_weights_by_tokens_and_rebalances_on_schedule(data):
    counts, steps, p = data
    pred = feed(SlidingWindowSum(window=100), counts, steps)
    tot = counts[-10:].sum(axis=0)
    np.testing.assert_allclose(pred.predict(1)[0], tot / tot.sum(axis=-1, keepdims=True))
    slow = SlidingWindowSum(window=100, rebalance_every=1000)
    slow.start(3, 5)
    slow.observe(counts[:30], steps[:30])
    first = slow.predict(1)[0].copy()
    slow.observe(counts[30:40], steps[30:40])  # 100 iterations later: not yet rebalanced
    np.testing.assert_array_equal(slow.predict(1)[0], first)


def test_params_are_checked_and_coerced():
    assert SlidingWindowAverage(window="200").params["window"] == 200
    with pytest.raises(ParamError, match="unknown parameter"):
        SlidingWindowAverage(windw=3)
    with pytest.raises(ParamError, match="must be of type int"):
        SlidingWindowAverage(window="abc")


def test_registry_finds_builtins_and_files(tmp_path):
    assert predictor_class("sw_avg") is SlidingWindowAverage
    (tmp_path / "mine.py").write_text(
        "from models.base import Predictor\n"
        "class Uniform(Predictor):\n"
        "    name = 'uniform'\n"
        "    def predict(self, horizon):\n"
        "        import numpy as np\n"
        "        return np.full((horizon, self.history.layers, self.history.experts), 1 / self.history.experts)\n"
    )
    cls = predictor_class(f"{tmp_path / 'mine.py'}:Uniform")
    assert cls.name == "uniform"
    with pytest.raises(LookupError, match="unknown model"):
        predictor_class("nonsense")
