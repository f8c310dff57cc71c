"""The hindsight floors against brute force, exact linear programs, and every constant forecast."""

import itertools
import tracemalloc

import numpy as np
import pytest

from bench.evaluate import evaluate
from bench.fairplay import run_scores
from bench.hindsight import (
    constant_floor,
    constant_mape_floor,
    floors_at_origins,
    lad_lines,
    line_floor,
)
from bench.metrics import forecast_errors
from bench.task import Task, rolling_origins
from datasets_registry import registry
from models.baselines import SlidingWindowAverage

#: Stated tolerance of the IRLS line floor against an exact L1 fit, relative per layer.
LINE_RTOL = 1e-4


def random_window(n, layers, experts, seed, ties=False):
    rng = np.random.default_rng(seed)
    if ties:  # few tokens a step: many equal shares, as in real traces
        counts = rng.multinomial(40, np.ones(experts) / experts, size=(n, layers))
        return counts / 40.0
    drift = np.linspace(0, 1, n)[:, None, None] * rng.normal(0, 0.5, (1, layers, experts))
    logits = drift + rng.normal(0, 0.3, (n, layers, experts))
    return np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)


def brute_constant(p, weights=None):
    """min over c of sum_h w |c - p_h| per series, trying every value in the data (the optimum is one)."""
    n, L, E = p.shape
    w = np.ones_like(p) if weights is None else weights
    out = np.zeros((L, E))
    for l, e in itertools.product(range(L), range(E)):
        y, ww = p[:, l, e], w[:, l, e]
        out[l, e] = min((ww * np.abs(c - y)).sum() for c in y)
    return out


def brute_line(y, t):
    """The exact LAD line's sum of |residual|: some optimal line passes through two data points."""
    best = np.abs(y - np.median(y)).sum()
    for i, j in itertools.combinations(range(len(y)), 2):
        if t[i] != t[j]:
            slope = (y[j] - y[i]) / (t[j] - t[i])
            best = min(best, np.abs(y - y[i] - slope * (t - t[i])).sum())
    return best


def lp_line(y, t):
    """The exact LAD line's sum of |residual| by linear programming (scipy's HiGHS)."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, hstack, identity, vstack

    n = len(y)
    tau = (t - t.mean()) / np.abs(t - t.mean()).max()
    fit = csr_matrix(np.stack([np.ones(n), tau], axis=1))
    eye = identity(n, format="csr")
    a_ub = vstack([hstack([-fit, -eye]), hstack([fit, -eye])])
    res = linprog(np.r_[0.0, 0.0, np.ones(n)], A_ub=a_ub, b_ub=np.r_[-y, y],
                  bounds=[(None, None)] * 2 + [(0, None)] * n, method="highs")
    assert res.status == 0
    return res.fun


@pytest.mark.parametrize("seed, ties", [(0, False), (1, False), (2, True)])
def test_constant_floors_match_brute_force(seed, ties):
    p = random_window(15, 2, 5, seed, ties)
    assert constant_floor(p) == pytest.approx(brute_constant(p).sum(axis=1) / 15, rel=1e-12)
    weights = 1.0 / np.maximum(p, 1.0 / (100 * 5))
    assert constant_mape_floor(p) == pytest.approx(brute_constant(p, weights).sum(axis=1) / (15 * 5), rel=1e-12)


def test_constant_floors_match_brute_force_on_a_real_slice(smartmoe):
    p = smartmoe.proportions[200:230, :3]
    assert constant_floor(p) == pytest.approx(brute_constant(p).sum(axis=1) / 30, rel=1e-12)
    # the mape floor is what mape gives the weighted-median constant, and no other constant does better
    weights = 1.0 / np.maximum(p, 1.0 / (100 * p.shape[2]))
    exact = brute_constant(p, weights).sum(axis=1) / (30 * p.shape[2])
    assert constant_mape_floor(p) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("seed, ties", [(3, False), (4, True)])
def test_line_floor_matches_brute_force_over_point_pairs(seed, ties):
    p = random_window(14, 2, 4, seed, ties)
    steps = np.arange(100, 100 + 14 * 7, 7)
    exact = np.array([[brute_line(p[:, l, e], steps.astype(float)) for e in range(4)] for l in range(2)])
    got = line_floor(p, steps)
    assert np.all(got >= exact.sum(axis=1) / 14 - 1e-12)  # the error of a real line: never below the optimum
    assert got == pytest.approx(exact.sum(axis=1) / 14, rel=LINE_RTOL)


@pytest.mark.parametrize("dataset, start, records, layer", [
    ("smartmoe-ae", 150, 100, 0), ("smartmoe-ae", 40, 200, 11),
    ("gpt3-125m-16e-top2-s2", 3000, 1000, 2),
])
def test_line_floor_is_within_tolerance_of_exact_lp_fits(dataset, start, records, layer, smartmoe):
    trace = smartmoe if dataset == "smartmoe-ae" else registry.load(dataset)
    p = trace.proportions[start : start + records, layer : layer + 1]
    steps = trace.steps[start : start + records]
    experts = range(0, p.shape[2], 2)  # half the experts keep the LPs quick
    p = p[:, :, list(experts)]
    exact = sum(lp_line(p[:, 0, e], steps.astype(float)) for e in range(p.shape[2])) / records
    got = line_floor(p, steps)[0]
    assert exact - 1e-9 <= got <= exact * (1 + LINE_RTOL)
    totals, intercepts, slopes = lad_lines(p[:, 0].T, steps)  # the lines score what they report
    resid = p[:, 0].T - intercepts[:, None] - slopes[:, None] * steps[None, :]
    assert np.abs(resid).sum(axis=1) == pytest.approx(totals, rel=1e-9)


def test_the_line_floor_never_exceeds_the_constant_floor():
    for seed in range(5):
        p = random_window(40, 3, 6, seed, ties=seed % 2 == 1)
        assert np.all(line_floor(p, np.arange(40)) <= constant_floor(p) + 1e-15)


def test_a_drifting_load_has_a_line_floor_far_below_the_constant_one():
    t = np.arange(200)
    share = 0.2 + 0.3 * t / 200  # a straight drift of one expert against another
    p = np.stack([share, 1 - share], axis=1)[:, None, :]
    assert line_floor(p, t)[0] < 1e-6 < 0.1 < constant_floor(p)[0]


@pytest.fixture(scope="module")
def smartmoe_floors(smartmoe):
    return floors_at_origins(smartmoe.proportions, smartmoe.steps, Task("smartmoe-ae"), mape=True)


def test_floors_at_origins_are_the_window_floors_at_each_origin(smartmoe, smartmoe_floors):
    origins = rolling_origins(smartmoe.steps, Task("smartmoe-ae"))
    for H, o in origins.items():
        f = smartmoe_floors[H]
        assert np.array_equal(f.origins, o.records) and np.array_equal(f.origin_steps, smartmoe.steps[o.records])
        for i in (0, len(o.records) // 2, len(o.records) - 1):
            rec, n = o.records[i], o.lengths[i]
            window = smartmoe.proportions[rec : rec + n]
            assert f.constant[i] == pytest.approx(constant_floor(window), rel=1e-12)
            assert f.constant_mape[i] == pytest.approx(constant_mape_floor(window), rel=1e-12)
            assert f.line[i] == pytest.approx(line_floor(window, smartmoe.steps[rec : rec + n]), rel=1e-9)
        assert np.array_equal(f.hindsight, np.minimum(f.constant, f.line))


def test_no_constant_forecast_beats_the_constant_floor(smartmoe, smartmoe_floors):
    task = Task("smartmoe-ae", horizons=(1000,))
    steps, errors, _ = run_scores(evaluate(smartmoe, SlidingWindowAverage(), task), 1000)
    floors = smartmoe_floors[1000]
    assert np.all(errors >= floors.constant[floors.rows_for(steps)] - 1e-12)
    rng = np.random.default_rng(0)
    o = rolling_origins(smartmoe.steps, task)[1000]
    for i in rng.choice(len(o.records), 5, replace=False):
        truth = smartmoe.proportions[o.records[i] : o.records[i] + o.lengths[i]]
        candidates = [truth.mean(axis=0), np.median(truth, axis=0), *rng.dirichlet(np.ones(32), size=(3, 24))]
        for c in candidates:
            m = forecast_errors(np.broadcast_to(c, truth.shape), truth)
            assert np.all(m["error_rate"] >= floors.constant[i] - 1e-12)
            assert np.all(m["mape"] >= floors.constant_mape[i] - 1e-12)


def mean_constant_error(trace, H):
    """error_rate of the horizon's true mean as a constant forecast, mean over origins then layers."""
    o = rolling_origins(trace.steps, Task(trace.id, horizons=(H,)))[H]
    per_origin = [forecast_errors(np.broadcast_to(w.mean(axis=0), w.shape), w)["error_rate"]
                  for w in (trace.proportions[r : r + n] for r, n in zip(o.records, o.lengths))]
    return float(np.mean(per_origin, axis=0).mean())


@pytest.mark.parametrize("dataset, expected", [
    ("smartmoe-ae", 0.063), ("gpt3-125m-16e-top2-s2", 0.151), ("gpt3-350m-128e-top2-s2", 0.305),
])
def test_constant_floor_on_real_traces_at_1k(dataset, expected, smartmoe):
    """Near the figures measured before (the horizon mean's error), and below that error: the median is better."""
    trace = smartmoe if dataset == "smartmoe-ae" else registry.load(dataset)
    o = rolling_origins(trace.steps, Task(dataset, horizons=(1000,)))[1000]
    floor = np.mean([constant_floor(trace.proportions[r : r + n]) for r, n in zip(o.records, o.lengths)], axis=0).mean()
    assert floor == pytest.approx(expected, abs=0.005)
    assert floor < mean_constant_error(trace, 1000)


def test_memory_does_not_grow_with_the_trace():
    def peak(records):
        rng = np.random.default_rng(0)
        p = rng.dirichlet(np.ones(8), size=(records, 2))
        tracemalloc.start()
        floors_at_origins(p, np.arange(records), Task("synthetic", horizons=(500,), stride=500))
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top

    assert peak(16_000) < 1.5 * peak(4_000)


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match=r"p\[n, L, E\]"):
        constant_floor(np.ones((3, 4)))
    with pytest.raises(ValueError, match="steps has shape"):
        line_floor(np.full((5, 1, 2), 0.5), np.arange(4))
    with pytest.raises(ValueError, match="to match steps"):
        floors_at_origins(np.full((5, 1, 2), 0.5), np.arange(6), Task("x"))


def test_rows_for_finds_origins_and_refuses_others(smartmoe_floors):
    f = smartmoe_floors[1000]
    picked = f.origin_steps[[0, 3, 7]]
    assert np.array_equal(f.rows_for(picked), [0, 3, 7])
    with pytest.raises(ValueError, match="not origins of horizon 1000"):
        f.rows_for([f.origin_steps[0] + 1])
