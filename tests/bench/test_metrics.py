"""The harness's numbers against an independent computation straight from the protocol."""

import json

import numpy as np
import pytest

from bench.cli import main
from bench.metrics import forecast_errors, noise_floor


def protocol_sw_avg_error_rate(trace, horizon, stride=100, min_history=100, window=100):
    """error_rate of SW_Avg written from the protocol text, with plain loops."""
    steps, p = trace.steps, trace.proportions
    per_layer = {l: [] for l in range(trace.layers)}
    s = steps[0] + min_history
    while s <= steps[-1] - horizon:
        o = int(np.argmax(steps >= s))
        past = [t for t in range(o) if steps[t] > steps[o - 1] - window]
        est = p[past].mean(axis=0)
        targets = [t for t in range(o, len(steps)) if steps[t] < steps[o] + horizon]
        for l in range(trace.layers):
            per_layer[l].append(np.mean([np.abs(est[l] - p[t, l]).sum() for t in targets]))
        s += stride
    return float(np.mean([np.mean(v) for v in per_layer.values()]))


def test_sw_avg_run_matches_an_independent_protocol_computation(smartmoe, capsys):
    assert (
        main(
            [
                "run",
                "--model",
                "sw_avg",
                "--dataset",
                "smartmoe-ae",
                "--horizon",
                "1000",
                "--param",
                "window=100",
                "--json",
                "--no-track",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    got = result["horizons"]["1000"]["error_rate"]["all"]
    assert got == pytest.approx(protocol_sw_avg_error_rate(smartmoe, 1000), rel=1e-12)
    assert result["horizons"]["1000"]["n_origins"] == 40
    for key in ("error_rate", "window_error", "mape", "noise_floor"):
        assert set(result["horizons"]["1000"][key]) == {"all", "transient", "stable"}
    assert result["task_fingerprint"].startswith("task:")


def test_forecast_errors_by_definition():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=(7, 2))
    phat = rng.dirichlet(np.ones(5), size=(7, 2))
    m = forecast_errors(phat, p)
    for l in range(2):
        assert m["error_rate"][l] == pytest.approx(np.mean([np.sum(np.abs(phat[h, l] - p[h, l])) for h in range(7)]))
        assert m["window_error"][l] == pytest.approx(np.sum(np.abs(phat[:, l].mean(0) - p[:, l].mean(0))))
        assert m["mape"][l] == pytest.approx(np.mean(np.abs(phat[:, l] - p[:, l]) / np.maximum(p[:, l], 1 / 500)))


@pytest.mark.parametrize("n, E", [(200, 4), (4096, 16), (8192, 128)])
def test_noise_floor_matches_multinomial_sampling(n, E):
    rng = np.random.default_rng(E)
    q = rng.dirichlet(np.ones(E) * 2, size=1)
    x = rng.multinomial(n, q[0], size=100_000)
    mc = np.abs(x / n - q[0]).sum(axis=1).mean()
    assert noise_floor(q, np.array([n]))[0] == pytest.approx(mc, rel=0.01)


def lad_line_error(ts: np.ndarray, ys: np.ndarray) -> float:
    """sum_t |a + b t - y_t| at the best (a, b), by linear programming: min sum u+v, a + b t + u - v = y."""
    from scipy.optimize import linprog

    n = len(ys)
    t = (ts - ts.mean()) / max(ts.std(), 1.0)
    cost = np.r_[0.0, 0.0, np.ones(2 * n)]
    eq = np.hstack([np.ones((n, 1)), t[:, None], np.eye(n), -np.eye(n)])
    bounds = [(None, None), (None, None)] + [(0, None)] * (2 * n)
    return float(linprog(cost, A_eq=eq, b_eq=ys, bounds=bounds, method="highs").fun)


def test_the_hindsight_floor_matches_an_independent_loop(smartmoe, capsys):
    """The hindsight floor as the protocol defines it (the better of the best constant, the per-expert median, and
    the best straight line per expert, both chosen with the horizon known), recomputed with plain loops and exact
    linear programs on a sample of (origin, layer) cells of smartmoe-ae at 1k; the run's aggregate is the mean over
    origins, then layers, of its per-origin floors."""
    import pandas as pd

    from bench import runner

    assert main(["run", "--model", "sw_avg", "--dataset", "smartmoe-ae", "--horizon", "1000", "--json",
                 "--no-track"]) == 0
    result = json.loads(capsys.readouterr().out)
    frame = pd.read_parquet(runner.run_folder(result["run_key"]) / "origins.parquet")
    assert frame.groupby("layer").hindsight_floor.mean().mean() == pytest.approx(
        result["horizons"]["1000"]["hindsight_floor"]["all"], rel=1e-12)
    steps, p = smartmoe.steps, smartmoe.proportions
    cells = frame[(frame.origin_step % 800 == 101) & (frame.layer % 8 == 0)]  # 5 origins x 3 layers
    assert len(cells) == 15
    for row in cells.itertuples():
        o, n, l = row.origin, row.records, row.layer
        window, ts = p[o:o + n, l], steps[o:o + n].astype(float)
        constant = sum(np.abs(window[:, e] - np.median(window[:, e])).sum() for e in range(smartmoe.experts)) / n
        line = sum(lad_line_error(ts, window[:, e]) for e in range(smartmoe.experts)) / n
        assert row.hindsight_floor == pytest.approx(min(constant, line), rel=1e-3, abs=5e-4)


def test_contiguous_layout_and_its_crossing_pairs():
    from bench.metrics import crossing, expert_hosts

    assert expert_hosts(16, 32).tolist() == [e // 2 for e in range(32)]  # smartmoe-ae: experts 2r, 2r+1 on rank r
    assert expert_hosts(4, 6).tolist() == [0, 0, 1, 2, 2, 3]
    assert expert_hosts(4, 2).tolist() == [0, 2]  # fewer experts than sources: some sources host none
    cross = crossing(2, 4)
    assert cross.tolist() == [[False, False, True, True], [True, True, False, False]]


def test_source_errors_weigh_only_the_pairs_that_cross():
    from bench.metrics import crossing, remote_share, source_errors

    cross = crossing(2, 2)
    p = np.array([[[[0.4, 0.1], [0.2, 0.3]]]])  # [H=1, L=1, S=2, E=2]
    phat = np.array([[[[0.3, 0.2], [0.2, 0.3]]]])
    m = source_errors(phat, p, cross)
    assert m["traffic_error"].tolist() == pytest.approx([0.1])  # only (0, 1) differs among (0, 1), (1, 0)
    assert m["source_error"].tolist() == pytest.approx([0.2])
    assert remote_share(p, cross).tolist() == pytest.approx([0.3])  # 0.1 + 0.2
