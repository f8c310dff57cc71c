"""SGLang's expert distribution recorder (``python/sglang/srt/eplb/expert_distribution.py``).

``stat`` / ``stat_approx`` mode: rank 0 writes ``expert_distribution_recorder_{time}.pt`` =
``dict(rank, logical_count, average_utilization_rate_over_window)``, ``logical_count`` int
``[buffer rows, layers, logical experts]``: one row a forward pass, already summed over ranks
and mapped to logical experts. The rows are the recorder's whole buffer:

- ``--expert-distribution-recorder-buffer-size -1``: a growing buffer, rows in pass order;
- default (1000): a circular buffer. A pass is written at ``_curr_index``, which then advances
  modulo the size; ``reset()`` (run at start and after each dump) zeroes the rows but keeps
  ``_curr_index``, and the dump does not include it. So the unfilled rows are all-zero, and if
  they form one (cyclic) run, the write position is the start of that run and the oldest pass
  the row just after it: the importer rotates the rows into pass order and drops the zero run.
  If there are no zero rows the buffer is full and its order cannot be told from the file (give
  ``ring_start=K``, the oldest row, if known); if the zero rows form several runs, passes with no
  tokens are mixed in and the write position cannot be told either: the zero rows are dropped
  and the rest kept in buffer order. Every such change is warned about and written in the notes.

The dump holds no forward-pass ids: steps are the pass's position, 0..T-1.

``per_pass`` / ``per_token`` mode: every rank writes ``expert_distribution_recorder_{time}_{rank}.pt``
= ``dict(records=[...], last_physical_to_logical_map)``; a record has ``forward_pass_id``,
``rank`` and ``global_physical_count [layers, physical experts]`` (that rank's tokens). Records
are summed over ranks per forward pass and mapped from physical to logical experts with
``last_physical_to_logical_map [layers, physical] -> logical id``.

In ``per_token`` mode a record also holds the pass's tokens on that rank (``_DetailSinglePassGatherer``):
``input_ids`` and ``positions`` (lists) and ``topk_ids_of_layer [layers, tokens, 8]`` (int32 physical expert
ids, -1 past the model's top-k and in dense layers), of which ``global_physical_count`` is the bincount. They
are kept as the trace's token-level sample (``token_experts`` mapped to logical experts, ``token_id``,
``token_position``; option ``sample_every=K``) for the passes every rank recorded per token and whose tokens
add up to their counts; the dump has no request ids (``rids`` is not recorded), so neither ``token_request``
nor ``token_prev`` (a decode token's previous token is in an earlier pass).

In both modes whole-model layer arrays include dense layers as all-zero columns: they are
dropped and named in the card.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..guards import TraceError, check_dims
from ..trace import ModelInfo
from .common import build_trace, file_hashes
from .dumps import (
    counts_array,
    drop_dense_layers,
    drop_empty_records,
    dump_files,
    expert_ids,
    finish_notes,
    int_option,
    load_pt,
    physical_to_logical,
    ranges,
    require_keys,
    warn,
    whole,
    whole_array,
)
from .token_routing import collect, sample_every_option

SOURCE_FILE = "python/sglang/srt/eplb/expert_distribution.py"


def _single_file(path: Path, fmt: str) -> Path:
    if path.is_dir():
        files = sorted(path.glob("*.pt"))
        if len(files) != 1:
            raise TraceError(str(path), f"format {fmt!r} reads one .pt file; this folder has {len(files)}: name the "
                                        "file")
        return files[0]
    return path


def _ring_order(zero: np.ndarray, ring_start: int | None, notes: list[str]) -> tuple[np.ndarray, int | None]:
    """Buffer rows in pass order with the all-zero ones left out, and the oldest row if known."""
    n = len(zero)
    if ring_start is not None:
        start, reason = ring_start, "option ring_start"
    elif not zero.any():
        warn(notes, f"all {n} buffer rows are filled and SGLang's dump does not record the circular buffer's write "
                    "position: rows kept in buffer order, which is pass order only if the buffer did not wrap (buffer "
                    f"size -1, or exactly {n} passes recorded); pass --option ring_start=K (the oldest row) to rotate "
                    "them")
        return np.arange(n), None
    else:
        zero_runs = [int(i) for i in np.flatnonzero(zero != np.roll(zero, 1)) if zero[i]]  # cyclic runs of zero rows
        if len(zero_runs) > 1:
            warn(notes, f"dropped {int(zero.sum())} all-zero rows at buffer positions {ranges(np.flatnonzero(zero))}: "
                        f"they form {len(zero_runs)} separate runs (unfilled rows and passes without tokens look "
                        "alike), so the buffer's write position cannot be told: the other rows are kept in buffer "
                        "order, which may be a rotation of pass order")
            return np.flatnonzero(~zero), None
        start = (zero_runs[0] + int(np.flatnonzero(~np.roll(zero, -zero_runs[0]))[0])) % n
        reason = "the write position: the row after the run of unfilled rows"
    order = np.roll(np.arange(n), -start)
    parts = []
    if zero.any():
        parts.append(f"dropped {int(zero.sum())} unfilled (all-zero) rows {ranges(np.flatnonzero(zero))} of the "
                     f"{n}-row buffer")
    parts.append(f"rows rotated so that buffer row {start} ({reason}) comes first" if start
                 else f"rows kept in buffer order ({reason})")
    if start or zero.any():
        warn(notes, "; ".join(parts))
    else:
        notes.append(parts[0])
    return order[~zero[order]], start


def read_stat(path: Path, ring_start: int | None = None) -> "Trace":  # noqa: F821
    """``stat`` / ``stat_approx`` dump: one ``.pt`` with ``logical_count [passes, layers, experts]``."""
    fmt = "sglang-stat"
    path = _single_file(path, fmt)
    data = require_keys(load_pt(path), ["logical_count"], path, "the dump")
    counts = counts_array(data["logical_count"], path, "logical_count", 3)
    n = counts.shape[0]
    ring_start = int_option(ring_start, "ring_start", path, fmt, "", required=False, minimum=0)
    if ring_start is not None and ring_start >= n:
        raise TraceError(str(path), f"option ring_start={ring_start} is not a row of the {n}-row buffer")
    zero = counts.reshape(n, -1).sum(axis=1) == 0
    if zero.all():
        raise TraceError(str(path), f"logical_count: all {n} rows are zero (nothing was recorded)")
    notes: list[str] = []
    rows, start = _ring_order(zero, ring_start, notes)
    extra: dict = {"buffer_rows": n, "oldest_buffer_row": start, "dropped_rows": int(zero.sum())}
    rate = data.get("average_utilization_rate_over_window")
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        extra["average_utilization_rate_over_window"] = float(rate)
    labels = [f"layer{i}" for i in range(counts.shape[1])]
    counts, labels = drop_dense_layers(counts[rows], labels, path, notes, extra)
    notes.insert(0, f"SGLang stat recorder ({SOURCE_FILE}): logical_count is already summed over ranks and mapped to "
                    "logical experts; steps are pass positions 0..T-1 (the dump holds no forward-pass ids)")
    return build_trace(counts, np.arange(counts.shape[0]), path=path, fmt=fmt, files=file_hashes([path]),
                       layer_names=labels, model=ModelInfo(experts=counts.shape[2]), step_unit="forward pass",
                       notes=finish_notes(notes), extra=extra)


TOKEN_KEYS = ("input_ids", "positions", "topk_ids_of_layer")


def _read_tokens(rec: dict, f: Path, what: str, shape: tuple[int, int]) -> dict[str, np.ndarray] | None:
    """A per_token record's tokens: ids, positions and physical top-k ids ``[tokens, layers, 8]`` (-1: none)."""
    if not all(k in rec for k in TOKEN_KEYS):
        return None
    ids = whole_array(rec["input_ids"], f, f"{what}.input_ids", 1)
    positions = whole_array(rec["positions"], f, f"{what}.positions", 1)
    topk = whole_array(rec["topk_ids_of_layer"], f, f"{what}.topk_ids_of_layer", 3, minimum=-1)
    layers, physical = shape
    if topk.shape[:2] != (layers, ids.shape[0]) or positions.shape != ids.shape:
        raise TraceError(str(f), f"{what}: topk_ids_of_layer has shape {topk.shape}, input_ids {ids.shape[0]} and "
                                 f"positions {positions.shape[0]} tokens; expected [{layers} layers, tokens, top_k]")
    if topk.size and topk.max() >= physical:
        raise TraceError(str(f), f"{what}.topk_ids_of_layer holds physical expert {topk.max()}, but the map has "
                                 f"{physical}")
    return {"token_id": ids, "token_position": positions, "topk": topk.transpose(1, 0, 2).astype(np.int32)}


def _read_rank_file(f: Path, experts: int | None) -> tuple[dict, dict, np.ndarray]:
    """(forward_pass_id, rank, gatherer_key) -> global_physical_count, -> its tokens (per_token mode, else None),
    and the mapping, of one rank's file."""
    data = require_keys(load_pt(f), ["records", "last_physical_to_logical_map"], f, "the dump")
    mapping = expert_ids(data["last_physical_to_logical_map"], f, "last_physical_to_logical_map", experts, 2)
    if not isinstance(data["records"], (list, tuple)):
        raise TraceError(str(f), f"records must be a list, got {type(data['records']).__name__}")
    out: dict = {}
    tokens: dict = {}
    for i, rec in enumerate(data["records"]):
        what = f"records[{i}]"
        require_keys(rec, ["forward_pass_id", "rank", "global_physical_count"], f, what)
        ids = [whole(rec[key], f, f"{what}.{key}") for key in ("forward_pass_id", "rank")]
        phys = counts_array(rec["global_physical_count"], f, f"{what}.global_physical_count", 2)
        if phys.shape != mapping.shape:
            raise TraceError(str(f), f"{what}.global_physical_count has shape {phys.shape} but "
                                     f"last_physical_to_logical_map has {mapping.shape} [layers, physical experts]")
        key = (*ids, str(rec.get("gatherer_key", "primary")))
        if key in out:
            raise TraceError(str(f), f"{what} repeats forward pass {key[0]} of rank {key[1]}")
        out[key] = phys
        tokens[key] = _read_tokens(rec, f, what, mapping.shape)
    if not out:
        raise TraceError(str(f), "records is empty")
    return out, tokens, mapping


def _pass_tokens(recs: list, mapping: np.ndarray, moe_layers: np.ndarray) -> dict | None:
    """The tokens of one pass over all ranks, logical experts of the MoE layers ``[tokens, L, k]``; None unless
    every record has them and every token has the same number of experts (the first k columns) in every layer."""
    if any(r is None for r in recs):
        return None
    topk = np.concatenate([r["topk"] for r in recs])[:, moe_layers]  # [tokens, L, 8]
    valid = topk >= 0
    k = int(valid[:, :, 0].all() and valid.sum(axis=2).max())
    if k == 0 or not (valid[:, :, :k].all() and not valid[:, :, k:].any()):
        return None
    layer = moe_layers[None, :, None]
    return {"token_experts": mapping[layer, topk[:, :, :k]],
            "token_id": np.concatenate([r["token_id"] for r in recs]),
            "token_position": np.concatenate([r["token_position"] for r in recs])}


def _sample(tokens: dict, steps: np.ndarray, counts: np.ndarray, mapping: np.ndarray, moe_layers: np.ndarray,
            every: int, path: Path, notes: list[str], extra: dict) -> dict | None:
    """The per_token sample of every `every`-th pass: the passes whose tokens add up to their counts exactly."""
    if not any(r is not None for recs in tokens.values() for r in recs):
        return None  # a per_pass dump
    return collect(steps.tolist(), every, lambda step: _pass_tokens(tokens[step], mapping, moe_layers), counts, path,
                   notes, extra, "forward passes", "a rank recorded no tokens for them, a token has fewer experts than "
                   "the others, or their tokens do not add up to global_physical_count")


def read_per_pass(path: Path, experts: int | None = None, sample_every: int | None = None) -> "Trace":  # noqa: F821
    """``per_pass`` / ``per_token`` dump: a folder of per-rank ``.pt`` files (or one of them)."""
    fmt = "sglang-per-pass"
    experts = int_option(experts, "experts", path, fmt, "", required=False, dimension="experts")
    every = sample_every_option(sample_every, path, fmt)
    files = dump_files(path, "*.pt", "SGLang per-pass recorder files")
    records: dict = {}
    tokens: dict = {}
    rank_file: dict[int, Path] = {}
    mapping = first = None
    for f in files:
        recs, toks, m = _read_rank_file(f, experts)
        if mapping is None:
            mapping, first = m, f
        elif not np.array_equal(m, mapping):
            raise TraceError(str(f), f"last_physical_to_logical_map differs from the one in {first.name}")
        for (pass_id, rank, gatherer), phys in recs.items():
            if rank_file.setdefault(rank, f) != f:
                raise TraceError(str(f), f"rank {rank} also has records in {rank_file[rank].name}")
            records.setdefault(pass_id, {}).setdefault(rank, []).append(phys)
            tokens.setdefault(pass_id, {}).setdefault(rank, []).append(toks[(pass_id, rank, gatherer)])
    ranks = sorted(rank_file)
    steps = np.array(sorted(records), dtype=np.int64)
    for pass_id in steps.tolist():
        missing = sorted(set(ranks) - set(records[pass_id]))
        if missing:
            raise TraceError(str(rank_file[missing[0]]), f"forward pass {pass_id} has no record from rank(s) "
                                                         f"{missing}, which recorded other passes")
    E = experts if experts is not None else int(mapping.max()) + 1
    check_dims(path, records=len(steps), layers=mapping.shape[0], experts=E)  # before the [T, L, E] array is allocated
    check_dims(path, cells=len(steps) * len(ranks) * mapping.size)  # and the per-rank [T, S, L, P] one
    per_rank = np.stack([np.stack([np.sum(records[s][r], axis=0) for r in ranks]) for s in steps.tolist()])
    physical = per_rank.sum(axis=1)
    notes = [f"SGLang per-pass recorder ({SOURCE_FILE}): global_physical_count summed over {len(ranks)} rank(s) per "
             f"forward pass and mapped from {mapping.shape[1]} physical to {E} logical experts with "
             "last_physical_to_logical_map (the map at dump time; passes recorded before an EPLB rebalance are mapped "
             "with it too)"]
    extra: dict = {"ranks": ranks, "physical_experts": int(mapping.shape[1])}
    counts = physical_to_logical(physical, mapping, E)
    all_steps = steps
    counts, steps = drop_empty_records(counts, steps, notes, extra, "forward pass")
    moe_layers = np.flatnonzero(counts.sum(axis=(0, 2)) > 0)
    counts, labels = drop_dense_layers(counts, [f"layer{i}" for i in range(counts.shape[1])], path, notes, extra)
    by_pass = {s: [x for r in ranks for x in tokens[s][r]] for s in steps.tolist()}
    sample = _sample(by_pass, steps, counts, mapping, moe_layers, every, path, notes, extra)
    split = _source_split(per_rank[np.isin(all_steps, steps)], ranks, mapping, E, notes)
    if split is not None:
        split = split[:, moe_layers]
    return build_trace(counts, steps, path=path, fmt=fmt, files=file_hashes(files, path if path.is_dir() else None),
                       layer_names=labels, model=ModelInfo(experts=E), step_unit="forward pass",
                       notes=finish_notes(notes), extra=extra, tokens=sample, source_counts=split,
                       sources=None if split is None else {
                           "count": len(ranks), "unit": "rank",
                           "layout": f"source s is the s-th of ranks {ranges(ranks)}: the tokens whose experts that "
                                     "rank selected (its records' global_physical_count)"})


def _source_split(per_rank: np.ndarray, ranks: list[int], mapping: np.ndarray, experts: int,
                  notes: list[str]) -> np.ndarray | None:
    """The per-rank counts ``[T, S, L, P]`` as the trace's per-source split ``[T, L, S, E]`` (logical experts),
    where they are one: each rank's record counts the tokens whose experts it selected (``per_token`` mode and
    the ``select_experts`` gatherer). Not so, and None, with one rank; where every rank recorded the same counts
    (tensor parallelism without DP attention: every rank routes the whole batch); and where every rank's counts
    lie in its own block of physical experts (DeepEP low-latency: a rank records what its experts received)."""
    T, S, L, P = per_rank.shape
    if S == 1:
        notes.append("one rank's records: no per-source split")
        return None
    if all(np.array_equal(per_rank[:, 0], per_rank[:, s]) for s in range(1, S)):
        notes.append(f"all {S} ranks recorded the same counts (each routes the whole batch, as under tensor "
                     "parallelism without DP attention): no per-source split")
        return None
    if P % S == 0 and ranks == list(range(S)):
        block = P // S
        own = np.arange(P)[None, :] // block == np.arange(S)[:, None]  # [S, P]: rank r's own physical experts
        if not (per_rank * ~own[None, :, None, :]).any():
            notes.append(f"every rank's counts lie in its own {block} physical experts (a destination-side record, as "
                         "DeepEP low-latency's): no per-source split")
            return None
    logical = physical_to_logical(per_rank.reshape(T * S, L, P), mapping, experts)
    return logical.reshape(T, S, L, experts).transpose(0, 2, 1, 3)
