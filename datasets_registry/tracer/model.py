"""A GPT-style decoder whose feed-forward block is a Mixture-of-Experts layer every other layer.

Pre-LayerNorm blocks, fused causal attention (``scaled_dot_product_attention``), GELU MLPs, tied
input/output embeddings, learned positions. The MoE layer has fixed shapes throughout, so that
``torch.compile`` builds it once:

* the router scores tokens (in float32) and picks experts (:data:`config.ROUTERS`):
  ``softmax-topk`` (GShard / Mixtral: softmax, top-k, weights renormalised over the k),
  ``switch`` (top-1, weight = probability), ``hash`` (a fixed random table from token id to k
  distinct experts, Roller et al. 2021), ``expert-choice`` (each expert takes its top-C
  tokens, Zhou et al. 2022) and ``deepseek-moe`` (DeepSeekMoE / DeepSeek-V3: fine-grained routed
  experts plus shared experts that take every token; sigmoid scores, top-k, weights normalised
  over the k; or softmax scores, weights unnormalised, as DeepSeekMoE);
* auxiliary-loss-free balancing (DeepSeek-V3; ``expert_bias``): a per-expert bias is added to the
  scores for the top-k selection only (the weights use the scores), and after every step it moves
  against that step's load, ``bias += rate * sign(mean load - load)`` (:meth:`MoEGPT.update_expert_bias`);
* ``counts[e]``, the token slots sent to expert ``e`` BEFORE any capacity drop, is what the
  tracer records (for expert-choice, the token-choice top-k demand, since the dispatched load
  is always exactly C per expert);
* slots are queued per expert in GShard order (all first choices, then all second choices, in
  token order) and slots past the capacity C = ceil(capacity_factor * tokens * k / E) are
  dropped (the token passes through the residual);
* the experts run as two batched matrix products over ``[E, C, d]`` buffers.

* two locality-aware routers, on a simulated data-parallel layout (``source_ranks`` ranks, ``ranks_per_node`` to a
  node, experts in contiguous blocks of E / nodes per node): ``locmoe`` (LocMoE, Li et al. 2024, arXiv 2401.13920:
  :class:`GrAP` gate, top-1, the auxiliary loss plus a locality loss towards :func:`locality_target`, and the expert
  capacity lower bound of :func:`locmoe_capacity_lower_bound` logged) and ``node-limited`` (DeepSeek-V3's
  node-limited routing: a token reaches experts on at most M nodes);
* with ``source_ranks`` S > 0 every MoE layer also counts its slots per source rank, ``[S, E]`` (the batch's tokens
  in S equal contiguous shares, as data-parallel ranks hold them), and :meth:`MoEGPT.forward` returns a fifth
  element, a dict of these per-layer extras.

Another router is added in one place: its name in :data:`config.ROUTERS` and a branch in :meth:`MoE.route` that
returns the experts each token chose, their weights and (for the balancing loss) the per-token score distribution;
counts, capacity, drops, recording and probes then work unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import TracerConfig


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(x).view(B, S, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, S, D))


class MLP(nn.Module):
    def __init__(self, d: int, ff: int):
        super().__init__()
        self.fc = nn.Linear(d, ff, bias=False)
        self.proj = nn.Linear(ff, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class GrAP(nn.Module):
    """LocMoE's gate (Li et al. 2024, section 3.2, eq. 4): Grouped Average Pooling, a dense layer with the fixed
    weight ``w_i = n/d * 1{i d/n <= j < (i+1) d/n}``: expert i's gating value is the mean of the i-th of n equal
    groups of the activation. The n weight rows are orthogonal (the premise of the capacity bound, Lemma 2). The
    learnable part is the offset ``eps_i`` of ``G = ReLU(w_i . x + eps_i)`` (the ReLU is applied by the router,
    so the module's output is the pre-ReLU logits ``[N, E]``)."""

    def __init__(self, d: int, n: int):
        super().__init__()
        weight = torch.zeros(n, d)
        for i in range(n):
            weight[i, i * d // n : (i + 1) * d // n] = n / d
        self.register_buffer("weight", weight, persistent=True)
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def locality_target(cfg: TracerConfig, smoothing: float = 0.01) -> torch.Tensor:
    """LocMoE's fully localized distribution ``D_l`` per source rank, ``[S, E]`` float32: every token of rank s on
    the experts of s's node, evenly; mixed with ``smoothing`` of the uniform distribution over all experts so that
    ``KL(D_c || D_l)`` stays finite (the paper does not say how it keeps it finite)."""
    rank_node = torch.tensor(cfg.rank_nodes)
    expert_node = torch.tensor(cfg.expert_nodes)
    local = (rank_node[:, None] == expert_node[None, :]).float()
    local = local / local.sum(dim=1, keepdim=True)
    return (1 - smoothing) * local + smoothing / cfg.n_experts


def locmoe_capacity_lower_bound(delta, d: int, n: int):
    """LocMoE's lower bound of expert capacity (Li et al. 2024, Theorem 1, eq. 9; Lemma 3, eq. 8):
    ``ec_min = 1 / (n [1 - I_{delta^2}(1/2, (d-1)/2)])``, with ``I`` the regularised incomplete beta function,
    ``d`` the activation width, ``n`` the experts and ``delta`` the cosine between a token and its expert's gating
    weight above which the token "should" go to that expert (Assumption 3; the paper measured delta ~ 0.03).
    Tokens, in the paper's unit; vectorised over `delta`."""
    import numpy as np
    from scipy.special import betainc

    delta = np.asarray(delta, dtype=np.float64)
    p_delta = 1.0 - betainc(0.5, (d - 1) / 2.0, np.clip(delta, 0.0, 1.0) ** 2)
    return 1.0 / (n * p_delta)


#: Quantile of the cosine between routed tokens and their expert's gating weight that the tracer logs as LocMoE's
#: delta (Assumption 3: tokens with cos >= delta belong to the expert; 90% of routed tokens reach it).
LOCMOE_DELTA_QUANTILE = 0.1


class MoE(nn.Module):
    """Token-choice (or expert-choice) MoE FFN. ``forward(x[N, d], ids[N])`` returns
    ``(y[N, d], counts[E] (int64, before drops), dropped (int64 scalar), aux (float32 scalar))``, and a fifth
    element, a dict of per-layer tensors, where source ranks are simulated or the router is LocMoE.

    ``self.gate`` is a plain ``nn.Linear`` whose output is the router logits ``[N, E]`` (float32):
    the attachment point of :class:`~datasets_registry.tracer.recorder.LoadRecorder`.
    """

    def __init__(self, cfg: TracerConfig, layer_seed: int):
        super().__init__()
        E, d, ff = cfg.n_experts, cfg.d_model, cfg.expert_width
        self.E, self.k, self.router, self.gate_fn = E, cfg.top_k, cfg.router, cfg.gate_fn
        self.capacity_factor, self.min_capacity = cfg.capacity_factor, cfg.min_capacity
        self.expert_matmul = cfg.expert_matmul
        self.w1 = nn.Parameter(torch.empty(E, d, ff))
        self.w2 = nn.Parameter(torch.empty(E, ff, d))
        if cfg.router == "hash":
            g = torch.Generator().manual_seed(1_000_003 * cfg.seed + layer_seed)
            table = torch.stack([torch.randperm(E, generator=g)[: self.k] for _ in range(cfg.vocab)])
            self.register_buffer("hash_table", table, persistent=True)
            self.gate = None
        elif cfg.router == "locmoe":
            self.gate = GrAP(d, E)
        else:
            self.gate = nn.Linear(d, E, bias=False)
        self.S = cfg.source_ranks
        self.nodes = cfg.nodes
        if self.S:
            self.register_buffer("expert_node", torch.tensor(cfg.expert_nodes), persistent=False)
        if cfg.router == "node-limited":
            self.M = cfg.node_limit
        if cfg.router == "locmoe":
            self.register_buffer("local_target", locality_target(cfg), persistent=False)
        # Modules of the newer routers exist only where used, so the original routers' parameters (and the
        # random numbers that initialise them) are exactly what they were.
        self.shared = MLP(d, cfg.shared_experts * ff) if cfg.shared_experts else None  # n shared experts as one MLP
        if cfg.expert_bias:
            self.register_buffer("expert_bias", torch.zeros(E), persistent=True)
        else:
            self.expert_bias = None

    def capacity(self, n: int) -> int:
        if self.capacity_factor <= 0:
            return n
        return max(self.min_capacity, min(n, math.ceil(self.capacity_factor * n * self.k / self.E)))

    def _experts(self, h: torch.Tensor) -> torch.Tensor:  # [E, C, d] -> [E, C, d]
        return torch.bmm(F.gelu(torch.bmm(h, self.w1.to(h.dtype)), approximate="tanh"), self.w2.to(h.dtype))

    def _experts_grouped(self, h: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:  # [R, d] -> [R, d]
        """Rows sorted by expert, expert e's rows ending at ``ends[e]`` (int32); rows past ``ends[-1]`` come back
        undefined and must not be read. Computes only the kept slots, where the padded bmm computes E x capacity."""
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        h = h.to(dtype)
        u = F.grouped_mm(h, self.w1.to(dtype), offs=ends)
        return F.grouped_mm(F.gelu(u, approximate="tanh"), self.w2.to(dtype), offs=ends)


    def route(self, x: torch.Tensor, ids: torch.Tensor):
        """The routing decision: ``(idx[N, k] experts chosen, w[N, k] float32 weights, probs[N, E] or None)``.

        ``probs`` is each token's score distribution over the experts (the P of the balancing loss; the
        expert-choice router picks tokens from it); None where the router has no scores (hash).
        A new router adds its branch here."""
        N, k = x.shape[0], self.k
        if self.router == "hash":
            idx = self.hash_table[ids]  # [N, k]
            w = torch.full((N, k), 1.0 / k, device=x.device, dtype=torch.float32)
            return idx, w, None
        with torch.autocast(device_type=x.device.type, enabled=False):
            logits = self.gate(x.float())  # [N, E] float32 (router in fp32, as Switch advises)
        if self.router == "locmoe":  # LocMoE eq. 2-3: top-1 of softmax(ReLU(GrAP(x) + eps)), weight = its score
            probs = F.relu(logits).softmax(dim=-1)
            vals, idx = probs.topk(1, dim=-1)
            return idx, vals, probs
        if self.router == "node-limited":
            return self._node_limited(logits)
        if self.gate_fn == "sigmoid":  # DeepSeek-V3: independent per-expert affinities
            scores = logits.sigmoid()
            probs = scores / scores.sum(dim=-1, keepdim=True)
        else:
            scores = probs = logits.softmax(dim=-1)
        if self.expert_bias is not None:  # the bias steers the selection only; the weights use the scores
            idx = (scores + self.expert_bias).topk(k, dim=-1).indices
            vals = scores.gather(1, idx)
        else:
            vals, idx = scores.topk(k, dim=-1)
        if (self.router == "softmax-topk" and k > 1) or (self.router == "deepseek-moe" and self.gate_fn == "sigmoid"):
            w = vals / vals.sum(dim=-1, keepdim=True)
        else:
            w = vals
        return idx, w, probs

    def _node_limited(self, logits: torch.Tensor):
        """DeepSeek-V3's node-limited routing (DeepSeek-V3 technical report, section 2.1.2 and 3.2.2): rank the
        nodes by the sum of the top-(K/M) scores of their experts, keep the top M nodes, then take the top-K
        experts among theirs; softmax scores (or sigmoid with ``gate``), weights normalised over the K."""
        N, E, k, M, nodes = logits.shape[0], self.E, self.k, self.M, self.nodes
        if self.gate_fn == "sigmoid":
            scores = logits.sigmoid()
            probs = scores / scores.sum(dim=-1, keepdim=True)
        else:
            scores = probs = logits.softmax(dim=-1)
        grouped = scores.view(N, nodes, E // nodes)
        node_score = grouped.topk(k // M, dim=-1).values.sum(dim=-1)  # [N, nodes]
        keep = torch.zeros_like(node_score).scatter_(1, node_score.topk(M, dim=-1).indices, 1.0)
        masked = torch.where(keep[:, :, None] > 0, grouped, torch.full_like(grouped, -1.0)).view(N, E)
        idx = masked.topk(k, dim=-1).indices
        vals = scores.gather(1, idx)
        return idx, vals / vals.sum(dim=-1, keepdim=True), probs

    def _extras(self, x: torch.Tensor, idx: torch.Tensor, probs: torch.Tensor | None, onehot: torch.Tensor):
        """Per-layer extras of the step: slots per source rank ``[S, E]`` (int64) with a layout; LocMoE's
        locality loss (eq. 6) and the cosine quantile that stands for its delta (Assumption 3)."""
        out: dict[str, torch.Tensor] = {}
        N, E = x.shape[0], self.E
        if self.S:
            out["source_counts"] = onehot.view(self.k, self.S, N // self.S, E).sum(dim=(0, 2), dtype=torch.int64)
            # tokens of each rank with at least one expert on each node: what crosses the network once per node
            # where a dispatch sends a token to a node once and forwards it inside (DeepEP, DeepSeek-V3)
            reach = F.one_hot(self.expert_node[idx], self.nodes).amax(dim=1)  # [N, nodes]
            out["source_node_tokens"] = reach.view(self.S, N // self.S, self.nodes).sum(dim=1, dtype=torch.int64)
        if self.router == "locmoe":
            current = probs.view(self.S, N // self.S, E).mean(dim=1)  # D_c per rank: its mean routing distribution
            target = self.local_target
            out["locality_loss"] = (current * (current.clamp_min(1e-9).log() - target.log())).sum(dim=-1).mean()
            with torch.no_grad():
                xf = x.float()
                w = self.gate.weight[idx[:, 0]]  # [N, d]: the chosen expert's gating weight
                cos = (xf * w).sum(dim=-1) / (xf.norm(dim=-1) * w.norm(dim=-1)).clamp_min(1e-12)
                q = max(1, math.ceil(LOCMOE_DELTA_QUANTILE * N))
                out["router_cosine"] = cos.kthvalue(q).values
        return out

    def _with_extras(self, x, idx, probs, onehot) -> tuple:
        extras = self._extras(x, idx, probs, onehot)
        return (extras,) if extras else ()

    def forward(self, x: torch.Tensor, ids: torch.Tensor):
        N, d = x.shape
        E, k = self.E, self.k
        C = self.capacity(N)
        zero = x.new_zeros((), dtype=torch.float32)
        idx, w, probs = self.route(x, ids)
        onehot = F.one_hot(idx.t().reshape(-1), E).to(torch.int32)  # [k*N, E], slot-major (GShard order)
        counts = onehot.sum(dim=0, dtype=torch.int64)  # [E]: slots per expert BEFORE capacity drops

        if self.router == "expert-choice":
            Cx = (
                min(N, max(self.min_capacity, math.ceil(max(self.capacity_factor, 1e-9) * N * k / E)))
                if self.capacity_factor > 0
                else N
            )
            gv, tok = probs.t().topk(Cx, dim=-1)  # [E, Cx]: each expert picks its Cx best tokens
            h = x[tok.reshape(-1)].view(E, Cx, d)
            y = self._experts(h) * gv[..., None].to(h.dtype)
            out = torch.zeros_like(x).index_add_(0, tok.reshape(-1), y.reshape(E * Cx, d).to(x.dtype))
            covered = torch.zeros(N, device=x.device, dtype=torch.int32).index_fill_(0, tok.reshape(-1), 1)
            dropped = (N - covered.sum()).to(torch.int64)
            return (out, counts, dropped, zero) + self._with_extras(x, idx, probs, onehot)

        sidx = idx.t().reshape(-1)  # [S] expert of each slot
        pos = torch.gather(onehot.cumsum(dim=0), 1, sidx[:, None]).squeeze(1) - 1  # place in its expert's queue
        keep = pos < C
        dropped = (keep.numel() - keep.sum()).to(torch.int64)
        token = torch.arange(N, device=x.device).repeat(k)  # slot s belongs to token s % N
        xpad = torch.cat([x, x.new_zeros(1, d)])
        if self.expert_matmul == "grouped":
            # the kept slots packed by expert: expert e's rows start where e-1's end; one spare row at the end
            # (the zero row) keeps the last group's end inside the operand, as grouped_mm requires
            kept = counts.clamp(max=C)
            ends = kept.cumsum(0)
            dest = torch.where(keep, (ends - kept)[sidx] + pos, torch.full_like(pos, N * k))
            # every row past the kept ones reads the zero row (their gradients come back undefined, so they
            # must reach no token): dropped slots are scattered into one more row, cut off
            rows = torch.full((N * k + 2,), N, device=x.device, dtype=torch.int64)
            rows = rows.scatter_(0, torch.where(keep, dest, N * k + 1), token)[: N * k + 1]
            y = self._experts_grouped(xpad[rows], ends.to(torch.int32))
            ypad = torch.cat([y[: N * k], y.new_zeros(1, d)])  # row N*k: what dropped slots read
        else:
            dest = torch.where(keep, sidx * C + pos, torch.full_like(pos, E * C))  # E*C: the discard slot
            src = torch.full((E * C + 1,), N, device=x.device, dtype=torch.int64).scatter_(0, dest, token)[: E * C]
            h = xpad[src].view(E, C, d)  # empty slots read the zero row
            y = self._experts(h).reshape(E * C, d)
            ypad = torch.cat([y, y.new_zeros(1, d)])
        wk = (w.t().reshape(-1) * keep).to(y.dtype)
        out = (ypad[dest] * wk[:, None]).view(k, N, d).sum(dim=0).to(x.dtype)
        if self.shared is not None:  # shared experts: every token, never counted, never dropped
            out = out + self.shared(x).to(x.dtype)
        if probs is not None:
            f = counts.float() / (N * k)  # fraction of slots per expert
            aux = E * (f * probs.mean(dim=0)).sum()  # Switch / GShard load-balancing loss
        else:
            aux = zero
        return (out, counts, dropped, aux) + self._with_extras(x, idx, probs, onehot)


class Block(nn.Module):
    def __init__(self, cfg: TracerConfig, index: int, moe: bool):
        super().__init__()
        self.index = index
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.is_moe = moe
        if moe:
            self.moe = MoE(cfg, index)
        else:
            self.mlp = MLP(cfg.d_model, cfg.ffn)

    def forward(self, x: torch.Tensor, ids: torch.Tensor):
        x = x + self.attn(self.ln1(x))
        h = self.ln2(x)
        if not self.is_moe:
            return x + self.mlp(h), None, None, None, None
        B, S, D = h.shape
        y, counts, dropped, aux, *extras = self.moe(h.reshape(B * S, D), ids.reshape(B * S))
        return x + y.view(B, S, D), counts, dropped, aux, extras[0] if extras else {}


class MoEGPT(nn.Module):
    def __init__(self, cfg: TracerConfig):
        super().__init__()
        self.cfg = cfg
        moe_ids = set(cfg.moe_layer_ids)
        self.wte = nn.Embedding(cfg.vocab, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i, i in moe_ids) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self._init_weights()

    def _init_weights(self):
        std = 0.02
        resid = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if p.dim() < 2 or "ln" in name.split(".")[-2]:
                continue
            is_out = name.endswith(("attn.proj.weight", "mlp.proj.weight", "moe.w2", "moe.shared.proj.weight"))
            nn.init.normal_(p, mean=0.0, std=resid if is_out else std)

    @property
    def moe_blocks(self) -> list[Block]:
        return [b for b in self.blocks if b.is_moe]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def expert_biases(self) -> torch.Tensor | None:
        """The selection bias of every MoE layer, float32 [L, E] (None without auxiliary-loss-free balancing)."""
        if not self.cfg.expert_bias:
            return None
        return torch.stack([b.moe.expert_bias for b in self.moe_blocks])

    @torch.no_grad()
    def update_expert_bias(self, counts: torch.Tensor, rate: float) -> None:
        """Auxiliary-loss-free balancing (DeepSeek-V3; Megatron-Core's ``moe_router_bias_update_rate``): after a
        step, move each layer's bias against that step's load: ``bias += rate * sign(mean load - load)``, with
        the load counted before capacity drops. In place, on the device, no host sync."""
        for block, c in zip(self.moe_blocks, counts):
            load = c.float()
            block.moe.expert_bias.add_(torch.sign(load.mean() - load), alpha=rate)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor):
        """Returns (lm_loss, aux_sum, counts[L, E] int64, dropped[L] int64), and a fifth element where the layers
        have extras (source ranks simulated, or LocMoE): ``{name: [L, ...]}``, e.g. ``source_counts[L, S, E]``."""
        B, S = ids.shape
        x = self.wte(ids) + self.wpe.weight[:S]
        counts, dropped, auxes, extras = [], [], [], []
        for block in self.blocks:
            x, c, dr, aux, ex = block(x, ids)
            if c is not None:
                counts.append(c)
                dropped.append(dr)
                auxes.append(aux)
                extras.append(ex)
        loss = self.head_loss(x, targets)
        out = (loss, torch.stack(auxes).sum(), torch.stack(counts), torch.stack(dropped))
        if extras[0]:
            return out + ({k: torch.stack([ex[k] for ex in extras]) for k in extras[0]},)
        return out

    def head_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def flops_per_token(cfg: TracerConfig) -> dict[str, float]:
    """Model FLOPs per trained token (forward + backward = 3x forward, PaLM appendix B convention).

    Counts the matrix products a token needs: attention projections, the dense MLPs, k experts (and
    the shared ones) in each MoE layer (not the padding of capacity slots), the router, the output head, and the
    attention scores (causal attention counted in full, as PaLM does)."""
    d, ff, L = cfg.d_model, cfg.ffn, cfg.n_layers
    n_moe = len(cfg.moe_layer_ids)
    n_dense = L - n_moe
    attn = L * 4 * d * d
    dense = n_dense * 2 * d * ff
    experts = (cfg.top_k + cfg.shared_experts) * 2 * d * cfg.expert_width  # routed k and shared experts
    moe = n_moe * (experts + (0 if cfg.router == "hash" else d * cfg.n_experts))
    head = d * cfg.vocab
    active = attn + dense + moe + head
    matmul = 6 * active
    scores = 12 * L * d * cfg.seq_len
    return {
        "active_params": float(active),
        "matmul": float(matmul),
        "attention_scores": float(scores),
        "total": float(matmul + scores),
    }
