"""The probabilistic predictors (models/probabilistic.py): their quantiles, the Dirichlet-multinomial's fit,
and its calibration on SYNTHETIC traces whose noise is known."""

import numpy as np
import pytest

from bench.evaluate import check_quantiles, evaluate
from bench.task import Task
from datasets_registry.trace import Card, ModelInfo, Trace
from models import predictor_class
from models.base import QUANTILE_LEVELS
from models.baselines import SlidingWindowAverage
from models.probabilistic import (
    DirichletMultinomial,
    DirichletMultinomialFit,
    SlidingWindowQuantiles,
    fit_dirichlet_multinomial,
    window_quantiles,
)


def synthetic_trace(records: int, slots: int, concentration: float | None, layers: int = 2, experts: int = 16,
                    seed: int = 0) -> Trace:
    """SYNTHETIC (not real data): fixed shares per layer; each record routes `slots` slots multinomially over
    shares drawn from Dirichlet(concentration * shares), or over the shares themselves when `concentration` is None."""
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(experts, 3.0), size=layers)
    counts = np.empty((records, layers, experts), dtype=np.int64)
    for t in range(records):
        for l in range(layers):
            pi = shares[l] if concentration is None else rng.dirichlet(concentration * shares[l])
            counts[t, l] = rng.multinomial(slots, pi)
    card = Card(id=f"synthetic-dirmult-{seed}", title="SYNTHETIC test trace (not real data)",
                source={"command": "tests/models/test_probabilistic.py", "synthetic": True}, licence="n/a",
                model=ModelInfo(moe_layers=layers, experts=experts, top_k=2, tokens_per_step=slots // 2),
                extra={"synthetic": True, "concentration": concentration})
    return Trace.from_arrays(counts, np.arange(records), card, source="<synthetic>")


def shown(pred, trace: Trace, records: int):
    pred.start(trace.layers, trace.experts)
    pred.observe(trace.counts[:records].copy(), trace.steps[:records].copy())
    return pred


@pytest.fixture(scope="module")
def noisy():
    return synthetic_trace(400, slots=4096, concentration=200.0, seed=1)


@pytest.mark.parametrize("cls", [SlidingWindowQuantiles, DirichletMultinomial])
def test_quantiles_are_valid_and_the_point_forecast_is_sw_avg(cls, noisy):
    pred = shown(cls(), noisy, 300)
    assert pred.probabilistic and not SlidingWindowAverage().probabilistic
    q = pred.forecast_quantiles(noisy.steps[300:305])
    check_quantiles(q, 5, noisy.layers, noisy.experts)  # raises if not
    assert np.diff(q, axis=-1).min() >= 0 and np.ptp(q[0, 0, 0]) > 0
    np.testing.assert_array_equal(pred.predict(5), shown(SlidingWindowAverage(), noisy, 300).predict(5))
    assert predictor_class(cls.name) is cls


def test_sw_quantiles_are_the_windows_empirical_quantiles(noisy):
    q = shown(SlidingWindowQuantiles(window=50), noisy, 300).predict_quantiles(1)[0]
    window = noisy.proportions[250:300]
    for level_index, level in enumerate(QUANTILE_LEVELS):
        np.testing.assert_allclose(q[..., level_index], np.quantile(window, level, axis=0))
    assert window_quantiles(window).shape == (noisy.layers, noisy.experts, len(QUANTILE_LEVELS))


def test_the_fit_recovers_a_known_concentration_and_a_multinomial_has_none():
    over = fit_dirichlet_multinomial(synthetic_trace(1500, 8192, concentration=300.0, seed=2).counts)
    np.testing.assert_allclose(over.concentration, 300.0, rtol=0.1)
    np.testing.assert_allclose(over.overdispersion, 1 + 8191 / 301, rtol=0.1)  # 28x the multinomial's variance
    np.testing.assert_allclose(over.effective_slots, 8192 / over.overdispersion)
    plain = fit_dirichlet_multinomial(synthetic_trace(1500, 8192, concentration=None, seed=3).counts)
    assert (plain.overdispersion < 1.1).all() and (plain.concentration > 1e4).all()


def test_the_beta_matched_quantiles_follow_the_exact_beta_binomial():
    """The predictive marginal of one expert's count is beta-binomial; the quantiles use the Beta of its mean and
    variance. Against scipy's exact beta-binomial they are within one routed slot (with more slots than
    LATTICE_SLOTS, below which they are the exact ones)."""
    from scipy.stats import betabinom

    from models.probabilistic import LATTICE_SLOTS

    slots, alpha, share = 2 * LATTICE_SLOTS, 50.0, np.array([0.02, 0.1, 0.3, 0.58])
    fit = DirichletMultinomialFit(share[None, :], np.array([1 / (alpha + 1)]), np.array([float(slots)]), 10**9)
    approx = fit.quantiles()[0] * slots
    exact = betabinom.ppf(np.asarray(QUANTILE_LEVELS)[None, :], slots, alpha * share[:, None],
                          alpha * (1 - share[:, None]))
    assert np.abs(approx - exact).max() <= 1.0


def test_with_few_slots_the_quantiles_are_the_exact_beta_binomials_on_the_lattice():
    from scipy.stats import betabinom

    slots, alpha, share = 32, 50.0, np.array([0.02, 0.1, 0.3, 0.58])
    fit = DirichletMultinomialFit(share[None, :], np.array([1 / (alpha + 1)]), np.array([float(slots)]), 10**9)
    q = fit.quantiles()[0] * slots
    exact = betabinom.ppf(np.asarray(QUANTILE_LEVELS)[None, :], slots, alpha * share[:, None],
                          alpha * (1 - share[:, None]))
    np.testing.assert_allclose(q, exact, atol=1e-9)  # whole routed slots


def test_on_few_slots_the_lattice_quantiles_cover_at_least_their_level(monkeypatch):
    """SYNTHETIC: 32 routed slots a record (a serving step of 16 tokens, top-2). A share is k/32, so the Beta's
    continuous quantiles fall between the values a record can take and their intervals cover less than their level;
    the lattice quantiles cover at least it (a discrete distribution's central interval with inclusive ends)."""
    import models.probabilistic

    trace = synthetic_trace(600, slots=32, concentration=200.0, seed=5)
    task = Task("synthetic", horizons=(100,), stride=50, min_history=100)

    def coverage():
        frame = evaluate(trace, DirichletMultinomial(), task).frame()
        return frame["coverage_80"].mean(), frame["coverage_90"].mean()

    lattice = coverage()
    monkeypatch.setattr(models.probabilistic, "LATTICE_SLOTS", 0)
    beta = coverage()
    assert lattice[0] >= 0.79 and lattice[1] >= 0.89
    assert beta[1] < lattice[1] - 0.02


def test_more_routed_slots_narrow_the_interval_down_to_the_dirichlet_spread():
    fit = DirichletMultinomialFit(np.full((1, 4), 0.25), np.array([0.0]), np.array([1000.0]), 100)
    width = {n: np.ptp(fit.quantiles((0.05, 0.95), slots=np.array([n]))[0, 0]) for n in (1000.0, 100000.0)}
    assert width[100000.0] < width[1000.0] / 5  # a multinomial: the spread shrinks as one over sqrt(N)
    from scipy.stats import beta

    alpha = 99.0  # rho = 0.01: with many slots, a record's shares vary as the Dirichlet's draws do
    spread = DirichletMultinomialFit(np.full((1, 4), 0.25), np.array([1 / (alpha + 1)]), np.array([1000.0]), 10**9)
    dirichlet = np.ptp(beta.ppf([0.05, 0.95], alpha * 0.25, alpha * 0.75))
    assert np.ptp(spread.quantiles((0.05, 0.95), slots=np.array([1e7]))[0, 0]) == pytest.approx(dirichlet, rel=1e-3)


@pytest.mark.parametrize("concentration", [None, 200.0], ids=["multinomial", "dirichlet-multinomial"])
def test_the_dirichlet_multinomials_90_percent_interval_covers_90_percent_of_steps(concentration):
    """The calibration test: on a SYNTHETIC trace whose noise is known (multinomial, and multinomial over
    Dirichlet draws), the fitted model's 90% interval covers 90% +- 2% of the (step, expert) shares, and the 80%
    interval 80% +- 2%."""
    trace = synthetic_trace(1200, slots=8192, concentration=concentration, seed=4)
    ev = evaluate(trace, DirichletMultinomial(), Task("synthetic", horizons=(100,), stride=50, min_history=100))
    frame = ev.frame()
    assert not ev.failures and len(frame) > 30
    assert frame["coverage_90"].mean() == pytest.approx(0.90, abs=0.02)
    assert frame["coverage_80"].mean() == pytest.approx(0.80, abs=0.02)


def test_a_run_reports_coverage_by_state_in_json_and_mlflow(bench_run):
    result, mlflow_run, _, _ = bench_run("--model", "dirmult", "--dataset", "tiny-cpu-s1", "--horizon", "1000")
    h = result["horizons"]["1000"]
    for metric in ("quantile_loss", "coverage_80", "coverage_90", "width_90", "scaled_quantile_loss"):
        assert set(h[metric]) == {"all", "transient", "stable"}
        assert mlflow_run.data.metrics[f"h1000/{metric}/all"] == pytest.approx(h[metric]["all"])
    assert 0 < h["coverage_80"]["all"] < h["coverage_90"]["all"] <= 1
    assert h["scaled_quantile_loss"]["all"] == pytest.approx(
        h["quantile_loss"]["all"] / h["reference_quantile_loss"]["all"])
