"""docs/tracer.md's H200 throughput table is what benchmarks/tracer_throughput.py renders from the saved runs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("tracer_throughput", REPO / "benchmarks" / "tracer_throughput.py")
tracer_throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tracer_throughput)


def test_the_docs_show_the_saved_h200_runs():
    saved = sorted((REPO / "benchmarks" / "results").glob("tracer_throughput_h200_*.json"))
    assert len(saved) == 2
    fresh = tracer_throughput.table(saved)
    sys.path.insert(0, str(REPO))
    from benchmarks.doc_tables import table_cells

    shown = ["| " + " | ".join(cells) + " |" for cells in table_cells(tracer_throughput.DOC, "tracer-throughput-h200")]
    assert shown == fresh.splitlines()[2:], "stale: run benchmarks/tracer_throughput.py --table ... --write"
    folded = [line for line in shown if "| folded |" in line]
    assert len(folded) == 2  # both presets measured with the clipping folded into the optimizer step
