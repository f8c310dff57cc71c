"""Per-source-rank loads, LocMoE and DeepSeek-V3's node-limited routing in the tracer (CPU, a few iterations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from datasets_registry.tracer.config import get_preset
from datasets_registry.tracer.model import MoE, MoEGPT, locality_target, locmoe_capacity_lower_bound
from datasets_registry.tracer.train import Tracer

ROUTERS = ("hash", "switch", "softmax-topk", "locmoe", "node-limited")


def small(**changes):
    return get_preset("tiny-cpu").replace(batch_size=4, seq_len=32, **changes)


def layout(router: str, **changes):
    """tiny-cpu, 8 source ranks, 2 per node: 4 nodes of 2 experts each."""
    return small(router=router, top_k=1 if router in ("switch", "locmoe") else 2, source_ranks=8, ranks_per_node=2,
                 **changes)


@pytest.mark.parametrize("router", ROUTERS)
def test_every_router_trains_with_per_source_counts_that_sum_to_the_counts(router):
    cfg = layout(router)
    tr = Tracer(cfg, device="cpu")
    for _ in range(3):
        tr.train_step()
    trace, extras = tr.trace(f"loc-{router}", steps_asked=3)
    per_source = extras["source_counts"]
    assert per_source.shape == (3, len(cfg.moe_layer_ids), 8, cfg.n_experts)
    assert (per_source.sum(axis=2) == trace.counts).all()
    # every rank holds tokens_per_step / S tokens, each routed to top_k experts
    assert (per_source.sum(axis=3) == cfg.tokens_per_step // 8 * cfg.top_k).all()
    # tokens reaching each node: at least the slots' share of one node, at most all of the rank's tokens
    reach = extras["source_node_tokens"]
    assert reach.shape == (3, len(cfg.moe_layer_ids), 8, 4)
    by_node = per_source.reshape(3, -1, 8, 4, 2).sum(axis=4)  # slots per node (2 experts each)
    assert (reach <= by_node).all() and (reach * cfg.top_k >= by_node).all()
    assert (reach.sum(axis=3) >= cfg.tokens_per_step // 8).all()
    if router == "node-limited":  # M = 1: every token on one node
        assert (reach.sum(axis=3) == cfg.tokens_per_step // 8).all()
    extra = trace.card.extra
    assert extra["sources"]["count"] == 8 and extra["sources"]["unit"] == "rank"
    assert extra["data_parallel"]["rank_nodes"] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert extra["data_parallel"]["expert_nodes"] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert math.isfinite(extra["final_loss"]) and 0 <= extra["drop_fraction_total"] <= 1
    assert ("locmoe" in extra) == (router == "locmoe")


def test_source_counts_split_the_batch_into_contiguous_rank_shares():
    """With the hash router the expert of a token is a table lookup: rank s's counts are those of its tokens."""
    cfg = layout("hash")
    tr = Tracer(cfg, device="cpu")
    x, _ = tr.batch(0)
    tr.train_step()
    rec = tr.records()
    ids = x.reshape(8, -1)  # 8 ranks, tokens in batch order
    for layer, block in enumerate(tr.model.moe_blocks):
        table = block.moe.hash_table
        for s in range(8):
            want = np.bincount(table[ids[s]].reshape(-1).numpy(), minlength=cfg.n_experts)
            assert (rec["source_counts"][0, layer, s] == want).all()


def test_without_sources_nothing_changes():
    cfg = small()
    assert cfg.source_ranks == 0
    model = MoEGPT(cfg)
    ids = torch.randint(0, cfg.vocab, (2, cfg.seq_len))
    assert len(model(ids, ids)) == 4
    tr = Tracer(cfg, device="cpu")
    tr.train_step()
    trace, extras = tr.trace("plain", steps_asked=1)
    assert "source_counts" not in extras and "sources" not in trace.card.extra


def test_node_limited_routing_reaches_at_most_m_nodes_chosen_by_their_top_scores():
    torch.manual_seed(0)
    cfg = small(router="node-limited", n_experts=16, top_k=4, max_nodes=2, source_ranks=8, ranks_per_node=2)
    assert (cfg.nodes, cfg.node_limit) == (4, 2)
    moe = MoE(cfg, 1)
    x = torch.randn(64, cfg.d_model)
    idx, w, probs = moe.route(x, torch.zeros(64, dtype=torch.long))
    nodes = idx // 4  # 4 experts per node
    assert all(len(set(row.tolist())) <= 2 for row in nodes)
    # the nodes kept are those with the largest sum of their top-(K/M) = top-2 scores
    node_score = probs.view(64, 4, 4).topk(2, dim=-1).values.sum(-1)
    best = node_score.topk(2, dim=-1).indices.sort(dim=-1).values
    for row, keep in zip(nodes, best):
        assert set(row.tolist()) <= set(keep.tolist())
    # within them, the top-4 scores; weights normalised
    masked = probs.view(64, 4, 4).clone()
    masked[torch.ones(64, 4, dtype=torch.bool).scatter_(1, best, False)] = -1
    assert torch.equal(idx.sort(dim=-1).values, masked.view(64, 16).topk(4, dim=-1).indices.sort(dim=-1).values)
    assert torch.allclose(w.sum(dim=-1), torch.ones(64))


def test_node_limited_with_every_node_allowed_is_softmax_top_k():
    torch.manual_seed(1)
    cfg = small(router="node-limited", n_experts=8, top_k=2, max_nodes=2, source_ranks=4, ranks_per_node=2)
    moe = MoE(cfg, 1)
    x = torch.randn(50, cfg.d_model)
    idx, w, probs = moe.route(x, torch.zeros(50, dtype=torch.long))
    vals, want = probs.topk(2, dim=-1)
    assert torch.equal(idx, want) and torch.allclose(w, vals / vals.sum(-1, keepdim=True))


def test_locmoe_gate_is_grouped_average_pooling_with_orthogonal_weights():
    cfg = layout("locmoe")
    assert cfg.top_k == 1
    moe = MoE(cfg, 1)
    W = moe.gate.weight
    d, n = cfg.d_model, cfg.n_experts
    assert torch.allclose(W @ W.t(), torch.eye(n) * n / d)  # orthogonal rows of norm sqrt(n / d)
    x = torch.randn(5, d)
    assert torch.allclose(moe.gate(x), x.view(5, n, d // n).mean(-1))  # eq. 4: group means (offset 0 at start)
    idx, w, probs = moe.route(x, torch.zeros(5, dtype=torch.long))
    want = torch.relu(x.view(5, n, d // n).mean(-1)).softmax(-1)
    assert torch.allclose(probs, want) and torch.equal(idx[:, 0], want.argmax(-1))
    assert all(p.requires_grad is False for p in moe.gate.buffers())


def test_locmoe_locality_target_and_loss_by_hand():
    cfg = layout("locmoe")  # 8 ranks on 4 nodes, 8 experts: 2 per node
    target = locality_target(cfg, smoothing=0.01)
    assert torch.allclose(target.sum(-1), torch.ones(8))
    # rank 2 is on node 1, whose experts are 2 and 3: each 0.99 / 2 + 0.01 / 8
    assert torch.allclose(target[2], torch.tensor([0.00125, 0.00125, 0.49625, 0.49625] + [0.00125] * 4))
    moe = MoE(cfg, 1)
    N = 16  # 2 tokens per rank; every token routed evenly over all 8 experts: KL(uniform || D_l)
    probs = torch.full((N, 8), 1 / 8)
    onehot = torch.nn.functional.one_hot(torch.arange(N) % 8, 8).int()
    out = moe._extras(torch.randn(N, cfg.d_model), torch.zeros(N, 1, dtype=torch.long), probs, onehot)
    kl = 2 * (1 / 8) * math.log((1 / 8) / 0.49625) + 6 * (1 / 8) * math.log((1 / 8) / 0.00125)
    assert out["locality_loss"].item() == pytest.approx(kl, rel=1e-5)


def test_locmoe_capacity_lower_bound_is_equation_9():
    # delta = 0: every token qualifies (p_delta = 1), so ec_min = 1 / n
    assert locmoe_capacity_lower_bound(0.0, 512, 16) == pytest.approx(1 / 16)
    # the paper's appendix A.2: delta = 1 / sqrt(d - 3/2) gives p_delta ~ 1 - erf(sqrt(2) / 2) ~ 0.317 for large d
    d = 4096
    p = 1 / (16 * locmoe_capacity_lower_bound(1 / math.sqrt(d - 1.5), d, 16))
    assert p == pytest.approx(1 - math.erf(math.sqrt(2) / 2), rel=0.02)
    # for large d, ec_min >= 1 / (n erfc(sqrt(delta^2 d / (2 - delta^2)))) (eq. 9), and grows with delta
    for delta in (0.01, 0.03, 0.05):
        bound = locmoe_capacity_lower_bound(delta, d, 16)
        assert bound >= 0.98 / (16 * math.erfc(math.sqrt(delta**2 * d / (2 - delta**2))))
    assert np.all(np.diff(locmoe_capacity_lower_bound(np.array([0.0, 0.01, 0.03, 0.1]), d, 16)) > 0)


def test_locmoe_records_its_loss_and_delta_and_logs_the_bound():
    cfg = layout("locmoe", locality_loss=0.5)
    tr = Tracer(cfg, device="cpu")
    bias0 = tr.model.moe_blocks[0].moe.gate.bias.detach().clone()
    for _ in range(3):
        tr.train_step()
    assert not torch.equal(bias0, tr.model.moe_blocks[0].moe.gate.bias)  # the offset eps learns
    trace, extras = tr.trace("loc", steps_asked=3)
    assert extras["locality_loss"].shape == (3, 2) and (extras["locality_loss"] > 0).all()
    assert extras["router_cosine"].shape == (3, 2) and (np.abs(extras["router_cosine"]) <= 1).all()
    info = trace.card.extra["locmoe"]
    delta = np.asarray(info["delta_last_tenth"])
    assert info["capacity_lower_bound"] == pytest.approx(
        locmoe_capacity_lower_bound(delta, cfg.d_model, cfg.n_experts).tolist(), rel=1e-4)
    assert info["capacity_used"] == cfg.capacity()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(router="locmoe"), "routes by node"),
        (dict(router="node-limited"), "routes by node"),
        (dict(router="node-limited", source_ranks=8, ranks_per_node=2, max_nodes=3), "node-limited routing needs"),
        (dict(router="node-limited", source_ranks=8, ranks_per_node=2, n_experts=6), "do not split evenly"),
        (dict(router="locmoe", source_ranks=8, ranks_per_node=2, d_model=60, n_heads=4), "GrAP"),
        (dict(source_ranks=7), "do not split into 7"),
        (dict(source_ranks=8, ranks_per_node=3), "do not fill nodes"),
        (dict(max_nodes=1), "part of the node-limited router"),
    ],
)
def test_invalid_layouts_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        small(**changes)
