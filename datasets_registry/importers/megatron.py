"""Megatron-Core router traces (``--moe-routing-trace-path``).

One JSONL file per rank (a folder of them, or one file), one record per (step, layer) and
forward pass: ``{"step", "stage", "block", "layer", "rank", "num_tokens", "topk",
"top_indices": [[...] per token]}``. A record is counted with ``bincount(top_indices)``; the
counts are summed over ranks (and over several records of one rank, step and layer, as
micro-batches write), per (step, layer). Steps are the real iteration numbers. A rank records the
tokens at its own router, before they are dispatched to the experts (``stage: pre_dispatch``), so
the per-rank sums are kept as the trace's per-source split (``source_counts[T, L, S, E]``, source
``s`` the ``s``-th rank in order; under pipeline parallelism a rank's layers are only those of its
stage, and its other layers' counts are 0).

The trace holds expert indices only, so the number of experts is required: ``experts=N``. It is
not guessed from the largest index seen (an expert that no token chose would vanish).
Every layer must be recorded by the same ranks at every step, so that a truncated rank file
cannot quietly lower the counts.

The file of a rank lists, per step, one record per layer and forward (micro-batch), each of the same tokens
in the same order (the router's input, ``megatron/core/transformer/moe/router_trace.py``): the i-th record of
every layer holds the same tokens. So the routing is also kept per token (option ``sample_every=K``):
``token_experts[N, L, k]`` from the i-th records of all layers, for the steps where every rank recorded every
layer with the same number of records and tokens (not so under pipeline parallelism, where a rank holds some
layers only: the sample is then left out, and said). The trace holds no token ids, positions or requests.
While the files are read the indices are kept in the smallest integer type that holds them (uint8 up to
256 experts), within the ``cells`` limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..guards import TraceError, check_dims, parse_json, read_regular
from ..token_sample import smallest_uint
from ..trace import ModelInfo
from .common import build_trace, file_hashes
from .dumps import bincount_last, dump_files, expert_ids, finish_notes, int_option, ranges, require_keys, warn, whole
from .token_routing import check_size, collect, sample_every_option

FIELDS = ("step", "layer", "rank", "num_tokens", "topk", "top_indices")


@dataclass
class Kept:
    """The indices of every record, ``ids[(step, rank)][layer]`` in file order, and their number of cells."""

    dtype: np.dtype
    ids: dict = field(default_factory=dict)
    cells: int = 0


def _read_file(f: Path, experts: int, sums: dict, seen: dict, topks: set, kept: Kept | None) -> int:
    """Add one rank file's records into `sums[(step, layer, rank)]`; note who recorded what in `seen`; keep the
    records' indices in `kept` (if given)."""
    n = 0
    try:
        lines = read_regular(f).decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise TraceError(str(f), "not a UTF-8 text file") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {lineno}"
        rec = parse_json(line, f, where)
        require_keys(rec, FIELDS, f, where)
        step, layer, rank, tokens, topk = (whole(rec[k], f, f"{where}: {k}") for k in FIELDS[:5])
        where += f" (step {step}, layer {layer}, rank {rank})"
        if topk > experts:
            raise TraceError(str(f), f"{where}: topk={topk} is more than the {experts} experts (option experts)")
        if tokens == 0 and rec["top_indices"] == []:
            ids = np.zeros((0, topk), dtype=np.int64)
        else:
            ids = expert_ids(rec["top_indices"], f, f"{where}: top_indices", experts, 2)
        if ids.shape != (tokens, topk):
            raise TraceError(str(f), f"{where}: top_indices has shape {list(ids.shape)} but num_tokens={tokens}, "
                                     f"topk={topk}")
        key = (step, layer, rank)
        if key not in sums:  # every (step, layer, rank) holds `experts` counts: bound their number before adding one
            check_dims(f, experts=experts, cells=(len(sums) + 1) * experts)
        sums[key] = sums.get(key, 0) + bincount_last(ids[:, None, :], experts)[0]
        seen.setdefault((step, layer), set()).add(rank)
        topks.add(topk)
        if kept is not None:
            kept.cells += ids.size
            check_size(f, kept.cells, 1, 1)
            kept.ids.setdefault((step, rank), {}).setdefault(layer, []).append(ids.astype(kept.dtype))
        n += 1
    if not n:
        raise TraceError(str(f), "holds no records")
    return n


def _step_tokens(by_rank: dict, layers: list[int]) -> np.ndarray | None:
    """``[tokens, L, k]`` of one step over its ranks (in rank order), or None where a rank's records cannot be
    matched across layers (a layer missing, or other numbers of records or tokens)."""
    out = []
    for rank in sorted(by_rank):
        per_layer = by_rank[rank]
        if sorted(per_layer) != layers:
            return None
        forwards = [per_layer[layer] for layer in layers]
        if len({len(x) for x in forwards}) != 1:
            return None
        for i in range(len(forwards[0])):
            ids = [x[i] for x in forwards]
            if len({a.shape for a in ids}) != 1:
                return None
            out.append(np.stack(ids, axis=1))
    return np.concatenate(out)


def _sample(kept: Kept, steps: list[int], layers: list[int], topks: set, counts: np.ndarray, every: int, path: Path,
            notes: list[str], extra: dict) -> dict | None:
    """The token-level sample of every `every`-th step from the indices kept while the files were read."""
    if len(topks) != 1:
        warn(notes, f"records route to different numbers of experts ({sorted(topks)}): no token-level sample")
        return None
    by_step: dict = {}
    for (step, rank), per_layer in kept.ids.items():
        by_step.setdefault(step, {})[rank] = per_layer

    def part_of(step: int) -> dict | None:
        ids = _step_tokens(by_step[step], layers)
        return None if ids is None else {"token_experts": ids}

    return collect(steps, every, part_of, counts, path, notes, extra, "steps", "a rank's records there do not hold "
                   "the same tokens in every layer (a layer missing, as under pipeline parallelism, or other numbers "
                   "of records or tokens)")


def read_megatron(path: Path, experts: int | None = None, sample_every: int | None = None) -> "Trace":  # noqa: F821
    fmt = "megatron-router-trace"
    experts = int_option(experts, "experts", path, fmt, "the trace holds expert indices only, not how many experts "
                         "there are", dimension="experts")
    every = sample_every_option(sample_every, path, fmt)
    files = dump_files(path, "*.jsonl", "router trace files")
    sums: dict = {}
    seen: dict = {}
    topks: set = set()
    kept = Kept(smallest_uint(experts - 1)) if every else None
    n_records = sum(_read_file(f, experts, sums, seen, topks, kept) for f in files)
    steps = sorted({s for s, _, _ in sums})
    layers = sorted({layer for _, layer, _ in sums})
    all_ranks = sorted({rank for _, _, rank in sums})
    check_dims(path, records=len(steps), layers=len(layers), experts=experts,
               cells=len(steps) * len(layers) * len(all_ranks) * experts)
    for layer in layers:
        ranks = set().union(*(seen.get((s, layer), set()) for s in steps))
        for s in steps:
            missing = sorted(ranks - seen.get((s, layer), set()))
            if missing:
                raise TraceError(str(path), f"step {s}, layer {layer} has no record from rank(s) {missing}, which "
                                            "recorded that layer at other steps")
    source_counts = np.zeros((len(steps), len(layers), len(all_ranks), experts), dtype=np.int64)
    row, col, src = ({v: i for i, v in enumerate(x)} for x in (steps, layers, all_ranks))
    for (s, layer, rank), c in sums.items():
        source_counts[row[s], col[layer], src[rank]] = c
    counts = source_counts.sum(axis=2)
    notes = [f"Megatron-Core router trace: bincount of top_indices over {experts} experts, {n_records} records from "
             f"{len(files)} file(s) summed per (step, layer) over ranks and micro-batches; steps are the recorded "
             f"iterations; the per-rank sums are kept as {len(all_ranks)} sources"]
    extra: dict = {"records": n_records}
    sample = _sample(kept, steps, layers, topks, counts, every, path, notes, extra) if kept is not None else None
    return build_trace(counts, np.asarray(steps), path=path, fmt=fmt,
                       files=file_hashes(files, path if path.is_dir() else None),
                       layer_names=[f"layer{x}" for x in layers],
                       model=ModelInfo(experts=experts, top_k=topks.pop() if len(topks) == 1 else None),
                       notes=finish_notes(notes), extra=extra, tokens=sample, source_counts=source_counts,
                       sources={"count": len(all_ranks), "unit": "rank",
                                "layout": f"source s is the s-th of ranks {ranges(all_ranks)}: the tokens at that "
                                          "rank's router before dispatch (stage pre_dispatch of its trace file)"})
