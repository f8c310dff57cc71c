"""The coverage table docs/results.md shows (benchmarks/interval_coverage.py): recomputed for one trace."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("interval_coverage", REPO / "benchmarks" / "interval_coverage.py")
interval_coverage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(interval_coverage)


def test_the_docs_show_what_the_script_computes():
    shown = interval_coverage.shown_rows()
    assert {d for d, _ in shown} == set(interval_coverage.datasets())
    fresh = interval_coverage.rows("tiny-cpu-s1")
    assert [shown[("tiny-cpu-s1", r[1])] for r in fresh] == fresh, (
        "docs/results.md's coverage table is stale: run benchmarks/interval_coverage.py --write")
    sw_quantiles, dirmult, arima, lstm = fresh
    assert sw_quantiles[6] == "1.000"  # the reference scaled by itself
    assert float(dirmult[8]) > 1  # routing varies more than a multinomial of its slots would
    assert (arima[1], lstm[1]) == ("arima", "lstm")  # the models' own intervals
    # ARIMA and the LSTM on the costly subset, the window predictors everywhere
    assert {k for k in shown if k[1] in interval_coverage.COSTLY_MODELS} == {
        (d, m) for d in interval_coverage.COSTLY_DATASETS for m in interval_coverage.COSTLY_MODELS}
