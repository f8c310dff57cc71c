"""Parts of a trace as traces of their own (the conformance suite's slice, tuning's validation part)."""

from __future__ import annotations

import dataclasses

import numpy as np

from datasets_registry.trace import Trace


def sub_trace(trace: Trace, start: int = 0, stop: int | None = None, layers: int | None = None,
              counts: np.ndarray | None = None, tag: str = "slice") -> Trace:
    """Records ``start:stop`` and the first `layers` layers of `trace` (or `counts` in their place).

    The card says where the part came from; its id is ``<id>~<tag>`` so that results on it are
    never mistaken for results on the whole trace.
    """
    stop = trace.records if stop is None else stop
    layers = trace.layers if layers is None else min(layers, trace.layers)
    c = trace.counts[start:stop, :layers] if counts is None else counts
    card = dataclasses.replace(
        trace.card, id=f"{trace.id}~{tag}", fingerprint="", layer_names=list(trace.card.layer_names[:layers]),
        model=dataclasses.replace(trace.card.model, moe_layers=layers),
        extra={**trace.card.extra, "part_of": trace.id, "records": [start, stop], "layers": layers})
    return Trace.from_arrays(np.array(c), np.array(trace.steps[start:stop]), card, source=f"<{tag} of {trace.id}>")
