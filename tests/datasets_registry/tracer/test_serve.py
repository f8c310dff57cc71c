"""Inference traces: batching, faithful routing capture, the token-level sample against the per-pass counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.cli import main
from datasets_registry import registry, token_sample
from datasets_registry.tracer.config import get_preset
from datasets_registry.tracer.model import MoEGPT
from datasets_registry.tracer.serve import (
    PASS_KINDS,
    TOKEN_FIELDS,
    Request,
    ServeConfig,
    capture_routing,
    pass_kind,
    route_pass,
    schedule_pass,
    serve,
)

INFERENCE = ("gpt3-125m-16e-serve-shift-b512", "gpt3-125m-16e-serve-code-b512", "gpt3-125m-16e-serve-shift-b4096")


def tiny_model(seed: int = 3) -> MoEGPT:
    torch.manual_seed(seed)
    return MoEGPT(get_preset("tiny-cpu").replace(seq_len=32)).eval()


def corpus(tmp_path, name: str, letters: str, suffix: str = ".py"):
    """30 small files of ASCII text (UTF-8, as the text source asks), so that a held-out part exists."""
    folder = tmp_path / name
    folder.mkdir()
    for i in range(30):
        (folder / f"f{i:02d}{suffix}").write_text((letters[i % len(letters)] * 7 + " " + letters) * 8)
    return folder


def test_a_pass_decodes_first_then_chunks_prompts_in_arrival_order():
    def req(rid, prompt, done, total=20):
        return Request(rid, "python", np.arange(total, dtype=np.uint8), prompt, done)

    decoding, waiting, long = req(0, 5, 7), req(1, 10, 0), req(2, 12, 0)
    work = schedule_pass([waiting, decoding, long], budget=15)
    assert [(r.rid, a, b) for r, a, b in work] == [(0, 7, 8), (1, 0, 10), (2, 0, 4)]  # 1 + 10 + 4 = 15
    assert PASS_KINDS[pass_kind(work)] == "mixed"
    assert PASS_KINDS[pass_kind(work[:1])] == "decode" and PASS_KINDS[pass_kind(work[1:])] == "prefill"


def test_captured_routing_is_the_models_own_and_the_model_is_left_as_it_was():
    model = tiny_model()
    ids = torch.randint(0, 256, (3, 32))
    for block in model.moe_blocks:
        block.moe.capacity_factor = 0.0  # dropless, as route_pass runs it
    with torch.no_grad():
        _, _, counts, dropped = model(ids, ids)
    for block in model.moe_blocks:
        block.moe.capacity_factor = 1.25
    rows = torch.arange(3 * 32)
    experts, taps = route_pass(model, ids, rows)
    E = model.cfg.n_experts
    assert [np.bincount(e.ravel(), minlength=E).tolist() for e in experts.numpy()] == counts.tolist()
    assert int(dropped.sum()) == 0 and len(taps) == len(model.moe_blocks) and taps[0].shape == (96, 64)
    assert all("route" not in vars(b.moe) and b.moe.capacity_factor == 1.25 for b in model.moe_blocks)
    with capture_routing(model) as routed:
        model(ids, ids)
    assert len(routed) == len(model.moe_blocks)


def test_serving_records_counts_that_the_token_sample_sums_to_exactly(tmp_path):
    model = tiny_model()
    cfg = ServeConfig(mixture="0:python,20:python+text", passes=40, concurrency=4, max_batch_tokens=24,
                      prompt_min=4, prompt_max=12, output_min=2, output_max=6, sample_every=3, seed=2)
    records, served = serve(model, cfg, corpus_root=corpus(tmp_path, "py", "abcdefgh"),
                            text_roots=[corpus(tmp_path, "doc", "QRSTUVWXYZ", ".txt")])
    T, L, E = records["counts"].shape
    assert (T, L, E) == (40, 2, 8)
    assert (records["batch_tokens"] <= 24).all()
    assert (records["counts"].sum(axis=2) == 2 * records["batch_tokens"][:, None]).all()
    for p in np.unique(records["token_pass"]):
        rows = records["token_pass"] == p
        assert p % 3 == 0
        for layer in range(L):
            assert np.bincount(records["token_experts"][rows, layer].ravel(), minlength=E).tolist() == \
                records["counts"][p, layer].tolist()
    assert records["token_pregate"].shape == records["token_experts"].shape
    assert set(served["by_source"]) <= {"python", "text"} and served["requests_finished"] > 4
    positions, requests = records["token_position"], records["token_request"]
    first = (positions == 0)
    assert (records["token_prev"][first] == 0).all() and len(np.unique(requests)) > 1


def test_serve_command_stores_an_inference_dataset(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["trace", "--preset", "tiny-cpu", "--steps", "3", "--seq-len", "32", "--batch-size", "2", "--out",
                 str(run), "--no-register", "--quiet", "--corpus", str(corpus(tmp_path, "py", "abcdefgh"))]) == 0
    capsys.readouterr()
    assert main(["trace", "serve", str(run), "--id", "tiny-serving-test", "--passes", "12", "--concurrency", "3",
                 "--max-batch-tokens", "16", "--prompt", "4:8", "--output", "2:4", "--sample-every", "4",
                 "--serve-device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["shape"] == [12, 2, 8] and result["tokens_sampled"] > 0
    entry = registry.resolve("tiny-serving-test")
    trace = registry.load("tiny-serving-test")
    assert trace.card.step_unit == "forward pass" and trace.card.extra["checkpoint"]["trained_steps"] == 3
    sample = token_sample.read(entry.folder, required=TOKEN_FIELDS)
    assert set(TOKEN_FIELDS) <= set(sample)
    assert main(["trace", "serve", str(tmp_path / "nothing"), "--id", "x-test"]) == 1
    assert str(tmp_path / "nothing") in capsys.readouterr().err


def test_a_run_without_weights_cannot_be_served(tmp_path, capsys):
    run = tmp_path / "run"
    py = corpus(tmp_path, "py", "abcdefgh")
    assert main(["trace", "--preset", "tiny-cpu", "--steps", "2", "--seq-len", "32", "--batch-size", "2", "--out",
                 str(run), "--no-register", "--quiet", "--no-state", "--corpus", str(py)]) == 0
    capsys.readouterr()
    assert main(["trace", "serve", str(run), "--id", "x-test", "--serve-device", "cpu"]) == 1
    assert "no state.pt" in capsys.readouterr().err


@pytest.mark.parametrize("dataset", INFERENCE)
def test_the_built_in_inference_traces_agree_with_their_token_sample(dataset):
    trace = registry.load(dataset)
    sample = token_sample.read(registry.resolve(dataset).folder, required=TOKEN_FIELDS)
    E = trace.experts
    passes = np.unique(sample["token_pass"])
    assert len(passes) >= 19 and trace.card.step_unit == "forward pass"
    for p in passes:
        rows = sample["token_pass"] == p
        got = np.stack([np.bincount(sample["token_experts"][rows, layer].ravel(), minlength=E)
                        for layer in range(trace.layers)])
        assert (got == trace.counts[p]).all(), f"{dataset}: pass {p}"
        assert rows.sum() == sample["batch_tokens"][p]
