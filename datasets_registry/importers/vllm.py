"""vLLM "routed experts replay": per-token routed expert ids ``[tokens, moe_layers, top_k]`` (int16).

vLLM writes no load file; this reads the array a user saved from it: ``.npy``, ``.npz`` (the
array ``routed_experts``, or its only array; ``allow_pickle=False``) or ``.pt`` (a tensor, or a
dict with ``routed_experts``; ``weights_only``). A folder of such files (one per request, say)
is read in natural name order and concatenated along tokens.

The tokens carry no step, so they are grouped into records of ``step_tokens=N`` consecutive
tokens (required); a last, incomplete group is dropped with a warning. Ids are counted per
layer into ``experts=N`` experts (required: not guessed from the largest id). Steps are the
group numbers 0..T-1.

The routing is also kept per token (:mod:`datasets_registry.importers.token_routing`, option
``sample_every=K``): ``token_experts`` and ``token_pass`` (the group), ``token_request`` (the file's number
in name order) and ``token_position`` (the row in its file): the request and the position in its sequence
where each file holds one request's ``CompletionOutput.routed_experts`` (``vllm/outputs.py``:
``[seq_len, layer_num, topk]``), as vLLM returns it. Where every file also holds the request's token ids
(``prompt_token_ids`` and, optionally, the output's ``token_ids``: arrays of the ``.npz``, keys of the
``.pt`` dict, as ``RequestOutput`` names them), row i is token i of prompt + output: ``token_id`` and
``token_prev`` (0 at position 0) too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..guards import TraceError, check_dims
from ..storage import read_npy, read_npz_arrays
from ..trace import ModelInfo
from .common import build_trace, file_hashes
from .dumps import bincount_last, dump_files, expert_ids, finish_notes, int_option, load_pt, warn, whole_array
from .token_routing import assemble, check_size, sample_every_option

KEY = "routed_experts"
SUFFIXES = (".npy", ".npz", ".pt", ".pth")


PROMPT_IDS, OUTPUT_IDS = "prompt_token_ids", "token_ids"


def _token_ids(arrays: dict, f: Path) -> np.ndarray | None:
    """prompt_token_ids + token_ids of one request's file, or None where it has no prompt_token_ids."""
    if PROMPT_IDS not in arrays:
        return None
    parts = [arrays[k] for k in (PROMPT_IDS, OUTPUT_IDS) if k in arrays]
    return np.concatenate([whole_array(p, f, k, 1) for p, k in zip(parts, (PROMPT_IDS, OUTPUT_IDS))])


def _load_one(f: Path) -> tuple:
    """(routed_experts, the request's token ids or None) of one file."""
    suffix = f.suffix.lower()
    if suffix == ".npy":
        return read_npy(f), None
    if suffix == ".npz":
        arrays = read_npz_arrays(f, required=())
        if KEY in arrays or len(arrays) != 1:
            if KEY not in arrays:
                raise TraceError(str(f), f"missing array {KEY!r}; found {sorted(arrays)}")
            return arrays[KEY], _token_ids(arrays, f)
        return next(iter(arrays.values())), None
    if suffix in (".pt", ".pth"):
        data = load_pt(f)
        if isinstance(data, dict):
            if KEY not in data:
                raise TraceError(str(f), f"missing key {KEY!r}; found {sorted(map(str, data))}")
            return data[KEY], _token_ids(data, f)
        return data, None
    raise TraceError(str(f), f"unknown file type {suffix!r}; expected one of {', '.join(SUFFIXES)}")


def _sample(ids: np.ndarray, files: list[Path], lengths: list[int], token_ids: list, step_tokens: int, T: int,
            every: int, notes: list[str], extra: dict, path: Path) -> dict | None:
    """The token-level sample of every `every`-th group of tokens."""
    records = np.arange(0, T if every else 0, max(every, 1))
    if not len(records):
        return None
    rows = (records[:, None] * step_tokens + np.arange(step_tokens)).ravel()
    check_size(path, len(rows), ids.shape[1], ids.shape[2])
    file_of = np.repeat(np.arange(len(files)), lengths)
    part = {"token_experts": ids[rows], "token_position": (rows - np.cumsum([0] + lengths[:-1])[file_of[rows]]),
            "token_request": file_of[rows]}
    if all(t is not None for t in token_ids):
        for f, t, n in zip(files, token_ids, lengths):
            if len(t) < n:
                raise TraceError(str(f), f"{PROMPT_IDS} + {OUTPUT_IDS} hold {len(t)} token ids, fewer than the {n} "
                                         f"tokens of {KEY}")
        seq = np.concatenate([t[:n] for t, n in zip(token_ids, lengths)])
        prev = np.concatenate([np.concatenate([[0], t[: n - 1]]) for t, n in zip(token_ids, lengths)])
        part.update(token_id=seq[rows], token_prev=prev[rows])
        notes.append(f"token ids from {PROMPT_IDS} + {OUTPUT_IDS}: row i of a file is token i of its sequence")
    parts = [(int(r), {k: v[i * step_tokens:(i + 1) * step_tokens] for k, v in part.items()})
             for i, r in enumerate(records)]
    return assemble(parts, path, notes, extra, every)


def read_vllm(path: Path, step_tokens: int | None = None, experts: int | None = None,
              sample_every: int | None = None) -> "Trace":  # noqa: F821
    fmt = "vllm-routed-experts"
    step_tokens = int_option(step_tokens, "step_tokens", path, fmt, "the routed ids carry no step; give the tokens per "
                             "record")
    experts = int_option(experts, "experts", path, fmt, "the routed ids do not say how many experts there are",
                         dimension="experts")
    every = sample_every_option(sample_every, path, fmt)
    files = [f for f in dump_files(path, "*", "routed-expert files") if f.suffix.lower() in SUFFIXES]
    if not files:
        raise TraceError(str(path), f"no {', '.join(SUFFIXES)} files in this folder")
    parts, token_ids = [], []
    for f in files:
        routed, tokens = _load_one(f)
        ids = expert_ids(routed, f, KEY, experts, 3)
        token_ids.append(tokens)
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
    extra = {"tokens": int(ids.shape[0]), "dropped_tokens": rest}
    sample = _sample(ids, files, [p.shape[0] for p in parts], token_ids, step_tokens, T, every, notes, extra, path)
    return build_trace(counts, np.arange(T), path=path, fmt=fmt,
                       files=file_hashes(files, path if path.is_dir() else None),
                       model=ModelInfo(experts=experts, top_k=int(ids.shape[2]), tokens_per_step=step_tokens),
                       step_unit=f"{step_tokens} tokens", notes=finish_notes(notes), extra=extra, tokens=sample)
