"""bench.gps: the strategies judged online, the end-to-end model, and docs/gps.md kept in step."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from bench.gps import DISTRIBUTION, TOKEN, Judged, System, end_to_end, judge, recommend, score, sweep
from bench.metrics import forecast_errors

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gps_map", REPO / "benchmarks" / "gps_map.py")
gps_map = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gps_map)
SHIFT = "gpt3-125m-16e-serve-shift-b512"


@pytest.fixture(scope="module")
def judged():
    return judge(SHIFT)


def test_every_strategy_forecasts_every_judged_pass_from_the_past_only(judged):
    V, L, E = judged.actual.shape
    assert V >= 100 and set(judged.estimate) == set(DISTRIBUTION) | set(TOKEN) | {"oracle"}
    for est in judged.estimate.values():
        assert est.shape == (V, L, E) and np.allclose(est.sum(axis=2), 1)
    assert (judged.first_pass > 0).all() and (np.diff(judged.first_pass) > 0).all()
    # last: the forecast of a judged pass is the pass just before it, never the pass itself
    from datasets_registry import registry

    counts = registry.load(SHIFT).counts
    p_before = counts[judged.first_pass - 1] / counts[judged.first_pass - 1].sum(axis=2, keepdims=True)
    assert np.allclose(judged.estimate["last"], p_before)
    oracle = [forecast_errors(judged.estimate["oracle"][v][None], judged.estimate["oracle"][v][None])
              for v in range(V)]
    assert max(o["error_rate"].max() for o in oracle) == 0


def test_too_large_a_pool_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="no sampled pass to judge at pool 1000"):
        judge(SHIFT, pool=1000)


def test_token_figures_are_consistent(judged):
    rows = {r["strategy"]: r for r in score(judged)}
    for name in TOKEN:
        r = rows[name]
        assert 0 < r["exact"] <= r["f1"] <= r["elementwise"] <= 1 and r["critical_path"]
    assert not any(rows[n]["critical_path"] for n in DISTRIBUTION)
    assert rows["pre-gate"]["f1"] > rows["freq-token"]["f1"]


def test_end_to_end_adds_the_overhead_of_token_to_expert_only():
    V, L, E = 3, 1, 4
    actual = np.array([[[40.0, 10.0, 5.0, 5.0]]] * V)
    p = actual / actual.sum(axis=2, keepdims=True)
    uniform = np.full((V, L, E), 0.25)
    j = Judged("hand", 1, np.arange(1, V + 1), np.full(V, 30), actual,
               estimate={**{n: uniform for n in DISTRIBUTION}, **{n: p for n in TOKEN}, "oracle": p},
               overhead={**{n: np.full(V, 1e-3) for n in DISTRIBUTION}, **{n: np.full(V, 2e-6) for n in TOKEN},
                         "oracle": np.zeros(V)})
    times = end_to_end(j, System(gpus=4, expert="mixtral", interconnect="nvlink+ib"))
    assert times["oracle"] < times["none"] == pytest.approx(times["sw_avg"])  # a uniform forecast is no plan
    for n in TOKEN:
        assert times[n] - times[f"{n}@free"] == pytest.approx(2.0)  # 2 us on the critical path, nothing else
        assert times[f"{n}@free"] == pytest.approx(times["oracle"])
    rec = recommend(times)
    assert rec["winner"] == "token-to-expert" and rec["token_budget_us"] == pytest.approx(
        times["sw_avg"] - times["oracle"])
    assert rec["margin"] == pytest.approx(times["sw_avg"] / times[rec["token_to_expert"]] - 1)


def test_docs_show_what_the_script_computes(judged):
    """Errors, accuracy, budgets and winners (not the timings of this machine's CPU) match docs/gps.md."""
    shown = [r for r in gps_map.shown("gps-accuracy") if r[0] == "shift-b512 (1)"]
    made = [r for r in (line.strip().strip("|").split("|") for line in
                        gps_map.accuracy_table({(SHIFT, 1): judged}).splitlines()[2:])]
    made = [[c.strip() for c in r] for r in made]
    assert [r[:8] for r in shown] == [r[:8] for r in made], "docs/gps.md is stale: run benchmarks/gps_map.py --write"
    column = sweep(judged)  # the map's first column: shift-b512 at pool 1
    shown_map = gps_map.shown("gps-map")
    assert len(shown_map) == len(column) >= 12
    for row, s in zip(shown_map, column):
        assert [int(row[0]), row[1], row[2]] == [s["gpus"], s["expert"], s["interconnect"]]
        letter, budget = row[3].split(" ")[0], row[3].rsplit("(", 1)[1]
        assert letter == ("D" if s["winner"] == "distribution-only" else "T")
        assert budget == f"{s['token_budget_us']:.0f} us)"


def test_the_prose_quotes_the_largest_overhead_budget_of_the_map():
    import re

    budgets = [int(cell.rsplit("(", 1)[1].split()[0]) for row in gps_map.shown("gps-map") for cell in row[3:]]
    quoted = f"0-{max(budgets)} us"
    assert quoted in gps_map.DOC.read_text().replace("\n", " ")
    assert quoted in re.sub(r"\s+", " ", (REPO / "README.md").read_text())
