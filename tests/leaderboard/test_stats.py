"""Headroom skill, bootstrap intervals and ties on the leaderboard, checked against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from leaderboard import build, stats

from .conftest import MODELS, SECOND


def board_of(runs_2x2, extra=()):
    results = [r for r in runs_2x2.values()] + [r for r, _ in extra]
    origins = {r.run_key: r.to_frame(per_origin=True) for r in runs_2x2.values()}
    origins.update({r.run_key: frame for r, frame in extra})
    return build.build(results, origins)


def scaled(result, frame, factor: float, name: str):
    """A copy of a run whose errors are `factor` times the original's (a made-up model, for the statistics)."""
    frame = frame.copy()
    frame["error_rate"] *= factor
    frame["window_error"] *= factor
    horizons = {}
    for H, h in result.horizons.items():
        metrics = dict(h.metrics)
        for m in ("error_rate", "window_error"):
            by = metrics[m]
            metrics[m] = type(by)(*(None if v is None else v * factor for v in (by.all, by.transient, by.stable)))
        per_layer = {m: {s: tuple(None if v is None else v * factor for v in vals) for s, vals in by.items()}
                     for m, by in h.per_layer.items()}
        horizons[H] = h.replace(metrics=metrics, per_layer=per_layer)
    return result.replace(model=name, run_key=f"{name}-{result.run_key}", horizons=horizons), frame


def shuffled(result, frame, name: str):
    """A run with the same errors at shuffled origins: the same means, other per-origin values (a tie)."""
    frame = frame.copy()
    rng = np.random.default_rng(0)
    for H in frame["horizon"].unique():
        at = frame["horizon"] == H
        steps = np.sort(frame.loc[at, "origin_step"].unique())
        moved = dict(zip(steps, rng.permutation(steps)))
        frame.loc[at, "origin_step"] = frame.loc[at, "origin_step"].map(moved)
    return scaled(result, frame, 1.0, name)


def test_headroom_skill_is_the_clipped_geometric_mean_of_remaining_gaps(runs_2x2):
    board = board_of(runs_2x2)
    for entry in board["ranking"]:
        logs = []
        for ds in ("smartmoe-ae", SECOND):
            mine, base = runs_2x2[(entry["model"], ds)], runs_2x2[("sw_avg", ds)]
            for H in mine.horizons:
                e, b, o = (mine.value(H, "error_rate"), base.value(H, "error_rate"),
                           mine.value(H, "hindsight_floor"))
                logs.append(math.log(min(max((e - o) / (b - o), 1e-3), 5.0)))
        assert entry["headroom_skill"]["value"] == pytest.approx(1 - math.exp(sum(logs) / len(logs)), abs=1e-12)
    base = next(e for e in board["ranking"] if e["model"] == "sw_avg")
    assert base["headroom_skill"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert base["headroom_skill"]["ci"] == pytest.approx([0.0, 0.0], abs=1e-12)


def test_intervals_contain_the_estimate_and_the_board_is_deterministic(runs_2x2):
    first, second = board_of(runs_2x2), board_of(runs_2x2)
    assert first["ranking"] == second["ranking"] and first["tables"] == second["tables"]
    for entry in first["ranking"]:
        for key in ("headroom_skill", "window_skill"):
            lo, hi = entry[key]["ci"]
            assert lo - 1e-12 <= entry[key]["value"] <= hi + 1e-12
    with_spread = [t for t in first["tables"] if t["rows"][0]["error_rate_ci"] is not None]
    assert with_spread  # a table whose origins one resampled block spans has none (test_a_cell_without_spread_...)
    for table in with_spread:
        for row in table["rows"]:
            lo, hi = row["error_rate_ci"]
            assert lo - 1e-12 <= row["error_rate"]["all"] <= hi + 1e-12
            if row["model"] == "sw_avg":
                assert row["vs_baseline"]["tie"] and row["vs_baseline"]["difference"] == 0


def test_a_clearly_better_model_wins_and_a_twin_ties(runs_2x2):
    extra = []
    for ds in ("smartmoe-ae", SECOND):
        r = runs_2x2[("sw_avg", ds)]
        frame = r.to_frame(per_origin=True)
        extra.append(scaled(r, frame, 0.5, "better"))
        extra.append(shuffled(r, frame, "twin"))
    board = board_of(runs_2x2, extra)
    by = {e["model"]: e for e in board["ranking"]}
    assert board["ranking"][0]["model"] == "better"
    n_models = len(MODELS) + 2
    assert by["better"]["win_rate"] == pytest.approx(1.0)
    for table in board["tables"]:
        rows = {r["model"]: r for r in table["rows"]}
        ci = rows["better"]["vs_baseline"]["ci"]
        assert not rows["better"]["vs_baseline"]["tie"] and (ci is None or ci[1] < 0)
        assert rows["twin"]["vs_baseline"]["tie"]
    assert by["twin"]["cells"] == len(board["tables"]) and len(board["ranking"]) == n_models


def test_a_model_without_per_origin_rows_is_ranked_without_intervals(runs_2x2):
    results = list(runs_2x2.values())
    origins = {r.run_key: r.to_frame(per_origin=True) for r in results if r.model != "ema"}
    board = build.build(results, origins)
    ema = next(e for e in board["ranking"] if e["model"] == "ema")
    assert ema["headroom_skill"]["value"] is not None and ema["headroom_skill"]["ci"] is None
    assert all(r["error_rate_ci"] is None for t in board["tables"] for r in t["rows"] if r["model"] == "ema")


def test_clipping_keeps_a_tiny_gap_from_dominating():
    assert stats.clipped_log_ratio(1.0, 1e-9) == pytest.approx(math.log(stats.CLIP_HIGH))
    assert stats.clipped_log_ratio(-0.2, 1.0) == pytest.approx(math.log(stats.CLIP_LOW))
    assert np.isnan(stats.clipped_log_ratio(1.0, 0.0))
    assert stats.skill_of([math.log(0.5), math.log(2.0)]) == pytest.approx(0.0)


def test_a_cell_without_spread_has_no_interval_of_its_own_but_counts_in_the_aggregates():
    """Where one resampled block spans every origin, each resample is the whole sample: a per-table interval
    would have width 0, so there is none; the cell still enters the ranking's intervals at its value."""
    import pandas as pd

    def frame(values):
        return pd.DataFrame({"horizon": 1000, "origin_step": np.repeat(np.arange(len(values)) * 100, 2),
                             "layer": np.tile([0, 1], len(values)), "error_rate": np.repeat(values, 2),
                             "window_error": np.repeat(values, 2)})

    short = {"a": frame(np.linspace(0.1, 0.2, 10)), "b": frame(np.linspace(0.2, 0.3, 10))}
    wiggle = 0.01 * np.sin(np.arange(11))
    longer = {"a": frame(np.linspace(0.1, 0.2, 11)), "b": frame(np.linspace(0.2, 0.3, 11) + wiggle)}
    none = stats.sample_cell(short, 1000, 100, ("t",))  # 10 origins, blocks of 10
    some = stats.sample_cell(longer, 1000, 100, ("t",))
    assert not none.spread and none.cell_interval(none.difference("a", "b")) is None
    assert np.ptp(none.difference("a", "b")) < 1e-12  # what the interval would have been: one point
    lo, hi = some.cell_interval(some.difference("a", "b"))
    assert some.spread and lo < hi < 0
