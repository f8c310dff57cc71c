"""docs/locality.md shows what benchmarks/locality.py computes from the committed CPU traces of the five routers
(hash at top-1 and top-2, LocMoE at three locality-loss weights)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("locality", REPO / "benchmarks" / "locality.py")
locality = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = locality  # its dataclass looks its module up
spec.loader.exec_module(locality)

RUNS = sorted((REPO / "benchmarks" / "results" / "locality" / "tiny-cpu").iterdir())


def block(name: str) -> str:
    text = locality.DOC.read_text()
    start = f"<!-- table: {name} -->\n"
    return text[text.index(start) + len(start) : text.index("<!-- /table -->", text.index(start))]


def test_the_doc_tables_are_the_scripts_output():
    runs = [locality.load_run(f) for f in RUNS]
    assert sorted((r.router, r.top_k) for r in runs) == sorted(
        [("hash", 2), ("hash", 1), ("switch", 1), ("softmax-topk", 2), ("locmoe", 1), ("locmoe", 1), ("locmoe", 1),
         ("node-limited", 2)])
    result = locality.analyse(runs)
    assert result["preset"] == "tiny-cpu"
    for name, text in locality.tables(result).items():
        assert block(f"tiny-cpu-{name}") == text, name


def test_a_stronger_locality_loss_keeps_more_traffic_in_its_node():
    rows = {r["label"]: r for r in locality.analyse([locality.load_run(f) for f in RUNS])["rows"]}
    shares = [rows[k]["internode"][0] for k in ("locmoe top-1", "locmoe top-1, mu=0.1", "locmoe top-1, mu=1")]
    assert shares[0] > shares[1] > shares[2]


def test_node_limited_routing_halves_what_a_relayed_dispatch_sends_between_nodes():
    """With M = 1 a token's two experts share a node: relayed, the network carries one copy per token."""
    result = locality.analyse([locality.load_run(f) for f in RUNS])
    nl = next(r for r in result["rows"] if r["router"] == "node-limited")
    assert nl["internode_relayed"] == pytest.approx(nl["internode"][0] / 2, rel=0.02)
    top2 = next(r for r in result["rows"] if r["router"] == "softmax-topk")
    assert top2["internode_relayed"] > nl["internode_relayed"]


def test_runs_without_per_source_loads_are_refused(tmp_path):
    import dataclasses

    from datasets_registry import storage
    from datasets_registry.trace import Trace

    plain = storage.load(RUNS[0])
    card = dataclasses.replace(plain.card, extra={})
    storage.save(Trace.from_arrays(plain.counts, plain.steps, card), tmp_path / "t")
    with pytest.raises(SystemExit, match="no per-source loads"):
        locality.load_run(tmp_path / "t")


def test_the_gpu_preset_tables_are_the_saved_figures():
    """The gpt3-125m-16e traces (one H200, docs/locality.md) are too large to commit; their figures are saved by
    `benchmarks/locality.py RUNS --save` and the doc's tables must be what they render to."""
    import json

    result = json.loads((REPO / "benchmarks" / "results" / "locality" / "gpt3-125m-16e.json").read_text())
    assert result["preset"] == "gpt3-125m-16e" and result["iterations"] == 4000
    assert {r["router"] for r in result["rows"]} == {"hash", "switch", "softmax-topk", "locmoe", "node-limited"}
    for name, text in locality.tables(result).items():
        assert block(f"gpt3-125m-16e-{name}") == text, name
