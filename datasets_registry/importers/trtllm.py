"""TensorRT-LLM expert statistics (``EXPERT_STATISTIC_PATH``, ``EXPERT_STATISTIC_ITER_RANGE=100-200``).

The folder holds ``meta_info.json`` (``num_experts``, ``num_experts_per_token``; written by rank
0) and ``rank{r}.safetensors`` per rank, whose tensors are keyed ``"{iter}_{layer}"`` and hold
that rank's per-expert token counts (``bincount`` of the selected experts). A record is one
iteration (a forward pass of the executor), the sum over ranks; the real iteration and layer
numbers are kept. Other files (``rank{r}_numtokens.json``, co-occurrence dumps) are ignored.
An (iteration, layer) key that some rank files lack is counted as 0 for them, with a warning.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..trace import ModelInfo, TraceError
from .common import build_trace, file_hashes
from .dumps import counts_array, finish_notes, load_json, natural_key, require_keys, warn, whole

RANK_FILE = re.compile(r"^rank(\d+)\.safetensors$")
KEY = re.compile(r"^(\d+)_(\d+)$")


def _load_rank(f: Path, experts: int) -> dict[tuple[int, int], np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(f))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise TraceError(str(f), f"not a readable safetensors file ({exc})") from None
    out = {}
    for key, value in tensors.items():
        m = KEY.match(key)
        if not m:
            raise TraceError(str(f), f"key {key!r} is not '{{iteration}}_{{layer}}'")
        arr = counts_array(value, f, f"key {key!r}", 1)
        if arr.shape[0] != experts:
            raise TraceError(str(f), f"key {key!r} has {arr.shape[0]} counts but meta_info.json says num_experts={experts}")
        out[(int(m.group(1)), int(m.group(2)))] = arr
    if not out:
        raise TraceError(str(f), "holds no tensors")
    return out


def read_trtllm(path: Path) -> "Trace":  # noqa: F821
    if not path.is_dir():
        raise TraceError(str(path), "expected the EXPERT_STATISTIC_PATH folder (meta_info.json and rank{r}.safetensors)")
    meta_path = path / "meta_info.json"
    if not meta_path.is_file():
        raise TraceError(str(meta_path), "missing: TensorRT-LLM's rank 0 writes it beside the rank files")
    meta = require_keys(load_json(meta_path), ["num_experts"], meta_path, "meta_info.json")
    experts = whole(meta["num_experts"], meta_path, "num_experts", 1)
    top_k = None if meta.get("num_experts_per_token") is None else whole(meta["num_experts_per_token"], meta_path, "num_experts_per_token", 1)
    files = sorted((p for p in path.iterdir() if RANK_FILE.match(p.name)), key=natural_key)
    if not files:
        raise TraceError(str(path), "no rank{r}.safetensors files in this folder")
    per_rank = {int(RANK_FILE.match(f.name).group(1)): _load_rank(f, experts) for f in files}
    keys = sorted(set().union(*per_rank.values()))
    iters = sorted({i for i, _ in keys})
    layers = sorted({layer for _, layer in keys})
    have = set(keys)
    holes = sorted({(it, layer) for it in iters for layer in layers} - have)
    if holes:
        it, layer = holes[0]
        raise TraceError(str(path), f"no rank file has key '{it}_{layer}' (iteration {it}, layer {layer}), though other "
                                    f"iterations have layer {layer} ({len(holes)} such key(s))")
    counts = np.zeros((len(iters), len(layers), experts), dtype=np.int64)
    t_of, l_of = {it: i for i, it in enumerate(iters)}, {layer: i for i, layer in enumerate(layers)}
    absent = 0
    for rank_counts in per_rank.values():
        absent += len(have) - len(rank_counts)
        for (it, layer), arr in rank_counts.items():
            counts[t_of[it], l_of[layer]] += arr
    notes = [f"TensorRT-LLM expert statistics: per-expert counts summed over {len(per_rank)} rank file(s); steps are the "
             "recorded iteration numbers"]
    extra = {"ranks": sorted(per_rank), "num_experts_per_token": top_k}
    if absent:
        warn(notes, f"{absent} (iteration, layer, rank) entries are absent from their rank file and were counted as 0 tokens")
        extra["absent_entries"] = absent
    return build_trace(counts, np.asarray(iters), path=path, fmt="trtllm",
                       files=file_hashes([meta_path, *files], path), layer_names=[f"layer{x}" for x in layers],
                       model=ModelInfo(experts=experts, top_k=top_k), step_unit="forward pass", notes=finish_notes(notes),
                       extra=extra)
