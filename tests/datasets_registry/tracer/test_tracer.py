"""The tracer on CPU: recording, routers, the hook recorder, and the step buffer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets_registry.tracer.buffer import StepBuffer
from datasets_registry.tracer.config import get_preset
from datasets_registry.tracer.recorder import LoadRecorder
from datasets_registry.tracer.train import Tracer


def small(**changes):
    """The tiny-cpu preset, smaller still where a test only needs the mechanics."""
    return get_preset("tiny-cpu").replace(**changes)


def test_tiny_preset_records_tokens_times_top_k_per_layer_and_step():
    cfg = get_preset("tiny-cpu")
    tr = Tracer(cfg, device="cpu")
    for _ in range(4):
        tr.train_step()
    rec = tr.records()
    L = len(cfg.moe_layer_ids)
    assert rec["counts"].shape == (4, L, cfg.n_experts)
    assert (rec["counts"].sum(axis=2) == cfg.tokens_per_step * cfg.top_k).all()
    assert list(rec["steps"]) == [0, 1, 2, 3]
    assert ((rec["dropped"] >= 0) & (rec["dropped"] <= cfg.tokens_per_step * cfg.top_k)).all()
    assert np.isfinite(rec["loss"]).all() and rec["loss"][0] > 4.0  # ~ln(256) at the start
    trace, extras = tr.trace("tiny-test", steps_asked=4)
    assert trace.shape == (4, L, cfg.n_experts)
    m = trace.card.model
    assert (m.router, m.top_k, m.aux_loss, m.tokens_per_step, m.moe_layers) == ("softmax-topk", 2, 0.01, 512, L)
    assert trace.card.source["corpus"]["sha256"].startswith("sha256:") and trace.card.source["corpus"]["files"] > 10
    assert extras["loss"].shape == (4,) and extras["dropped"].shape == (4, L)


@pytest.mark.parametrize("router,k", [("switch", 1), ("expert-choice", 2), ("hash", 2)])
def test_other_routers_record_whole_slot_counts(router, k):
    cfg = small(router=router, top_k=k, batch_size=4, seq_len=32)
    tr = Tracer(cfg, device="cpu")
    tr.train_step()
    tr.train_step()
    rec = tr.records()
    assert (rec["counts"].sum(axis=2) == cfg.tokens_per_step * cfg.top_k).all()


def test_capacity_drops_match_the_counts():
    cfg = small(batch_size=4, seq_len=32, capacity_factor=0.5)
    tr = Tracer(cfg, device="cpu")
    tr.train_step()
    rec = tr.records()
    C = cfg.capacity()
    expected = np.clip(rec["counts"] - C, 0, None).sum(axis=2)  # slots past each expert's capacity
    assert (rec["dropped"] == expected).all() and expected.sum() > 0


def test_recorder_gives_the_tracers_own_counts():
    cfg = small(batch_size=4, seq_len=32)
    tr = Tracer(cfg, device="cpu")
    gates = {f"block{b.index}.moe.gate": b.moe.gate for b in tr.model.moe_blocks}
    rec = LoadRecorder(num_experts=cfg.n_experts, top_k=cfg.top_k, flush_every=2).attach(gates, kind="logits")
    for it in range(5):
        tr.train_step()
        rec.step(it)
    rec.detach()
    ours = tr.records()
    assert np.array_equal(rec.counts(), ours["counts"].astype(np.int64))
    assert list(rec.steps()) == list(ours["steps"])
    trace = rec.to_trace("recorded-tiny", router="softmax-topk", tokens_per_step=cfg.tokens_per_step)
    assert trace.shape == (5, len(gates), cfg.n_experts) and trace.card.layer_names == list(gates)


def test_recorder_accepts_both_logit_shapes_tuples_and_deepspeed_counts():
    E, k = 6, 2
    torch.manual_seed(0)

    class HFBlock(torch.nn.Module):  # returns (hidden, router_logits) like Mixtral's sparse MoE block
        def __init__(self, shape3d):
            super().__init__()
            self.gate = torch.nn.Linear(8, E, bias=False)
            self.shape3d = shape3d

        def forward(self, x):  # x [B, S, 8]
            logits = self.gate(x)
            return x, (logits if self.shape3d else logits.reshape(-1, E))

    class DSGate(torch.nn.Module):  # returns (l_aux, combine, dispatch, exp_counts) like DeepSpeed's TopKGate
        def forward(self, x):
            idx = x.reshape(-1, 8)[:, 0].long().remainder(E)
            return torch.tensor(0.0), None, None, torch.bincount(idx, minlength=E)

    a, b, g = HFBlock(True), HFBlock(False), DSGate()
    b.gate.weight.data.copy_(a.gate.weight.data)
    rec = LoadRecorder(num_experts=E, top_k=k).attach({"a": a, "b": b}, kind="logits").attach({"ds": g}, kind="counts")
    x = torch.randn(3, 5, 8) * 4
    expected = torch.bincount(torch.softmax(a.gate(x).reshape(-1, E), -1).topk(k).indices.reshape(-1), minlength=E)
    for it in (10, 20):
        a(x), b(x), g(x)
        a(x)  # a second micro-batch of layer a in the same step is summed
        rec.step(it)
    counts = rec.counts()
    assert counts.shape == (2, 3, E) and list(rec.steps()) == [10, 20]
    assert np.array_equal(counts[:, 0], 2 * expected.numpy()[None].repeat(2, 0))
    assert np.array_equal(counts[:, 1], expected.numpy()[None].repeat(2, 0))
    assert (counts[:, 2].sum(axis=1) == 15).all()


def test_hash_routing_depends_only_on_token_ids():
    cfg = small(router="hash", batch_size=4, seq_len=32)
    tr = Tracer(cfg, device="cpu")
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(3))
    block = tr.model.moe_blocks[0]
    x1 = torch.randn(4 * 32, cfg.d_model)
    x2 = torch.randn(4 * 32, cfg.d_model) * 10
    c1 = block.moe(x1, ids.reshape(-1))[1]
    for _ in range(3):
        tr.train_step()  # the model changes; the table does not
    c2 = block.moe(x2, ids.reshape(-1))[1]
    assert torch.equal(c1, c2)
    table = block.moe.hash_table
    assert torch.equal(c1, torch.bincount(table[ids.reshape(-1)].reshape(-1), minlength=cfg.n_experts))
    assert all(len(set(row.tolist())) == cfg.top_k for row in table)  # k distinct experts per token id
    # a batch with the same tokens in another order routes the same load
    perm = ids.reshape(-1)[torch.randperm(ids.numel())]
    assert torch.equal(block.moe(x1, perm)[1], c1)


def test_step_buffer_keeps_order_across_blocks():
    buf = StepBuffer({"v": ((2,), torch.int32)}, rows=3, device="cpu")
    for i in range(8):
        buf.push(v=torch.tensor([i, -i]))
    assert len(buf) == 8
    out = buf.arrays()["v"]
    assert out.shape == (8, 2) and list(out[:, 0]) == list(range(8))


@pytest.mark.parametrize("changes", [{}, {"router": "switch", "top_k": 1}, {"router": "deepseek-moe"},
                                     {"capacity_factor": 0.0}])
def test_grouped_expert_matmul_equals_the_padded_one(changes):
    """The grouped GEMM computes only the kept slots; loss, counts, drops and every gradient equal the padded bmm's
    (fp32 on the CPU, so bit for bit), including where tokens are dropped (capacity factor 1)."""
    from datasets_registry.tracer.model import MoEGPT

    changes = {"capacity_factor": 1.0, **changes}
    runs = {}
    for matmul in ("padded", "grouped"):
        cfg = get_preset("tiny-cpu").replace(expert_matmul=matmul, **changes)
        torch.manual_seed(0)
        model = MoEGPT(cfg)
        gen = torch.Generator().manual_seed(1)
        ids, targets = (torch.randint(0, cfg.vocab, (4, cfg.seq_len), generator=gen) for _ in range(2))
        loss, aux, counts, dropped = model(ids, targets)
        (loss + aux).backward()
        runs[matmul] = (loss, counts, dropped, [p.grad for p in model.parameters()])
    (loss_p, counts_p, dropped_p, grads_p), (loss_g, counts_g, dropped_g, grads_g) = runs["padded"], runs["grouped"]
    assert changes["capacity_factor"] == 0.0 or int(dropped_p.sum()) > 0  # the drop path is exercised
    assert torch.equal(counts_p, counts_g) and torch.equal(dropped_p, dropped_g)
    assert torch.equal(loss_p, loss_g)
    for gp, gg in zip(grads_p, grads_g):
        assert (gp is None) == (gg is None)
        if gp is not None:
            torch.testing.assert_close(gg, gp, rtol=1e-5, atol=1e-6)


def test_expert_matmul_is_checked():
    with pytest.raises(ValueError, match="expert_matmul"):
        get_preset("tiny-cpu").replace(expert_matmul="fast")


def test_clipping_folded_into_the_fused_step_equals_clip_then_step():
    """The fused AdamW step with the clip scale as its grad_scale gives the parameters that clip_grad_norm_ then
    the same step give, both when the norm is clipped and when it is not."""
    from datasets_registry.tracer.train import clip_in_fused_step

    for max_norm in (1e-7, 1e6):  # 1e-7: clipped gradients near Adam's eps, where the scale shows
        results = []
        for folded in (False, True):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
            for step in range(3):
                x = torch.randn(64, 16, generator=torch.Generator().manual_seed(step))
                model(x).pow(2).sum().backward()
                if folded:
                    clip_in_fused_step(opt, list(model.parameters()), max_norm)
                else:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
            results.append([p.detach().clone() for p in model.parameters()])
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        assert not torch.equal(results[0][0], torch.zeros_like(results[0][0]))


def test_the_card_names_the_default_corpus_without_this_machines_path(tmp_path):
    """A trace's card travels to other machines: the default corpus is named by what it is (its digest pins it),
    a corpus the user gives by the path given."""
    from datasets_registry.tracer.corpus import build_corpus

    assert build_corpus().info["root"] == "the Python standard library"
    (tmp_path / "a.py").write_text("x = 1\n")
    assert build_corpus(tmp_path).info["root"] == str(tmp_path)
