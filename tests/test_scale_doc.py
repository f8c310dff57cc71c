"""docs/scale.md's tables are what the benchmark scripts saved (benchmarks/results/), formatted by the scripts."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(name: str) -> str:
    text = (REPO / "docs" / "scale.md").read_text()
    return re.search(rf"<!-- table: {name} -->\n(.*?)<!-- /table -->", text, re.S).group(1)


def test_throughput_table_is_the_saved_figures():
    script = _script("harness_throughput")
    assert _block("throughput") == script.doc_table(json.loads(script.RESULTS.read_text())), (
        "docs/scale.md is stale: run benchmarks/harness_throughput.py --doc")


def test_shape_table_is_the_saved_figures():
    script = _script("scaling_shape")
    rows = json.loads(script.RESULTS.with_suffix(".json").read_text())
    assert _block("shape") == script.doc_table(rows), "docs/scale.md is stale: run benchmarks/scaling_shape.py --doc"
    assert max(r["size"][1] * r["size"][2] for r in rows) == 58 * 256 and max(r["size"][0] for r in rows) >= 50_000
