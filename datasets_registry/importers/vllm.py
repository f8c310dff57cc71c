"""vLLM "routed experts replay": per-token routed expert ids ``[tokens, moe_layers, top_k]`` (int16).

vLLM writes no load file; this reads the array a user saved from it: ``.npy``, ``.npz`` (the
array ``routed_experts``, or its only array; ``allow_pickle=False``) or ``.pt`` (a tensor, or a
dict with ``routed_experts``; ``weights_only``). A folder of such files (one per request, say)
is read in natural name order and concatenated along tokens.

The tokens carry no step, so they are grouped into records of ``step_tokens=N`` consecutive
tokens (required); a last, incomplete group is dropped with a warning. Ids are counted per
layer into ``experts=N`` experts (required: not guessed from the largest id). Steps are the
group numbers 0..T-1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..guards import TraceError, check_dims
from ..storage import read_npy, read_npz_arrays
from ..trace import ModelInfo
from .common import build_trace, file_hashes
from .dumps import bincount_last, dump_files, expert_ids, finish_notes, int_option, load_pt, warn

KEY = "routed_experts"
SUFFIXES = (".npy", ".npz", ".pt", ".pth")


def _load_one(f: Path):
    suffix = f.suffix.lower()
    if suffix == ".npy":
        return read_npy(f)
    if suffix == ".npz":
        arrays = read_npz_arrays(f, required=())
        if KEY in arrays or len(arrays) != 1:
            if KEY not in arrays:
                raise TraceError(str(f), f"missing array {KEY!r}; found {sorted(arrays)}")
            return arrays[KEY]
        return next(iter(arrays.values()))
    if suffix in (".pt", ".pth"):
        data = load_pt(f)
        if isinstance(data, dict):
            if KEY not in data:
                raise TraceError(str(f), f"missing key {KEY!r}; found {sorted(map(str, data))}")
            return data[KEY]
        return data
    raise TraceError(str(f), f"unknown file type {suffix!r}; expected one of {', '.join(SUFFIXES)}")


def read_vllm(path: Path, step_tokens: int | None = None, experts: int | None = None) -> "Trace":  # noqa: F821
    fmt = "vllm-routed-experts"
    step_tokens = int_option(step_tokens, "step_tokens", path, fmt, "the routed ids carry no step; give the tokens per "
                             "record")
    experts = int_option(experts, "experts", path, fmt, "the routed ids do not say how many experts there are",
                         dimension="experts")
    files = [f for f in dump_files(path, "*", "routed-expert files") if f.suffix.lower() in SUFFIXES]
    if not files:
        raise TraceError(str(path), f"no {', '.join(SUFFIXES)} files in this folder")
    parts = []
    for f in files:
        ids = expert_ids(_load_one(f), f, KEY, experts, 3)
        if parts and ids.shape[1:] != parts[0].shape[1:]:
            raise TraceError(str(f), f"{KEY} is [tokens, layers, top_k] = {list(ids.shape)}, but {files[0].name} has "
                                     f"[..., {parts[0].shape[1]}, {parts[0].shape[2]}]")
        parts.append(ids)
    ids = np.concatenate(parts)
    T, rest = divmod(ids.shape[0], step_tokens)
    if T == 0:
        raise TraceError(str(path), f"{ids.shape[0]} tokens are fewer than one record "
                                    f"(option step_tokens={step_tokens})")
    check_dims(path, records=T, layers=ids.shape[1], experts=experts)  # before the [T, L, E] counts are allocated
    notes = [f"vLLM routed experts: {ids.shape[0]} tokens from {len(files)} file(s), grouped into records of "
             f"{step_tokens} consecutive tokens and counted per layer over {experts} experts (top_k={ids.shape[2]}); "
             "steps are group numbers"]
    if rest:
        warn(notes, f"dropped the last {rest} token(s): fewer than step_tokens={step_tokens}")
    counts = bincount_last(ids[: T * step_tokens].reshape(T, step_tokens, *ids.shape[1:]).swapaxes(0, 1), experts)
    return build_trace(counts, np.arange(T), path=path, fmt=fmt,
                       files=file_hashes(files, path if path.is_dir() else None),
                       model=ModelInfo(experts=experts, top_k=int(ids.shape[2]), tokens_per_step=step_tokens),
                       step_unit=f"{step_tokens} tokens", notes=finish_notes(notes),
                       extra={"tokens": int(ids.shape[0]), "dropped_tokens": rest})
