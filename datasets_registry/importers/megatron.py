"""Megatron-Core router traces (``--moe-routing-trace-path``).

One JSONL file per rank (a folder of them, or one file), one record per (step, layer) and
forward pass: ``{"step", "stage", "block", "layer", "rank", "num_tokens", "topk",
"top_indices": [[...] per token]}``. A record is counted with ``bincount(top_indices)``; the
counts are summed over ranks (and over several records of one rank, step and layer, as
micro-batches write), per (step, layer). Steps are the real iteration numbers.

The trace holds expert indices only, so the number of experts is required: ``experts=N``. It is
not guessed from the largest index seen (an expert that no token chose would vanish).
Every layer must be recorded by the same ranks at every step, so that a truncated rank file
cannot quietly lower the counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..guards import TraceError, check_dims, parse_json, read_regular
from ..trace import ModelInfo
from .common import build_trace, file_hashes
from .dumps import bincount_last, dump_files, expert_ids, finish_notes, int_option, require_keys, whole

FIELDS = ("step", "layer", "rank", "num_tokens", "topk", "top_indices")


def _read_file(f: Path, experts: int, sums: dict, seen: dict, topks: set) -> int:
    """Add one rank file's records into `sums[(step, layer)]`; note who recorded what in `seen`."""
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
        key = (step, layer)
        if key not in sums:  # every (step, layer) holds `experts` counts: bound their number before adding one
            check_dims(f, experts=experts, cells=(len(sums) + 1) * experts)
        sums[key] = sums.get(key, 0) + bincount_last(ids[:, None, :], experts)[0]
        seen.setdefault(key, set()).add(rank)
        topks.add(topk)
        n += 1
    if not n:
        raise TraceError(str(f), "holds no records")
    return n


def read_megatron(path: Path, experts: int | None = None) -> "Trace":  # noqa: F821
    fmt = "megatron-router-trace"
    experts = int_option(experts, "experts", path, fmt, "the trace holds expert indices only, not how many experts "
                         "there are", dimension="experts")
    files = dump_files(path, "*.jsonl", "router trace files")
    sums: dict = {}
    seen: dict = {}
    topks: set = set()
    n_records = sum(_read_file(f, experts, sums, seen, topks) for f in files)
    steps = sorted({s for s, _ in sums})
    layers = sorted({layer for _, layer in sums})
    check_dims(path, records=len(steps), layers=len(layers), experts=experts)
    for layer in layers:
        ranks = set().union(*(seen.get((s, layer), set()) for s in steps))
        for s in steps:
            missing = sorted(ranks - seen.get((s, layer), set()))
            if missing:
                raise TraceError(str(path), f"step {s}, layer {layer} has no record from rank(s) {missing}, which "
                                            "recorded that layer at other steps")
    counts = np.stack([np.stack([sums[(s, layer)] for layer in layers]) for s in steps])
    notes = [f"Megatron-Core router trace: bincount of top_indices over {experts} experts, {n_records} records from "
             f"{len(files)} file(s) summed per (step, layer) over ranks and micro-batches; steps are the recorded "
             "iterations"]
    return build_trace(counts, np.asarray(steps), path=path, fmt=fmt,
                       files=file_hashes(files, path if path.is_dir() else None),
                       layer_names=[f"layer{x}" for x in layers],
                       model=ModelInfo(experts=experts, top_k=topks.pop() if len(topks) == 1 else None),
                       notes=finish_notes(notes), extra={"records": n_records})
