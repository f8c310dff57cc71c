"""What the importers of per-token dumps share: the ``sample_every`` option and the token-level sample.

SGLang's ``per_token`` recorder, vLLM's routed experts and Megatron's router traces record each token's
top-k experts; the importers count them into records and also keep them, for some records, as the trace's
token-level sample (:mod:`datasets_registry.token_sample`): every ``sample_every``-th record (default 1: all;
0: none), each whole. Its size is checked against the ``cells`` limit (tokens x layers x top_k) before
anything of that size is put together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..guards import TraceError, env_var, limit
from ..token_sample import fields, smallest_uint
from .dumps import bincount_last, int_option, ranges, warn

WHY = "the token-level sample keeps every K-th record (0: none)"


def sample_every_option(value, source: Path, fmt: str) -> int:
    """``--option sample_every=K``: default 1, every record."""
    every = int_option(value, "sample_every", source, fmt, WHY, required=False, minimum=0)
    return 1 if every is None else every


def is_sampled(record: int, every: int) -> bool:
    return every > 0 and record % every == 0


def adds_up(experts: np.ndarray, counts: np.ndarray) -> bool:
    """Whether a record's tokens ``experts[n, L, k]`` add up to its ``counts[L, E]`` exactly."""
    return experts.shape[0] > 0 and np.array_equal(bincount_last(experts, counts.shape[1]), counts)


def check_size(source: Path, tokens: int, layers: int, top_k: int) -> None:
    """Refuse a sample over the ``cells`` limit before it is put together (or kept while a dump is read)."""
    cells = tokens * layers * top_k
    if cells > limit("cells"):
        raise TraceError(str(source), f"the token-level routing kept ({cells:,} expert ids) is more than the limit of "
                                      f"{limit('cells'):,} cells (set {env_var('cells')} to raise it, or give "
                                      "--option sample_every=K to keep every K-th record, 0 for none)")


def assemble(parts: list[tuple[int, dict[str, np.ndarray]]], source: Path, notes: list[str], extra: dict,
             every: int) -> dict[str, np.ndarray] | None:
    """The sample of records ``(record index, {field: per-token array})`` in record order; a field that some
    records lack is left out (said in the notes). Card facts go to ``extra["token_sample"]``."""
    if not parts:
        if every:
            warn(notes, "no record's token-level routing could be kept whole: the dataset has no token-level sample")
        return None
    parts = sorted(parts, key=lambda p: p[0])
    n = sum(p[1]["token_experts"].shape[0] for p in parts)
    _, layers, top_k = parts[0][1]["token_experts"].shape
    check_size(source, n, layers, top_k)
    common = [f for f in fields(parts[0][1]) if all(f in p for _, p in parts)]
    lacking = [f for f in fields(parts[0][1]) if f not in common]
    if lacking:
        notes.append(f"token-level sample without {', '.join(lacking)}: some records do not carry them")
    sample = {"token_pass": np.concatenate([np.full(p["token_experts"].shape[0], r, dtype=np.int64)
                                            for r, p in parts])}
    for name in common:
        top = max(int(p[name].max()) for _, p in parts)
        sample[name] = np.concatenate([p[name] for _, p in parts]).astype(smallest_uint(top))
    have = fields(sample)
    extra["token_sample"] = {"every": every, "records": len(parts), "tokens": int(n), "fields": have}
    notes.append(f"token-level sample in extras.npz: {n} tokens of {len(parts)} record(s) (every {every}), with "
                 f"{', '.join(have)}")
    return sample


def collect(steps: list[int], every: int, part_of: Callable[[int], dict | None], counts: np.ndarray, source: Path,
            notes: list[str], extra: dict, unit: str, why: str) -> dict[str, np.ndarray] | None:
    """The sample of every `every`-th record, ``part_of(step)`` giving its tokens (None where they cannot be had
    whole); a record whose tokens do not add up to its counts, or have another top-k, is left out, warned with
    `why` (`unit`: what the records are, plural, e.g. "forward passes")."""
    parts, left_out = [], []
    for t, step in enumerate(steps):
        if not is_sampled(t, every):
            continue
        part = part_of(step)
        if (part is None or (parts and part["token_experts"].shape[2] != parts[0][1]["token_experts"].shape[2])
                or not adds_up(part["token_experts"], counts[t])):
            left_out.append(step)
            continue
        parts.append((t, part))
    if left_out:
        warn(notes, f"left {len(left_out)} {unit} out of the token-level sample ({ranges(left_out)}): {why}")
    return assemble(parts, source, notes, extra, every)
