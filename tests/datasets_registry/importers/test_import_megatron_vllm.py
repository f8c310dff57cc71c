"""megatron-router-trace (JSONL per rank) and vllm-routed-experts (per-token ids: npy, npz, pt)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datasets_registry.importers import import_path
from datasets_registry.importers.dumps import DumpWarning

E, K = 8, 2


# --------------------------------------------------------------------------- megatron


def write_traces(folder, steps=(10, 20, 30), layers=(1, 3), ranks=(0, 1), microbatches=1, drop=None):
    """One JSONL per rank, a record per (step, layer) forward; returns the expected counts [T, L, E]."""
    folder.mkdir()
    rng = np.random.default_rng(5)
    want = np.zeros((len(steps), len(layers), E), dtype=np.int64)
    for rank in ranks:
        with open(folder / f"routing_trace_rank{rank}.jsonl", "w") as f:
            for t, step in enumerate(steps):
                for li, layer in enumerate(layers):
                    for _ in range(microbatches):
                        if drop == (rank, step, layer):
                            continue
                        n = int(rng.integers(4, 12))
                        top = np.stack([rng.choice(E, K, replace=False) for _ in range(n)])
                        np.add.at(want[t, li], top.ravel(), 1)
                        f.write(
                            json.dumps(
                                {
                                    "step": step,
                                    "stage": 0,
                                    "block": layer,
                                    "layer": layer,
                                    "rank": rank,
                                    "num_tokens": n,
                                    "topk": K,
                                    "top_indices": top.tolist(),
                                }
                            )
                            + "\n"
                        )
    return want


def test_megatron_bincounts_and_sums_ranks(tmp_path, stored):
    want = write_traces(tmp_path / "trace", microbatches=2)
    tr = stored(import_path(tmp_path / "trace", "megatron-router-trace", experts=E))
    np.testing.assert_array_equal(tr.counts, want)
    assert tr.steps.tolist() == [10, 20, 30] and tr.card.layer_names == ["layer1", "layer3"]
    assert tr.card.model.top_k == K and tr.card.extra["records"] == 2 * 3 * 2 * 2
    assert len(tr.card.source["files"]) == 2
    one = import_path(tmp_path / "trace" / "routing_trace_rank0.jsonl", "megatron-router-trace", experts=E)
    assert one.counts.sum() < tr.counts.sum()


def test_megatron_keeps_each_ranks_tokens_as_a_source(tmp_path, stored):
    want = write_traces(tmp_path / "trace", ranks=(0, 2, 5), microbatches=2)
    tr = stored(import_path(tmp_path / "trace", "megatron-router-trace", experts=E, sample_every=0))
    assert tr.sources["count"] == 3 and tr.sources["unit"] == "rank" and "ranks 0, 2, 5" in tr.sources["layout"]
    np.testing.assert_array_equal(tr.source_counts.sum(axis=2), want)
    for s, rank in enumerate((0, 2, 5)):
        alone = import_path(tmp_path / "trace" / f"routing_trace_rank{rank}.jsonl", "megatron-router-trace",
                            experts=E, sample_every=0)
        np.testing.assert_array_equal(tr.source_counts[:, :, s], alone.counts)


def test_megatron_pipeline_stages_are_sources_with_zeros_in_other_stages_layers(tmp_path):
    first = write_traces(tmp_path / "a", layers=(1,), ranks=(0,))
    second = write_traces(tmp_path / "b", layers=(3,), ranks=(1,))
    (tmp_path / "b" / "routing_trace_rank1.jsonl").rename(tmp_path / "a" / "routing_trace_rank1.jsonl")
    tr = import_path(tmp_path / "a", "megatron-router-trace", experts=E, sample_every=0)
    assert tr.source_counts.shape == (3, 2, 2, E)
    np.testing.assert_array_equal(tr.source_counts[:, 0, 0], first[:, 0])
    np.testing.assert_array_equal(tr.source_counts[:, 1, 1], second[:, 0])
    assert not tr.source_counts[:, 0, 1].any() and not tr.source_counts[:, 1, 0].any()


def test_megatron_malformed(tmp_path, refuses):
    d = tmp_path / "t"
    write_traces(d)
    f0 = d / "routing_trace_rank0.jsonl"
    refuses(d, "megatron-router-trace", "experts=N")
    refuses(d, "megatron-router-trace", "[0, 4)", "experts=4", source=f0, experts=4)

    def edited(name, fn, lineno=2):
        lines = f0.read_text().splitlines()
        rec = json.loads(lines[lineno - 1])
        fn(rec)
        lines[lineno - 1] = json.dumps(rec)
        f = tmp_path / name
        f.write_text("\n".join(lines) + "\n")
        return f

    refuses(
        edited("a.jsonl", lambda r: r.pop("top_indices")), "megatron-router-trace", "line 2", "top_indices", experts=E
    )
    refuses(
        edited("b.jsonl", lambda r: r.update(num_tokens=r["num_tokens"] + 1)),
        "megatron-router-trace",
        "line 2",
        "num_tokens",
        experts=E,
    )
    refuses(
        edited("c.jsonl", lambda r: r["top_indices"][0].__setitem__(1, -1)),
        "megatron-router-trace",
        "line 2 (step 10, layer 3, rank 0): top_indices[0][1]",
        experts=E,
    )
    refuses(edited("d.jsonl", lambda r: r.update(step="ten")), "megatron-router-trace", "line 2", "step", experts=E)
    f = tmp_path / "e.jsonl"
    f.write_text(f0.read_text() + '{"step": 40, "layer"\n')
    refuses(f, "megatron-router-trace", "invalid JSON", experts=E)

    d = tmp_path / "missing"
    write_traces(d, drop=(1, 20, 3))
    refuses(d, "megatron-router-trace", "step 20, layer 3", "rank(s) [1]", experts=E)


# --------------------------------------------------------------------------- vllm


def routed(tokens=50, layers=3):
    rng = np.random.default_rng(9)
    return np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(layers)]) for _ in range(tokens)]).astype(
        np.int16
    )


def expected(ids, step):
    T = ids.shape[0] // step
    want = np.zeros((T, ids.shape[1], E), dtype=np.int64)
    for t in range(T):
        for tok in ids[t * step : (t + 1) * step]:
            for layer in range(ids.shape[1]):
                for e in tok[layer]:
                    want[t, layer, e] += 1
    return want


@pytest.mark.parametrize("kind", ["npy", "npz", "pt", "pt-dict"])
def test_vllm_groups_tokens(tmp_path, kind, stored):
    ids = routed()
    if kind == "npy":
        f = tmp_path / "routed.npy"
        np.save(f, ids)
    elif kind == "npz":
        f = tmp_path / "routed.npz"
        np.savez(f, routed_experts=ids, prompt_len=np.array(7))
    else:
        f = tmp_path / "routed.pt"
        t = torch.from_numpy(ids)
        torch.save(t if kind == "pt" else {"routed_experts": t, "request_id": "r1"}, f)
    with pytest.warns(DumpWarning, match="dropped the last 2 token"):
        tr = stored(import_path(f, "vllm-routed-experts", step_tokens=16, experts=E))
    np.testing.assert_array_equal(tr.counts, expected(ids, 16))
    assert tr.steps.tolist() == [0, 1, 2] and tr.card.model.top_k == K and tr.card.model.tokens_per_step == 16
    assert tr.card.extra["dropped_tokens"] == 2


def test_vllm_folder_concatenates_in_name_order(tmp_path):
    ids = routed(tokens=48)
    d = tmp_path / "requests"
    d.mkdir()
    np.save(d / "req2.npy", ids[:20])
    np.save(d / "req10.npy", ids[20:])  # natural order: req2 before req10
    tr = import_path(d, "vllm-routed-experts", step_tokens=12, experts=E)
    np.testing.assert_array_equal(tr.counts, expected(ids, 12))
    assert sorted(tr.card.source["files"]) == ["req10.npy", "req2.npy"]


def test_vllm_malformed(tmp_path, refuses, pickled):
    ids = routed(tokens=20)
    f = tmp_path / "r.npy"
    np.save(f, ids)
    refuses(f, "vllm-routed-experts", "step_tokens=N", experts=E)
    refuses(f, "vllm-routed-experts", "experts=N", step_tokens=4)
    refuses(f, "vllm-routed-experts", "option step_tokens", step_tokens="four", experts=E)
    refuses(f, "vllm-routed-experts", "fewer than one record", step_tokens=64, experts=E)
    refuses(f, "vllm-routed-experts", "routed_experts[", "[0, 4)", step_tokens=4, experts=4)
    f2 = tmp_path / "flat.npy"
    np.save(f2, ids[:, 0])
    refuses(f2, "vllm-routed-experts", "3-D", step_tokens=4, experts=E)
    f3 = tmp_path / "obj.npy"
    np.save(f3, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    refuses(f3, "vllm-routed-experts", "unreadable .npy", step_tokens=4, experts=E)
    f4 = tmp_path / "two.npz"
    np.savez(f4, a=ids, b=ids)
    refuses(f4, "vllm-routed-experts", "routed_experts", step_tokens=4, experts=E)
    make, name = pickled
    f5 = tmp_path / "p.pt"
    torch.save(make({"routed_experts": torch.from_numpy(ids)}), f5)
    refuses(f5, "vllm-routed-experts", "refused", name, step_tokens=4, experts=E)
