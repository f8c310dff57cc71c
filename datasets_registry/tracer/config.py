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

ROUTERS = ("softmax-topk", "switch", "hash", "expert-choice")

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

    def __post_init__(self):
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; choose from {', '.join(ROUTERS)}")
        if self.router == "switch" and self.top_k != 1:
            self.top_k = 1
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k must be between 1 and the number of experts ({self.n_experts}), got {self.top_k}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.moe_every < 1 or self.n_layers < self.moe_every:
            raise ValueError("need at least one MoE layer: moe_every must be between 1 and n_layers")
        if self.aux_loss < 0:
            raise ValueError("aux_loss must be >= 0")

    @property
    def ffn(self) -> int:
        return self.d_ff or 4 * self.d_model

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
        """Short name used in default dataset ids: top2, switch, hash, ec2 (+ -noaux)."""
        tag = {
            "softmax-topk": f"top{self.top_k}",
            "switch": "switch",
            "hash": f"hash{self.top_k}",
            "expert-choice": f"ec{self.top_k}",
        }[self.router]
        if self.aux_loss == 0 and self.router in ("softmax-topk", "switch"):
            tag += "-noaux"
        return tag


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
