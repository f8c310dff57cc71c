"""The spread-vs-point placement table docs/placement.md shows (benchmarks/uncertain_placement.py): recomputed for
smartmoe-ae."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("uncertain_placement", REPO / "benchmarks" / "uncertain_placement.py")
uncertain_placement = importlib.util.module_from_spec(spec)
spec.loader.exec_module(uncertain_placement)


def test_the_docs_show_what_the_script_computes(smartmoe):
    shown = uncertain_placement.shown_rows()
    assert {d for d, _ in shown} == set(uncertain_placement.DATASETS) and len(shown) == 2 * len(
        uncertain_placement.DATASETS)
    for model in uncertain_placement.MODELS:
        fresh = uncertain_placement.row("smartmoe-ae", model)
        assert shown[("smartmoe-ae", model)] == fresh, (
            "docs/placement.md's spread table is stale: run benchmarks/uncertain_placement.py --write")
    # one point forecast for both quantile sources: the same point and oracle columns
    assert shown[("smartmoe-ae", "dirmult")][4:6] == shown[("smartmoe-ae", "sw_quantiles")][4:6]
