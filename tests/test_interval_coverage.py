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
    fresh = interval_coverage.rows("tiny-cpu-s1")
    assert [shown[("tiny-cpu-s1", r[1])] for r in fresh] == fresh, (
        "docs/results.md's coverage table is stale: run benchmarks/interval_coverage.py --write")
    sw_quantiles, dirmult, arima, lstm = fresh
    assert sw_quantiles[6] == "1.000"  # the reference scaled by itself
    assert float(dirmult[8]) > 1  # routing varies more than a multinomial of its slots would
    assert (arima[1], lstm[1]) == ("arima", "lstm")  # the models' own intervals
    # every predictor on every trace
    assert set(shown) == {(d, m) for d in interval_coverage.datasets() for m in interval_coverage.MODELS}


def test_some_rows_recomputed_leave_the_others_as_shown(capsys):
    """`--dataset X --model M` recomputes those rows only; the table it prints keeps every other row of the doc."""
    assert interval_coverage.main(["--dataset", "tiny-cpu-s1", "--model", "sw_quantiles"]) == 0
    printed = capsys.readouterr().out
    body = [line for line in printed.splitlines() if line.startswith("| `")]
    shown = interval_coverage.shown_rows()
    assert len(body) == len(shown) and body == [line for line in interval_coverage.table(list(shown.values()))
                                                 .splitlines() if line.startswith("| `")]
