"""The token-level routing sample of a trace: the experts each token of some records chose, per MoE layer.

A trace's counts say how many tokens each expert got; token-to-expert predictors (models.token_experts,
bench.gps) need which token went where. The sample lives in the dataset folder's ``extras.npz``
(:data:`datasets_registry.storage.EXTRAS_FILE`), one row per sampled token:

- ``token_pass[N]``: the record the token was routed in, as a row of ``counts`` (0..T-1, not its step);
- ``token_experts[N, L, k]``: its top-k experts in each of the trace's MoE layers (logical expert ids);
- where the source has them: ``token_id[N]``, ``token_prev[N]`` (the token before it in its sequence, 0 at
  position 0), ``token_position[N]`` (in its sequence), ``token_request[N]``, and ``token_pregate[N, L, k]``
  (a pre-gate's prediction of ``token_experts``).

A record in the sample is there whole: all of its tokens, so that the per-layer bincount of their experts is
the record's counts exactly (:func:`validate` refuses anything else). Written by the tracer's serving loop
(datasets_registry.tracer.serve) and by the importers of dumps that record routing per token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .guards import TraceError, check_dims

#: Every field of the sample, in the order the serving loop writes them.
TOKEN_FIELDS = ("token_pass", "token_id", "token_prev", "token_position", "token_request", "token_experts",
                "token_pregate")
#: What a sample has at the least.
REQUIRED = ("token_pass", "token_experts")
#: Fields of one number per token, and of top-k expert ids per token and layer.
PER_TOKEN = ("token_pass", "token_id", "token_prev", "token_position", "token_request")
ROUTING = ("token_experts", "token_pregate")


def smallest_uint(top: int) -> np.dtype:
    """The smallest unsigned integer type that holds 0..`top`."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def fields(sample: dict[str, Any]) -> list[str]:
    """The token fields a sample (or an extras archive's arrays) has, in :data:`TOKEN_FIELDS` order."""
    return [n for n in TOKEN_FIELDS if n in sample]


def validate(sample: dict[str, Any], counts: np.ndarray, source: Any) -> dict[str, np.ndarray]:
    """Check a sample against the trace's ``counts[T, L, E]``; return it in the smallest integer types.

    Every field must be there for every token, ids within the trace's records and experts, and each sampled
    record's tokens must add up to its counts exactly (a record is sampled whole or not at all).
    """
    missing = [n for n in REQUIRED if n not in sample]
    unknown = sorted(set(sample) - set(TOKEN_FIELDS))
    if missing or unknown:
        raise TraceError(str(source), f"token-level sample: missing {missing}, unknown {unknown}; its fields are "
                                      f"{', '.join(TOKEN_FIELDS)}")
    T, L, E = counts.shape
    arrays = {n: np.asarray(v) for n, v in sample.items()}
    experts = arrays["token_experts"]
    if experts.ndim != 3 or experts.shape[1] != L or 0 in experts.shape:
        raise TraceError(str(source), f"token_experts must be [tokens, {L} layers, top_k] with a token, got shape "
                                      f"{experts.shape}")
    N, _, k = experts.shape
    check_dims(source, cells=N * L * k)
    for name, arr in arrays.items():
        want = (N, L, k) if name in ROUTING else (N,)
        if arr.shape != want:
            raise TraceError(str(source), f"{name} has shape {arr.shape}; the sample is {want} here")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TraceError(str(source), f"{name} must hold whole numbers, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise TraceError(str(source), f"{name} holds a negative number ({arr.min()})")
    for name in ROUTING:
        if name in arrays and arrays[name].max() >= E:
            raise TraceError(str(source), f"{name} holds expert {arrays[name].max()}, but the trace has {E} experts")
    passes = arrays["token_pass"].astype(np.int64)
    if passes.max() >= T:
        raise TraceError(str(source), f"token_pass holds record {passes.max()}, but the trace has {T} records")
    sampled, rows = np.unique(passes, return_inverse=True)
    flat = ((rows[:, None, None] * L + np.arange(L)[None, :, None]) * E + experts.astype(np.int64)).ravel()
    routed = np.bincount(flat, minlength=len(sampled) * L * E).reshape(len(sampled), L, E)
    wrong = np.flatnonzero((routed != counts[sampled]).any(axis=(1, 2)))
    if wrong.size:
        raise TraceError(str(source), f"the token-level sample of record {int(sampled[wrong[0]])} does not add up to "
                                      f"its counts ({wrong.size} of {len(sampled)} sampled records): a record is "
                                      "sampled whole or not at all")
    return {n: arrays[n].astype(smallest_uint(int(arrays[n].max()))) for n in fields(arrays)}


def read(folder: str | os.PathLike, required: tuple[str, ...] = REQUIRED) -> dict[str, np.ndarray]:
    """Every array of a dataset folder's ``extras.npz`` (the token-level sample and any per-record arrays),
    read without pickle after the archive's sizes are checked; `required` must be among them."""
    from .storage import EXTRAS_FILE, read_npz_arrays

    path = Path(folder) / EXTRAS_FILE
    if not path.is_file():
        raise TraceError(str(path), "missing: this dataset has no token-level sample (inference traces and "
                                    "imports of per-token dumps keep it there)")
    arrays = read_npz_arrays(path, required=())
    missing = [n for n in required if n not in arrays]
    if missing:
        raise TraceError(str(path), f"no token-level sample: {', '.join(missing)} missing; it has "
                                    f"{', '.join(sorted(arrays)) or 'nothing'}")
    return arrays
