"""The per-source tables of docs/formats.md and docs/protocol.md are what benchmarks/source_traffic.py computes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("source_traffic", REPO / "benchmarks" / "source_traffic.py")
source_traffic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(source_traffic)

STALE = "run benchmarks/source_traffic.py --write"


def test_the_smartmoe_sources_table_is_what_the_script_computes(smartmoe):
    rows = source_traffic.source_rows()
    assert source_traffic.shown(source_traffic.FORMATS_DOC, "smartmoe-sources") == rows, STALE
    assert len(rows) == 16 and all(r[2] == "6.25%" for r in rows)  # every rank sends a sixteenth of the tokens


def test_the_per_source_scores_show_what_a_run_gives(smartmoe):
    shown = source_traffic.shown(source_traffic.PROTOCOL_DOC, "per-source-scores")
    assert [r[0] for r in shown] == list(source_traffic.MODELS)
    assert shown[0] == source_traffic.score_row("sw_avg"), STALE
