"""docs/results.md's spread over seeds is what benchmarks/seed_paper.py --seeds computes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("seed_paper", REPO / "benchmarks" / "seed_paper.py")
seed_paper = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seed_paper)


def test_the_docs_show_the_spread_of_sw_avg_over_the_five_125m_seeds():
    seeds = [f"gpt3-125m-16e-top2-s{s}" for s in range(1, 6)]
    fresh = seed_paper.seed_rows(seeds, ["sw_avg"], "error_rate", track=False)
    from benchmarks.doc_tables import table_cells  # the script put the repository on sys.path

    shown = ["| " + " | ".join(cells) + " |" for cells in table_cells(seed_paper.RESULTS, "seeds")]
    assert fresh[0] in shown, "docs/results.md's seed table is stale: run benchmarks/seed_paper.py --seeds --write"
    assert fresh[-1] in shown  # the noise floor row
    assert fresh[0].startswith("| gpt3-125m-16e-top2 | 5 | sw_avg | ")


def test_spread_says_when_only_some_seeds_have_a_value():
    assert seed_paper.spread([0.1, 0.12, 0.14], 3) == "12.00 +- 2.00 (10.00-14.00)"
    assert seed_paper.spread([0.2], 3) == "20.00 +- 0.00 (20.00-20.00) [n=1]"
    assert seed_paper.spread([], 3) == "-"
