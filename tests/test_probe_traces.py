"""The v2 traces: what the registry holds, and the probe table docs/tracer.md shows (benchmarks/probe_traces.py)."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from pathlib import Path

from datasets_registry import registry, storage

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("probe_traces", REPO / "benchmarks" / "probe_traces.py")
probe_traces = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe_traces)


def tracer_cards() -> dict[str, storage.Card]:
    return {e.id: storage.read_card(e.folder) for e in registry.entries()
            if e.kind == "builtin" and "tracer" in str(storage.read_card(e.folder).source.get("generator", ""))}


def test_the_registry_holds_seeds_a_shift_and_todays_routers():
    cards = tracer_cards()
    training = {i: c for i, c in cards.items() if "probe_of" not in c.extra}
    assert len(training) >= 12
    seeds = Counter(re.sub(r"-s\d+$", "", i) for i in training)
    assert sorted(n for n in seeds.values() if n >= 3) == [3, 5]  # gpt3-125m-128e-top2, gpt3-125m-16e-top2
    assert any(c.extra["config"].get("corpus_schedule") for c in training.values() if "config" in c.extra
               and isinstance(c.extra["config"], dict))
    routing = [c.extra.get("routing", {}) for c in training.values()]
    assert any(r.get("router") == "deepseek-moe" and r.get("shared_experts") == 2 and r.get("expert_bias")
               for r in routing)


def test_every_probe_trace_links_its_training_trace_both_ways():
    cards = tracer_cards()
    probes = {i: c for i, c in cards.items() if "probe_of" in c.extra}
    assert len(probes) >= 8
    for pid, card in probes.items():
        training = cards[card.extra["probe_of"]["id"]]
        assert card.extra["probe_of"]["fingerprint"] == training.fingerprint
        assert pid in training.notes
        assert card.model.tokens_per_step == 262144 and training.model.tokens_per_step <= 8192


def test_the_docs_show_what_the_script_computes_and_the_probes_meet_the_bar():
    shown = probe_traces.shown_rows()
    assert {t for t, _ in probe_traces.pairs()} == set(shown)
    training = "gpt3-125m-16e-top2-s3"
    fresh = probe_traces.row(training, training + "-probe")
    assert shown[training] == fresh, "docs/tracer.md's probe table is stale: run benchmarks/probe_traces.py --write"
    noise_ratio, closable_ratio = fresh[-2], fresh[-1]
    assert float(noise_ratio.removeprefix("1/")) >= 3  # the probe's noise floor is at most a third
    assert float(closable_ratio.removesuffix("x")) >= 5  # and at least 5 times the share is closable
