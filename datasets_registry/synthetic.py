"""SYNTHETIC traces for tests and examples: labelled as such, never presented as real data.

The generator draws a load distribution that drifts during a transient phase and then holds
still, sampling each step's counts from a multinomial around it, so tests have traces with a
known switch point from transient to stable.
"""

from __future__ import annotations

import numpy as np

from .trace import Card, ModelInfo, Trace


def switching_trace(
    records: int = 600,
    layers: int = 2,
    experts: int = 16,
    switch: int = 300,
    tokens: int = 4096,
    top_k: int = 2,
    step_every: int = 1,
    drift: float = 0.08,
    jitter: float = 0.02,
    seed: int = 0,
) -> Trace:
    """A trace whose distribution drifts for `switch` records, then stays fixed.

    `drift` is the per-record random-walk scale of the logits in the transient phase; `jitter`
    adds batch-to-batch variation on top of multinomial sampling in both phases.
    """
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.0, (layers, experts))
    counts = np.empty((records, layers, experts), dtype=np.int64)
    n = tokens * top_k
    for t in range(records):
        if t < switch:
            logits = logits + rng.normal(0, drift, logits.shape)
        z = logits + rng.normal(0, jitter, logits.shape)
        q = np.exp(z - z.max(axis=1, keepdims=True))
        q /= q.sum(axis=1, keepdims=True)
        for l in range(layers):
            counts[t, l] = rng.multinomial(n, q[l])
    counts[counts.sum(axis=2) == 0] = 1
    card = Card(
        id=f"synthetic-switch-{seed}",
        title="SYNTHETIC test trace (not real data)",
        source={"command": "datasets_registry.synthetic.switching_trace", "synthetic": True},
        licence="n/a",
        model=ModelInfo(moe_layers=layers, experts=experts, top_k=top_k, tokens_per_step=tokens),
        notes="Synthetic: a random-walk transient phase, then a fixed distribution. For tests only.",
        extra={"synthetic": True, "switch_record": switch, "switch_step": switch * step_every},
    )
    return Trace.from_arrays(counts, np.arange(records) * step_every + 1, card, source="<synthetic>")


def drifting_blocks(records: int, layers: int, experts: int, block: int = 2048, tokens: int = 4096, top_k: int = 2,
                    drift: float = 0.01, seed: int = 0):
    """SYNTHETIC counts of a trace too large to build in memory, one block of records at a time.

    Yields ``(counts [n, L, E], steps [n])``: logits that random-walk by `drift` per record, and counts
    drawn as Poisson around ``tokens * top_k`` slots per layer (not exactly that many: cheaper to draw
    than a multinomial, and only the shape and the statistics' scale matter to the benchmarks using it).
    Write them with :func:`datasets_registry.registry.chunked_writer` and :func:`drifting_card`.
    """
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.0, (layers, experts))
    for start in range(0, records, block):
        n = min(block, records - start)
        z = logits + np.cumsum(rng.normal(0, drift, (n, layers, experts)), axis=0)
        logits = z[-1].copy()
        q = np.exp(z - z.max(axis=2, keepdims=True))
        q /= q.sum(axis=2, keepdims=True)
        counts = rng.poisson(q * (tokens * top_k))
        counts[:, :, 0] += 1  # no layer without tokens
        yield counts, np.arange(start, start + n) + 1


def drifting_card(name: str, layers: int, experts: int, tokens: int = 4096, top_k: int = 2) -> Card:
    """The card of a :func:`drifting_blocks` trace, labelled synthetic."""
    return Card(
        id=name,
        title="SYNTHETIC benchmark trace (not real data)",
        source={"command": "datasets_registry.synthetic.drifting_blocks", "synthetic": True},
        licence="n/a",
        model=ModelInfo(moe_layers=layers, experts=experts, top_k=top_k, tokens_per_step=tokens),
        notes="Synthetic: random-walk logits, Poisson counts. For benchmarks of the harness's scale only.",
        extra={"synthetic": True},
    )
