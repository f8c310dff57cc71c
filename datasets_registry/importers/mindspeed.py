"""MindSpeed (Ascend) EPLB token collection: rank 0's JSON ``{"<layer>": {"<expert>": count}}``.

The counts are one run's totals of routed ``topk_ids`` per MoE layer and expert (gathered over
ranks by MindSpeed before writing), so the dataset is *static*: one record, step 0. Layers are
kept in numeric order with their own numbers as names (keys are ASCII digits; two keys meaning one
number, such as '1' and '01', are an error); an expert absent from a layer's object
has 0 tokens (said in the notes). The number of experts is the largest expert id + 1, or the
option ``experts=N``. Layers with no tokens at all are dropped and named in the card.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..guards import TraceError, check_dims
from .dumps import counts_array, int_option, key_number, load_json
from .eplb import build_totals


def read_mindspeed_json(path: Path, experts: int | None = None) -> "Trace":  # noqa: F821
    fmt = "mindspeed-json"
    experts = int_option(experts, "experts", path, fmt, "", required=False, dimension="experts")
    data = load_json(path)
    if not isinstance(data, dict) or not data:
        raise TraceError(str(path), 'expected a non-empty JSON object {"<layer>": {"<expert>": count}}')
    layers: dict[int, dict[int, int]] = {}
    layer_key: dict[int, str] = {}
    for lkey, body in data.items():
        layer = key_number(lkey, path, "layer")
        if layer in layers:
            raise TraceError(str(path), f"layer keys {layer_key[layer]!r} and {lkey!r} both mean layer {layer}")
        if not isinstance(body, dict) or not body:
            raise TraceError(str(path), f'layer {lkey!r} must hold a non-empty object {{"<expert>": count}}')
        ids = {key_number(e, path, f"layer {lkey!r}: expert"): e for e in body}
        if len(ids) != len(body):
            raise TraceError(str(path), f"layer {lkey!r}: two expert keys mean the same expert (e.g. '1' and '01')")
        values = counts_array([body[ids[i]] for i in sorted(ids)], path, f"layer {lkey!r} counts (by expert id)", 1)
        layers[layer], layer_key[layer] = dict(zip(sorted(ids), values.tolist())), lkey
    top = max(max(d) for d in layers.values())
    E = top + 1 if experts is None else experts
    if top >= E:
        raise TraceError(str(path), f"expert id {top} does not fit option experts={E}")
    check_dims(path, records=1, layers=len(layers), experts=E)  # before the dense array is allocated
    order = sorted(layers)
    counts = np.zeros((len(order), E), dtype=np.int64)
    for row, layer in enumerate(order):
        for e, v in layers[layer].items():
            counts[row, e] = v
    missing = sum(E - len(layers[layer]) for layer in order)
    notes = [f"MindSpeed EPLB token counts: {len(order)} layer(s) x {E} experts" +
             (f"; {missing} (layer, expert) pair(s) absent from the file counted as 0 tokens" if missing else "")]
    return build_totals(counts, [f"layer{x}" for x in order], path=path, fmt=fmt, notes=notes,
                        extra={"absent_pairs": missing} if missing else None)
