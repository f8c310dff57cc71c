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

from ..guards import TraceError, check_bytes, check_dims, read_regular, short
from ..trace import ModelInfo
from .common import build_trace, file_hashes
from .dumps import counts_array, finish_notes, load_json, natural_key, require_keys, warn, whole

RANK_FILE = re.compile(r"^rank([0-9]{1,9})\.safetensors$")
KEY = re.compile(r"([0-9]{1,18})_([0-9]{1,18})")  # ASCII digits: '١_0' must not also mean iteration 1


def _load_rank(f: Path, experts: int) -> dict[tuple[int, int], np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(read_regular(f))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise TraceError(str(f), f"not a readable safetensors file ({exc})") from None
    out: dict[tuple[int, int], np.ndarray] = {}
    key_of: dict[tuple[int, int], str] = {}
    for key, value in tensors.items():
        m = KEY.fullmatch(key)
        if not m:
            raise TraceError(str(f), f"key {short(key)} is not '{{iteration}}_{{layer}}'")
        it_layer = (int(m.group(1)), int(m.group(2)))
        if it_layer in out:
            raise TraceError(str(f), f"keys {key_of[it_layer]!r} and {key!r} both mean iteration {it_layer[0]}, "
                                     f"layer {it_layer[1]}")
        arr = counts_array(value, f, f"key {key!r}", 1)
        if arr.shape[0] != experts:
            raise TraceError(str(f), f"key {key!r} has {arr.shape[0]} counts but meta_info.json says "
                                     f"num_experts={experts}")
        out[it_layer], key_of[it_layer] = arr, key
    if not out:
        raise TraceError(str(f), "holds no tensors")
    return out


def read_trtllm(path: Path) -> "Trace":  # noqa: F821
    if not path.is_dir():
        raise TraceError(str(path), "expected the EXPERT_STATISTIC_PATH folder (meta_info.json and "
                                    "rank{r}.safetensors)")
    meta_path = path / "meta_info.json"
    if not meta_path.is_file():
        raise TraceError(str(meta_path), "missing: TensorRT-LLM's rank 0 writes it beside the rank files")
    meta = require_keys(load_json(meta_path), ["num_experts"], meta_path, "meta_info.json")
    experts = whole(meta["num_experts"], meta_path, "num_experts", 1)
    check_dims(meta_path, experts=experts)
    top_k = meta.get("num_experts_per_token")
    top_k = None if top_k is None else whole(top_k, meta_path, "num_experts_per_token", 1)
    files = sorted((p for p in path.iterdir() if RANK_FILE.match(p.name)), key=natural_key)
    if not files:
        raise TraceError(str(path), "no rank{r}.safetensors files in this folder")
    check_bytes(path, sum(f.stat().st_size for f in files), f"the {len(files)} rank files")
    per_rank: dict[int, dict[tuple[int, int], np.ndarray]] = {}
    for f in files:
        rank = int(RANK_FILE.match(f.name).group(1))
        if rank in per_rank:
            raise TraceError(str(f), f"another file in this folder is also rank {rank}")
        per_rank[rank] = _load_rank(f, experts)
    have = set().union(*per_rank.values())
    iters = sorted({i for i, _ in have})
    layers = sorted({layer for _, layer in have})
    check_dims(path, records=len(iters), layers=len(layers), experts=experts)
    n_holes = len(iters) * len(layers) - len(have)
    if n_holes:
        it, layer = next((it, layer) for it in iters for layer in layers if (it, layer) not in have)
        raise TraceError(str(path), f"no rank file has key '{it}_{layer}' (iteration {it}, layer {layer}), though "
                                    f"other iterations have layer {layer} ({n_holes} such key(s))")
    counts = np.zeros((len(iters), len(layers), experts), dtype=np.int64)
    t_of, l_of = {it: i for i, it in enumerate(iters)}, {layer: i for i, layer in enumerate(layers)}
    absent = 0
    for rank_counts in per_rank.values():
        absent += len(have) - len(rank_counts)
        for (it, layer), arr in rank_counts.items():
            counts[t_of[it], l_of[layer]] += arr
    notes = [f"TensorRT-LLM expert statistics: per-expert counts summed over {len(per_rank)} rank file(s); steps are "
             "the recorded iteration numbers"]
    extra = {"ranks": sorted(per_rank), "num_experts_per_token": top_k}
    if absent:
        warn(notes, f"{absent} (iteration, layer, rank) entries are absent from their rank file and were counted as "
                    "0 tokens")
        extra["absent_entries"] = absent
    return build_trace(counts, np.asarray(iters), path=path, fmt="trtllm",
                       files=file_hashes([meta_path, *files], path), layer_names=[f"layer{x}" for x in layers],
                       model=ModelInfo(experts=experts, top_k=top_k), step_unit="forward pass",
                       notes=finish_notes(notes), extra=extra)
