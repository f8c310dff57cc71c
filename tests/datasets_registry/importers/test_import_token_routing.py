"""Token-level routing kept by the per-token importers, end to end: `datasets import`, then `gps`.

The dumps are written as the engines write them: SGLang's per_token recorder (records with input_ids,
positions and topk_ids_of_layer [layers, tokens, 8], -1 past top-k and in dense layers), vLLM's per-request
routed_experts [seq_len, layers, top_k] with the request's token ids, Megatron-Core's router trace (a JSONL
record per step, layer and forward, the same tokens in every layer).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.cli import main
from datasets_registry import registry, token_sample
from datasets_registry.importers import import_path
from datasets_registry.importers.dumps import DumpWarning

E, K = 8, 2
RNG = np.random.default_rng(11)


def top_k_ids(tokens, layers, experts=E, k=K):
    """[tokens, layers, k] distinct expert ids per token and layer."""
    return np.argsort(RNG.random((tokens, layers, experts)), axis=2)[:, :, :k]


def per_record_bincount(sample, layers, experts):
    """{record: [L, E]} from the sample, as validate checks it, computed plainly."""
    out = {}
    for p in np.unique(sample["token_pass"]):
        rows = sample["token_experts"][sample["token_pass"] == p].astype(np.int64)
        out[int(p)] = np.stack([np.bincount(rows[:, layer].ravel(), minlength=experts) for layer in range(layers)])
    return out


def assert_sample_is_the_counts(trace, sample, records):
    """The sample holds exactly `records` (row numbers), each whole: its bincount is the record's counts."""
    got = per_record_bincount(sample, trace.layers, trace.experts)
    assert sorted(got) == list(records)
    for p, routed in got.items():
        np.testing.assert_array_equal(routed, trace.counts[p])


def gps(dataset, capsys):
    assert main(["gps", "--dataset", dataset, "--gpus", "4", "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


# --------------------------------------------------------------------------- SGLang per_token

P = 10  # physical slots: 8 logical experts and replicas of 2 and 5
MAP = np.array([0, 1, 2, 3, 4, 5, 6, 7, 2, 5])
LAYERS = 3  # layer 0 dense


def sglang_record(pass_id, rank, tokens, per_token=True):
    """What _DetailSinglePassGatherer.collect returns, and _DetailAccumulator.append keeps."""
    topk = np.full((LAYERS, tokens, 8), -1, dtype=np.int32)
    topk[1:, :, :K] = RNG.integers(0, P, size=(LAYERS - 1, tokens, K))  # physical ids, a replica sometimes
    phys = np.zeros((LAYERS, P), dtype=np.int32)
    for layer in range(LAYERS):
        ids = topk[layer][topk[layer] >= 0]
        phys[layer] = np.bincount(ids, minlength=P)
    rec = dict(forward_pass_id=pass_id, rank=rank, gatherer_key="primary", global_physical_count=torch.as_tensor(phys))
    if per_token:
        rec.update(input_ids=RNG.integers(0, 150_000, tokens).tolist(), positions=list(range(tokens)),
                   extend_seq_lens=[tokens], forward_mode=1, topk_ids_of_layer=torch.as_tensor(topk),
                   misc_objects=[])
    return rec, topk


def sglang_dump(folder, passes=range(100, 112), ranks=(0, 1), per_pass_only=()):
    folder.mkdir()
    want = {}
    for r in ranks:
        recs = []
        for p in passes:
            rec, topk = sglang_record(p, r, int(RNG.integers(3, 9)), per_token=p not in per_pass_only)
            recs.append(rec)
            want.setdefault(p, []).append((rec, topk))
        mapping = torch.as_tensor(np.tile(MAP, (LAYERS, 1)))
        torch.save(dict(records=recs, last_physical_to_logical_map=mapping),
                   folder / f"expert_distribution_recorder_1700000000.5_{r}.pt")
    return want


def test_sglang_per_token_keeps_the_routing_of_every_pass(tmp_path, capsys):
    want = sglang_dump(tmp_path / "dump")
    assert main(["datasets", "import", str(tmp_path / "dump"), "--format", "sglang-per-pass", "--id",
                 "sgl-tokens"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    entry = registry.resolve("sgl-tokens")
    trace, sample = registry.load("sgl-tokens"), token_sample.read(entry.folder)
    assert set(token_sample.fields(sample)) == {"token_pass", "token_id", "token_position", "token_experts"}
    assert trace.card.extra["token_sample"]["fields"] == token_sample.fields(sample)
    assert_sample_is_the_counts(trace, sample, range(12))
    # pass 100: rank 0's tokens then rank 1's, the physical ids mapped to logical, the dense layer 0 dropped
    first = [rec for rec, _ in want[100]]
    ids = sum((rec["input_ids"] for rec in first), [])
    assert sample["token_id"][sample["token_pass"] == 0].tolist() == ids and max(ids) > 255
    topk = np.concatenate([t.transpose(1, 0, 2) for _, t in want[100]])[:, 1:, :K]
    np.testing.assert_array_equal(sample["token_experts"][sample["token_pass"] == 0], MAP[topk])
    out = gps("sgl-tokens", capsys)
    ran = {r["strategy"] for r in out["strategies"]}
    assert {"freq-token", "layer-transition"} <= ran and "freq-bigram" not in ran and "pre-gate" not in ran
    assert "token_prev" in out["left_out"]["freq-bigram"] and "token_pregate" in out["left_out"]["pre-gate"]


def test_sglang_sample_leaves_out_passes_not_recorded_per_token(tmp_path):
    sglang_dump(tmp_path / "dump", passes=range(6), per_pass_only=(2,))
    with pytest.warns(DumpWarning, match=r"left 1 forward passes out of the token-level sample \(2\)"):
        trace = import_path(tmp_path / "dump", "sglang-per-pass", sample_every=2)
    assert_sample_is_the_counts(trace, trace.extras, [0, 4])  # every 2nd pass, pass 2 not per token
    assert trace.card.extra["token_sample"]["every"] == 2
    plain = import_path(tmp_path / "dump", "sglang-per-pass", sample_every=0)
    assert token_sample.fields(plain.extras) == [] and plain.fingerprint == trace.fingerprint


def test_sglang_sample_refuses_a_broken_per_token_record(tmp_path, refuses):
    d = tmp_path / "dump"
    sglang_dump(d, passes=range(2), ranks=(0,))
    f = next(d.iterdir())
    data = torch.load(f, weights_only=True)
    data["records"][1]["topk_ids_of_layer"][1, 0, 0] = P  # no such physical slot
    torch.save(data, f)
    refuses(d, "sglang-per-pass", "records[1].topk_ids_of_layer", "physical expert 10", source=f)
    data["records"][1]["topk_ids_of_layer"] = data["records"][1]["topk_ids_of_layer"][:, :-1]
    torch.save(data, f)
    refuses(d, "sglang-per-pass", "records[1]", "input_ids", source=f)


# --------------------------------------------------------------------------- vLLM routed experts


def test_vllm_keeps_request_position_and_token_ids(tmp_path, capsys):
    d = tmp_path / "requests"
    d.mkdir()
    seqs = []
    for r, n in enumerate([37, 41, 30]):
        ids = top_k_ids(n, 2).astype(np.int32)
        prompt = RNG.integers(0, 120_000, n - 4)
        output = RNG.integers(0, 120_000, 5)  # the last output token is never forwarded: n rows, n + 1 ids
        np.savez(d / f"req{r}.npz", routed_experts=ids, prompt_token_ids=prompt, token_ids=output)
        seqs.append((ids, np.concatenate([prompt, output])))
    rc = main(["datasets", "import", str(d), "--format", "vllm-routed-experts", "--id", "vllm-tokens", "--option",
               "step_tokens=9", "--option", f"experts={E}"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    trace = registry.load("vllm-tokens")
    sample = token_sample.read(registry.resolve("vllm-tokens").folder)
    assert set(token_sample.fields(sample)) == set(token_sample.TOKEN_FIELDS) - {"token_pregate"}
    assert_sample_is_the_counts(trace, sample, range(trace.records))
    for r, (ids, tokens) in enumerate(seqs):
        mine = sample["token_request"] == r
        pos = sample["token_position"][mine].astype(np.int64)
        np.testing.assert_array_equal(sample["token_experts"][mine], ids[pos])
        np.testing.assert_array_equal(sample["token_id"][mine], tokens[pos])
        np.testing.assert_array_equal(sample["token_prev"][mine], np.where(pos > 0, tokens[pos - 1], 0))
    out = gps("vllm-tokens", capsys)
    assert {r["strategy"] for r in out["strategies"]} >= {"freq-token", "freq-bigram", "layer-transition"}
    assert list(out["left_out"]) == ["pre-gate"]


def test_vllm_counts_and_fingerprint_do_not_depend_on_the_sample(tmp_path):
    f = tmp_path / "routed.npy"
    np.save(f, top_k_ids(50, 3).astype(np.int16))
    with pytest.warns(DumpWarning):
        every = [import_path(f, "vllm-routed-experts", step_tokens=8, experts=E, sample_every=k) for k in (0, 1, 4)]
    assert len({t.fingerprint for t in every}) == 1 and every[0].extras == {}
    assert set(every[1].extras) == {"token_pass", "token_position", "token_request", "token_experts"}
    assert_sample_is_the_counts(every[1], every[1].extras, range(6))
    assert_sample_is_the_counts(every[2], every[2].extras, [0, 4])


def test_vllm_token_ids_must_cover_the_routed_tokens(tmp_path, refuses):
    f = tmp_path / "req.npz"
    np.savez(f, routed_experts=top_k_ids(10, 2), prompt_token_ids=np.arange(6), token_ids=np.arange(3))
    refuses(f, "vllm-routed-experts", "9 token ids, fewer than the 10 tokens", step_tokens=5, experts=E)
    np.savez(f, routed_experts=top_k_ids(10, 2), prompt_token_ids=-np.arange(10))
    refuses(f, "vllm-routed-experts", "prompt_token_ids[1]", "at least 0", step_tokens=5, experts=E)


# --------------------------------------------------------------------------- Megatron router trace


def megatron_dump(folder, steps=range(1, 9), layers=(1, 2, 3), ranks=(0, 1), microbatches=2, rank_layers=None):
    """What RouterTracer writes: per rank and step, a record per layer and forward, each forward's tokens the same
    in every layer (the router's input); `rank_layers` gives a rank only some layers (pipeline stages)."""
    folder.mkdir()
    for rank in ranks:
        with open(folder / f"router_trace_rank{rank}.jsonl", "w") as f:
            for step in steps:
                sizes = RNG.integers(3, 7, microbatches)
                routing = [top_k_ids(int(n), len(layers)) for n in sizes]
                for mb in range(microbatches):
                    for li, layer in enumerate(layers):
                        if rank_layers and layer not in rank_layers[rank]:
                            continue
                        top = routing[mb][:, li]
                        f.write(json.dumps({"step": step, "stage": "pre_dispatch", "block": "decoder",
                                            "layer": layer, "rank": rank, "num_tokens": len(top), "topk": K,
                                            "top_indices": top.tolist()}) + "\n")
    return folder


def test_megatron_matches_forwards_across_layers(tmp_path, capsys):
    d = megatron_dump(tmp_path / "trace")
    rc = main(["datasets", "import", str(d), "--format", "megatron-router-trace", "--id", "mcore-tokens", "--option",
               f"experts={E}"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    trace = registry.load("mcore-tokens")
    sample = token_sample.read(registry.resolve("mcore-tokens").folder)
    assert token_sample.fields(sample) == ["token_pass", "token_experts"] and sample["token_experts"].shape[1:] == (
        3, K)
    assert_sample_is_the_counts(trace, sample, range(8))
    out = gps("mcore-tokens", capsys)
    assert [r["strategy"] for r in out["strategies"] if r["kind"] == "token-to-expert"] == ["layer-transition"]
    assert set(out["left_out"]) == {"freq-token", "freq-bigram", "pre-gate"}
    assert "layer-transition" in out["caveats"]


def test_megatron_pipeline_stages_have_no_sample(tmp_path):
    d = megatron_dump(tmp_path / "trace", steps=range(3), rank_layers={0: (1, 2), 1: (3,)})
    with pytest.warns(DumpWarning, match="left 3 steps out"):
        trace = import_path(d, "megatron-router-trace", experts=E)
    assert token_sample.fields(trace.extras) == [] and "no token-level sample" in trace.card.notes
    assert trace.fingerprint == import_path(d, "megatron-router-trace", experts=E, sample_every=0).fingerprint


def test_the_sample_is_bounded_by_the_cells_limit(tmp_path, refuses, monkeypatch):
    d = megatron_dump(tmp_path / "trace", steps=range(4), ranks=(0,))  # counts: 4 steps x 3 layers x 1 rank x 8
    monkeypatch.setenv("MOE_LOAD_BENCH_MAX_CELLS", "100")
    refuses(d, "megatron-router-trace", "MOE_LOAD_BENCH_MAX_CELLS", experts=E, source=d / "router_trace_rank0.jsonl")
    assert token_sample.fields(import_path(d, "megatron-router-trace", experts=E, sample_every=0).extras) == []


# --------------------------------------------------------------------------- the contract itself


def test_validate_refuses_a_record_sampled_in_part():
    counts = np.array([[[2, 1, 1]], [[1, 1, 0]]])
    sample = {"token_pass": np.array([0, 0, 1]), "token_experts": np.array([[[0, 1]], [[0, 2]], [[0, 1]]])}
    assert token_sample.validate(sample, counts, "here")["token_experts"].dtype == np.uint8
    sample["token_pass"] = np.array([0, 0, 0])
    with pytest.raises(token_sample.TraceError, match="record 0 does not add up"):
        token_sample.validate(sample, counts, "here")
    with pytest.raises(token_sample.TraceError, match="expert 3"):
        token_sample.validate({"token_pass": np.zeros(1, int), "token_experts": np.array([[[0, 3]]])}, counts, "x")
