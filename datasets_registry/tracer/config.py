"""Tracer configuration and the named presets.

A preset fixes what the seed paper fixes (layers, MoE layers, experts, top-k: "Prediction Is
All MoE Needs", 2024, GPT-3 125M with 16 experts and GPT-3 350M with 128 experts, an MoE block
every other layer). Width, batch and sequence are scaled down where the GPU time available to
the project demands it; :data:`GPT3_REFERENCE` holds the published shapes and every card says
which were used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ROUTERS = ("softmax-topk", "switch", "hash", "expert-choice", "deepseek-moe", "locmoe", "node-limited")
#: Routers that need the simulated data-parallel layout (``source_ranks``, ``ranks_per_node``): they route by node.
LOCALITY_ROUTERS = ("locmoe", "node-limited")
#: Score functions of the router (``gate``): softmax over the experts, or DeepSeek-V3's per-expert sigmoid.
GATES = ("softmax", "sigmoid")
#: Routers whose selection is a top-k of per-token scores, so that a per-expert bias can steer it.
BIAS_ROUTERS = ("softmax-topk", "switch", "deepseek-moe")
#: How the experts' matrix products run (same routing and results up to rounding; see TracerConfig.expert_matmul).
EXPERT_MATMULS = ("padded", "grouped")
#: Text sources of ``corpus_schedule`` (and of a serving run's workload mixture): the Python standard library (or
#: ``--corpus``), installed documentation, and C headers (corpus.corpus_for).
SOURCES = ("python", "text", "c")

#: GPT-3 paper shapes (Brown et al. 2020, table 2.1) of the dense models the MoE presets follow.
GPT3_REFERENCE = {
    "gpt3-125m-16e": {
        "n_layers": 12,
        "d_model": 768,
        "n_heads": 12,
        "seq_len": 2048,
        "batch_tokens": 524288,
        "lr": 6e-4,
    },
    "gpt3-125m-128e": {
        "n_layers": 12,
        "d_model": 768,
        "n_heads": 12,
        "seq_len": 2048,
        "batch_tokens": 524288,
        "lr": 6e-4,
    },
    "gpt3-125m-64e-ds": {
        "n_layers": 12,
        "d_model": 768,
        "n_heads": 12,
        "seq_len": 2048,
        "batch_tokens": 524288,
        "lr": 6e-4,
    },
    "gpt3-350m-128e": {
        "n_layers": 24,
        "d_model": 1024,
        "n_heads": 16,
        "seq_len": 2048,
        "batch_tokens": 524288,
        "lr": 3e-4,
    },
}


@dataclass
class TracerConfig:
    preset: str = "custom"
    # model
    n_layers: int = 4
    d_model: int = 64
    n_heads: int = 4
    d_ff: int | None = None  # default 4 * d_model (dense and expert FFN)
    moe_every: int = 2  # an MoE block in layers moe_every-1, 2*moe_every-1, ... (every other layer)
    n_experts: int = 8
    top_k: int = 2
    router: str = "softmax-topk"
    aux_loss: float = 0.01
    capacity_factor: float = 1.25  # <= 0: no dropping (capacity = all tokens)
    min_capacity: int = 4
    vocab: int = 256
    # data
    seq_len: int = 64
    batch_size: int = 8
    # optimisation
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    decay_steps: int = 5000  # cosine from lr to min_lr_ratio*lr over this many steps; constant after
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 1
    notes: str = ""
    scaled: dict[str, Any] = field(default_factory=dict)  # what differs from the paper shape, and why
    # routers in use today (defaults leave the four original routers exactly as they were)
    gate: str | None = None  # score function: softmax or sigmoid; None: sigmoid for deepseek-moe, softmax otherwise
    n_shared: int | None = None  # always-on shared experts (deepseek-moe only); None: 2 for deepseek-moe, else 0
    expert_ff: int | None = None  # hidden width of each (routed and shared) expert; None: d_ff
    expert_bias: bool = False  # auxiliary-loss-free balancing: a per-expert selection bias nudged after every step
    bias_update_rate: float = 1e-3  # bias += rate * sign(mean load - load) (Megatron-Core's default rate)
    # data
    corpus_schedule: str | None = None  # "STEP:SOURCE[+SOURCE],...", e.g. "0:python,3000:text"; None: python only
    # probe batches: a no-gradient forward pass on held-out text every probe_every steps (0: none)
    probe_every: int = 0
    probe_tokens: int = 262144  # tokens per probe (whole sequences: probe_tokens // seq_len of them)
    probe_chunk: int = 65536  # tokens per forward pass of a probe (memory bound; capacity applies per chunk)
    holdout: float = 0.05  # fraction of corpus files held out for probes (by a hash of their path; only when probing)
    # how the routed experts compute: "padded" (one bmm over [E, capacity, d], empty slots included) or "grouped" (one
    # grouped GEMM over the kept slots sorted by expert; slower on an H200 at the presets' shapes: docs/tracer.md)
    expert_matmul: str = "padded"
    # simulated data-parallel layout: the batch's tokens split into `source_ranks` equal contiguous shares (ranks),
    # ranks numbered node by node, `ranks_per_node` to a node; experts in contiguous blocks, E / nodes to a node
    source_ranks: int = 0  # S; 0: no per-source loads recorded
    ranks_per_node: int = 8
    max_nodes: int | None = None  # node-limited routing: nodes a token may reach (M); None: max(1, top_k // 2)
    locality_loss: float = 0.01  # LocMoE's locality loss coefficient (mu, eq. 6)

    def __post_init__(self):
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; choose from {', '.join(ROUTERS)}")
        if self.expert_matmul not in EXPERT_MATMULS:
            raise ValueError(f"unknown expert_matmul {self.expert_matmul!r}; choose from {', '.join(EXPERT_MATMULS)}")
        if self.gate is not None and self.gate not in GATES:
            raise ValueError(f"unknown gate {self.gate!r}; choose from {', '.join(GATES)}")
        if self.gate == "sigmoid" and self.router != "deepseek-moe":
            raise ValueError("the sigmoid gate is part of the deepseek-moe router (use --router deepseek-moe)")
        if self.n_shared is not None and self.n_shared < 0:
            raise ValueError("the number of shared experts must be >= 0")
        if self.n_shared and self.router != "deepseek-moe":
            raise ValueError("shared experts are part of the deepseek-moe router (use --router deepseek-moe)")
        if self.expert_ff is not None and self.expert_ff < 1:
            raise ValueError("expert_ff must be >= 1")
        if self.expert_bias and self.router not in BIAS_ROUTERS:
            raise ValueError(f"the expert bias (auxiliary-loss-free balancing) needs a top-k router: "
                             f"{', '.join(BIAS_ROUTERS)}")
        if self.bias_update_rate < 0:
            raise ValueError("bias_update_rate must be >= 0")
        if self.corpus_schedule is not None:
            self.corpus_schedule = format_schedule(parse_schedule(self.corpus_schedule))
            most = max(len(srcs) for _, srcs in parse_schedule(self.corpus_schedule))
            if most > self.batch_size:
                raise ValueError(f"a phase of the corpus schedule mixes {most} sources but a batch holds only "
                                 f"{self.batch_size} sequences")
        if self.probe_every < 0:
            raise ValueError("probe_every must be >= 0 (0: no probes)")
        if self.probe_tokens < self.seq_len or self.probe_chunk < self.seq_len:
            raise ValueError(f"probe_tokens and probe_chunk must hold at least one sequence ({self.seq_len} tokens)")
        if not 0 < self.holdout < 1:
            raise ValueError("holdout must be between 0 and 1")
        if self.router in ("switch", "locmoe") and self.top_k != 1:
            self.top_k = 1  # both are top-1 routers (Switch; LocMoE eq. 2-3)
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k must be between 1 and the number of experts ({self.n_experts}), got {self.top_k}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.moe_every < 1 or self.n_layers < self.moe_every:
            raise ValueError("need at least one MoE layer: moe_every must be between 1 and n_layers")
        if self.aux_loss < 0:
            raise ValueError("aux_loss must be >= 0")
        self._check_layout()

    def _check_layout(self) -> None:
        """The simulated data-parallel layout and the routers that need it."""
        if self.source_ranks < 0 or self.ranks_per_node < 1:
            raise ValueError("source_ranks must be >= 0 and ranks_per_node >= 1")
        if self.source_ranks:
            if self.tokens_per_step % self.source_ranks:
                raise ValueError(f"{self.tokens_per_step} tokens per step do not split into {self.source_ranks} "
                                 "sources")
            if self.probe_every:
                chunk = max(1, self.probe_chunk // self.seq_len) * self.seq_len
                last = self.probe_sequences * self.seq_len % chunk
                if chunk % self.source_ranks or last % self.source_ranks:
                    raise ValueError(f"probe chunks of {chunk} tokens (last {last}) do not split into "
                                     f"{self.source_ranks} sources")
            if self.source_ranks > self.ranks_per_node and self.source_ranks % self.ranks_per_node:
                raise ValueError(f"{self.source_ranks} sources do not fill nodes of {self.ranks_per_node} ranks")
        if self.router in LOCALITY_ROUTERS:
            if not self.source_ranks:
                raise ValueError(f"the {self.router} router routes by node: give the layout (--sources S "
                                 "--ranks-per-node R)")
            if self.n_experts % self.nodes:
                raise ValueError(f"{self.n_experts} experts do not split evenly over {self.nodes} nodes")
        if self.router == "locmoe" and self.d_model % self.n_experts:
            raise ValueError(f"LocMoE's GrAP gate needs d_model ({self.d_model}) divisible by the experts "
                             f"({self.n_experts})")
        if self.locality_loss < 0:
            raise ValueError("locality_loss must be >= 0")
        if self.max_nodes is not None and self.router != "node-limited":
            raise ValueError("max_nodes is part of the node-limited router (use --router node-limited)")
        if self.router == "node-limited":
            M = self.node_limit
            if not 1 <= M <= self.nodes or self.top_k % M or self.top_k // M > self.n_experts // self.nodes:
                raise ValueError(f"node-limited routing needs 1 <= M <= {self.nodes} nodes, top_k ({self.top_k}) "
                                 f"divisible by M and top_k / M <= the experts per node; got M={M}")

    @property
    def nodes(self) -> int:
        """Nodes of the simulated layout (1 without sources)."""
        return max(1, self.source_ranks // self.ranks_per_node) if self.source_ranks else 1

    @property
    def rank_nodes(self) -> list[int]:
        """The node of each source rank (ranks numbered node by node)."""
        per = min(self.ranks_per_node, self.source_ranks)
        return [s // per for s in range(self.source_ranks)]

    @property
    def expert_nodes(self) -> list[int]:
        """The node of each expert: contiguous blocks of E / nodes experts (expert e on node e * nodes // E)."""
        return [e * self.nodes // self.n_experts for e in range(self.n_experts)]

    @property
    def node_limit(self) -> int:
        """M of node-limited routing: ``max_nodes``, else ``max(1, top_k // 2)`` (DeepSeek-V3: K=8, M=4)."""
        return self.max_nodes if self.max_nodes is not None else max(1, self.top_k // 2)

    @property
    def ffn(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def gate_fn(self) -> str:
        """The router's score function: ``gate``, else sigmoid for deepseek-moe and softmax for the others."""
        return self.gate or ("sigmoid" if self.router == "deepseek-moe" else "softmax")

    @property
    def shared_experts(self) -> int:
        """Shared (always-on) experts: ``n_shared``, else 2 for deepseek-moe and 0 for the others."""
        if self.n_shared is not None:
            return self.n_shared
        return 2 if self.router == "deepseek-moe" else 0

    @property
    def expert_width(self) -> int:
        """Hidden width of each expert (fine-grained experts are narrower than the dense FFN)."""
        return self.expert_ff or self.ffn

    @property
    def schedule(self) -> list[tuple[int, tuple[str, ...]]]:
        """The corpus schedule as [(first step, sources)], ``[(0, ("python",))]`` when none is set."""
        return parse_schedule(self.corpus_schedule) if self.corpus_schedule else [(0, ("python",))]

    def sources_at(self, step: int) -> tuple[str, ...]:
        """The text sources that the batch of iteration `step` is drawn from."""
        return sources_at(self.schedule, step)

    @property
    def probe_sequences(self) -> int:
        return max(1, self.probe_tokens // self.seq_len)

    @property
    def moe_layer_ids(self) -> list[int]:
        return [i for i in range(self.n_layers) if i % self.moe_every == self.moe_every - 1]

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def capacity(self, n_tokens: int | None = None) -> int:
        """Slots per expert per MoE layer and step (GShard: capacity_factor * tokens * k / E)."""
        import math

        n = self.tokens_per_step if n_tokens is None else n_tokens
        if self.capacity_factor <= 0:
            return n
        return max(self.min_capacity, min(n, math.ceil(self.capacity_factor * n * self.top_k / self.n_experts)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TracerConfig":
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TracerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def router_tag(self) -> str:
        """Short name used in default dataset ids: top2, switch, hash2, ec2, ds6 (+ -noaux, -auxfree, -shift)."""
        tag = {
            "softmax-topk": f"top{self.top_k}",
            "switch": "switch",
            "hash": f"hash{self.top_k}",
            "expert-choice": f"ec{self.top_k}",
            "deepseek-moe": f"ds{self.top_k}",
            "locmoe": "locmoe",
            "node-limited": f"nl{self.top_k}m{self.node_limit if self.router == 'node-limited' else 0}",
        }[self.router]
        if self.expert_bias:
            tag += "-auxfree"
        elif self.aux_loss == 0 and self.router in BIAS_ROUTERS:
            tag += "-noaux"
        if self.corpus_schedule:
            tag += "-shift"
        return tag


def parse_schedule(text: str) -> list[tuple[int, tuple[str, ...]]]:
    """``"0:python,3000:text,6000:python+text"`` -> [(0, ("python",)), (3000, ("text",)), (6000, ("python", "text"))].

    Each entry is ``STEP:SOURCE`` or ``STEP:SOURCE+SOURCE...`` (a mix: the batch's sequences are shared out evenly
    among the sources); steps start at 0 and increase; sources are those of :data:`SOURCES`."""
    out: list[tuple[int, tuple[str, ...]]] = []
    for part in str(text).split(","):
        step, sep, srcs = part.strip().partition(":")
        if not sep or not step.strip().isdigit():
            raise ValueError(f"corpus schedule entry {part.strip()!r} is not STEP:SOURCE (e.g. 0:python,3000:text)")
        names = tuple(x.strip() for x in srcs.split("+"))
        bad = [n for n in names if n not in SOURCES]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"corpus schedule entry {part.strip()!r}: sources are {', '.join(SOURCES)}, each once")
        out.append((int(step), names))
    if not out or out[0][0] != 0:
        raise ValueError("the corpus schedule must start at step 0")
    if any(b[0] <= a[0] for a, b in zip(out, out[1:])):
        raise ValueError("the steps of the corpus schedule must increase")
    return out


def sources_at(schedule: list[tuple[int, tuple[str, ...]]], step: int) -> tuple[str, ...]:
    """The sources of a parsed schedule in force at `step` (a training iteration, or a serving run's pass)."""
    current = schedule[0][1]
    for first, srcs in schedule:
        if step < first:
            break
        current = srcs
    return current


def format_schedule(schedule: list[tuple[int, tuple[str, ...]]]) -> str:
    return ",".join(f"{step}:{'+'.join(srcs)}" for step, srcs in schedule)


PRESETS: dict[str, TracerConfig] = {
    "tiny-cpu": TracerConfig(
        preset="tiny-cpu",
        n_layers=4,
        d_model=64,
        n_heads=4,
        n_experts=8,
        top_k=2,
        seq_len=64,
        batch_size=8,
        lr=3e-3,
        warmup_steps=100,
        decay_steps=5000,
        notes="a toy that trains on 2 CPU cores in seconds; for CI and examples",
    ),
    "gpt3-125m-16e": TracerConfig(
        preset="gpt3-125m-16e",
        n_layers=12,
        d_model=512,
        n_heads=8,
        n_experts=16,
        top_k=2,
        seq_len=512,
        batch_size=8,
        lr=6e-4,
        warmup_steps=375,
        decay_steps=10000,
        notes="GPT-3 125M depth (12 layers, MoE every other layer: 6 MoE layers), 16 experts, top-2",
        scaled={
            "d_model": "768 -> 512",
            "n_heads": "12 -> 8",
            "seq_len": "2048 -> 512",
            "batch_tokens": "524288 -> 4096",
            "why": "to fit 4 runs of 10,000 iterations into one 10-minute call on one H100 (the project had 30 "
            "minutes of GPU time in all)",
        },
    ),
    "gpt3-125m-128e": TracerConfig(
        preset="gpt3-125m-128e",
        n_layers=12,
        d_model=256,
        n_heads=4,
        n_experts=128,
        top_k=2,
        seq_len=512,
        batch_size=16,
        lr=6e-4,
        warmup_steps=375,
        decay_steps=5000,
        notes="GPT-3 125M depth (12 layers, MoE every other layer: 6 MoE layers), 128 experts, top-2: the 128-expert "
        "routing of gpt3-350m-128e at half its depth and 0.8 of its width (0.43B parameters against 1.3B), so that "
        "three seeds of 5,000 iterations train at once on one H200 in under 5 minutes",
        scaled={
            "d_model": "768 -> 256",
            "n_heads": "12 -> 4",
            "seq_len": "2048 -> 512",
            "batch_tokens": "524288 -> 8192",
            "why": "128 experts per MoE layer at full width would be 4.8B parameters; scaled so that several seeds fit "
            "one 10-minute call on one GPU",
        },
    ),
    "gpt3-125m-64e-ds": TracerConfig(
        preset="gpt3-125m-64e-ds",
        n_layers=12,
        d_model=512,
        n_heads=8,
        n_experts=64,
        top_k=6,
        router="deepseek-moe",
        n_shared=2,
        expert_ff=512,
        seq_len=512,
        batch_size=8,
        lr=6e-4,
        warmup_steps=375,
        decay_steps=10000,
        notes="DeepSeekMoE fine-grained segmentation of gpt3-125m-16e (6 MoE layers): each of its 16 experts split "
        "into 4 (64 routed experts of width 512), top-6 routed plus 2 shared experts that take every token, "
        "DeepSeek-V3's gate (sigmoid scores, weights normalised over the 6); the same active expert width as 16 "
        "experts top-2 (8 x 512 = 2 x 2048)",
        scaled={
            "d_model": "768 -> 512",
            "n_heads": "12 -> 8",
            "seq_len": "2048 -> 512",
            "batch_tokens": "524288 -> 4096",
            "why": "the shape of gpt3-125m-16e, so that the two routings compare at equal cost",
        },
    ),
    "gpt3-350m-128e": TracerConfig(
        preset="gpt3-350m-128e",
        n_layers=24,
        d_model=320,
        n_heads=5,
        n_experts=128,
        top_k=2,
        seq_len=512,
        batch_size=16,
        lr=3e-4,
        warmup_steps=375,
        decay_steps=5000,
        notes="GPT-3 350M depth (24 layers, MoE every other layer: 12 MoE layers), 128 experts, top-2",
        scaled={
            "d_model": "1024 -> 320",
            "n_heads": "16 -> 5",
            "seq_len": "2048 -> 512",
            "batch_tokens": "524288 -> 8192",
            "why": "128 experts at full width are 12.9B parameters; scaled (1.3B parameters) to fit 2 runs of 5,000 "
            "iterations "
            "into one 10-minute call on one GPU",
        },
    ),
}


def get_preset(name: str) -> TracerConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], scaled=dict(PRESETS[name].scaled))
