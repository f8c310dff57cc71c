"""A run evaluated in pieces: layer groups x origin ranges, each reading only its own layers, merged exactly.

A piece holds a group of layers over every record (read from the chunked layout's columns,
:mod:`datasets_registry.chunked`, or sliced from a trace in memory), so its memory is
``records x layers in the group x experts``, not the whole trace's. In it the harness computes
what it computes for a whole trace, on the origins of one range: forecasts, errors, the noise
floor and the state labels. The hindsight floors come from pieces of their own, by origin range
over all layers (the line fit's stopping rule looks at blocks of layers): such a piece reads only
the records its origins' horizons cover. Pieces are independent units; on an executor
(:mod:`bench.executors`, a Dask cluster among them) each worker opens the stored trace itself.

The merge puts the rows back in the single process's order, and the numbers are the same bit
for bit (tests/bench/test_sharded.py) because

- every metric and the state detector are per layer, and numpy reduces a group of
  two or more layers in the same order as all of them (a group of *one* layer is reduced in
  another order, pairwise: :func:`layer_groups` never makes one unless the trace has one layer);
- only predictors whose layers are independent (``Predictor.layerwise``) are split by layers, and
  only replayable ones (``Predictor.replayable``) by origins, as :mod:`bench.executors` chunks runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from datasets_registry.trace import Trace

from .evaluate import Evaluation, evaluate
from .hindsight import OriginFloors, floors_at_origins
from .task import Origins, Task, rolling_origins


@dataclass(frozen=True)
class Piece:
    """Layers ``layers[0]..layers[1]-1`` at the origins ``span[0]..span[1]-1`` (indices in the run's order)."""

    layers: tuple[int, int]
    span: tuple[int, int]


@dataclass
class PieceResult:
    piece: Piece
    evaluation: Evaluation
    seconds: float = 0.0


@dataclass
class ShardedEvaluation:
    """The merged pieces: what one process evaluating the whole trace would have computed."""

    evaluation: Evaluation
    floors: dict[int, OriginFloors]
    pieces: int
    seconds: float  # the pieces' evaluation time, summed

    def frame(self):
        """The per-origin, per-layer rows with the hindsight floor beside the noise floor, as a run stores them."""
        from .runner import with_hindsight

        return with_hindsight(self.evaluation, self.floors) if self.floors else self.evaluation.frame()


def layer_groups(layers: int, size: int) -> list[tuple[int, int]]:
    """Consecutive groups of `size` layers (at least 2); a last group of one joins the one before it."""
    size = max(2, size)
    bounds = list(range(0, layers, size)) + [layers]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        bounds.pop(-2)
    return list(zip(bounds[:-1], bounds[1:]))


def origin_order(steps: np.ndarray, task: Task) -> np.ndarray:
    """The origin records a run evaluates, in order (the union over horizons), as bench.evaluate walks them."""
    return np.unique(np.concatenate([o.records for o in rolling_origins(steps, task).values()]))


def plan(layers: int, origins: int, layers_per_piece: int = 2, origins_per_piece: int | None = None) -> list[Piece]:
    """Layer groups (:func:`layer_groups`) x origin ranges of `origins_per_piece` (default: all in one)."""
    size = origins_per_piece or max(origins, 1)
    spans = [(a, min(a + size, origins)) for a in range(0, origins, size)]
    return [Piece(g, s) for g in layer_groups(layers, layers_per_piece) for s in spans]


def check_splittable(predictor: Any, layers: int, origins: int, pieces: list[Piece], task: Task) -> None:
    """Refuse a split that would change the results (see the module docstring)."""
    name = getattr(predictor, "name", type(predictor).__name__)
    if any(p.layers != (0, layers) for p in pieces) and not getattr(predictor, "layerwise", False):
        raise ValueError(f"{name}: its layers are not forecast independently (layerwise); evaluate all layers "
                         "in one piece")
    if any(p.span != (0, origins) for p in pieces):
        if not getattr(predictor, "replayable", False) or task.refit != "every":
            raise ValueError(f"{name}: origin ranges need a replayable predictor and refit 'every'")


def _open(source: Any):
    """A dataset id opened as stored (a chunked one is not read yet), or a trace object as given."""
    from datasets_registry import registry
    from datasets_registry.chunked import ChunkedTrace, is_chunked

    if isinstance(source, str):
        entry = registry.resolve(source)
        return ChunkedTrace(entry.folder, verify=False) if is_chunked(entry.folder) else registry.load(source)
    return source


def piece_trace(source: Any, layers: tuple[int, int]) -> Trace:
    """The layers of a piece over every record, in memory: from a dataset id (a chunked dataset reads only
    those layers' columns), a :class:`~datasets_registry.chunked.ChunkedTrace` or a :class:`Trace`."""
    import dataclasses

    from datasets_registry.chunked import ChunkedTrace

    source = _open(source)
    if isinstance(source, ChunkedTrace):
        return source.piece(layers)
    l0, l1 = layers
    if layers == (0, source.layers):
        return source
    card = dataclasses.replace(source.card, id=f"{source.id}[layers {l0}:{l1}]", fingerprint="",
                               model=dataclasses.replace(source.card.model, moe_layers=l1 - l0),
                               layer_names=list(source.card.layer_names[l0:l1]))
    return Trace.from_arrays(source.counts[:, l0:l1], source.steps, card, source=f"{source.id} (layers {l0}:{l1})")


def evaluate_piece(source: Any, model: str, params: dict[str, Any] | None, task: Task, piece: Piece) -> PieceResult:
    """One piece: a built-in model (`model`, `params`) on `piece`'s layers and origins of `source`."""
    from models import predictor_class
    from models.registry import spec_kind

    if spec_kind(model) != "builtin":
        raise ValueError(f"{model}: pieces run built-in models only (third-party code runs in bench.isolation's "
                         "sandbox, a whole run at a time)")
    t0 = time.perf_counter()
    trace = piece_trace(source, piece.layers)
    order = origin_order(trace.steps, task)
    whole = piece.span == (0, len(order))
    ev = evaluate(trace, predictor_class(model)(**(params or {})), task, span=None if whole else piece.span)
    return PieceResult(piece, ev, time.perf_counter() - t0)


def floors_piece(source: Any, task: Task, span: tuple[int, int]) -> dict[int, OriginFloors]:
    """The hindsight floors at the origins ``span[0]..span[1]-1`` of the run's order, all layers, from the records
    their horizons cover (read from the chunks that hold them)."""
    import dataclasses

    from datasets_registry.chunked import ChunkedTrace

    source = _open(source)
    steps = source.steps
    order = origin_order(steps, task)
    first, last = int(order[span[0]]), int(order[span[1] - 1])
    picked: dict[int, Origins] = {}
    for H, o in rolling_origins(steps, task).items():
        keep = (o.records >= first) & (o.records <= last)
        picked[H] = dataclasses.replace(o, records=o.records[keep], lengths=o.lengths[keep])
    end = max([int((o.records + o.lengths).max()) for o in picked.values() if len(o.records)], default=first + 1)
    counts = source.read((first, end)) if isinstance(source, ChunkedTrace) else source.counts[first:end]
    p = counts / counts.sum(axis=2, keepdims=True)  # as Trace.proportions computes them
    return floors_at_origins(p, steps[first:end], task, origins=picked, offset=first)


def merge(results: list[PieceResult], layer_names: list[str], horizons: tuple[int, ...],
          floor_parts: list[dict[int, OriginFloors]] = ()) -> ShardedEvaluation:
    """The pieces' rows, window forecasts, failures and timings in the order one process gives them, and the
    floors of the origin ranges in `floor_parts` (in any order) joined."""
    groups = sorted({r.piece.layers for r in results})
    spans = sorted({r.piece.span for r in results})
    have = {(r.piece.layers, r.piece.span): r for r in results}
    missing = [(g, s) for g in groups for s in spans if (g, s) not in have]
    if missing or len(have) != len(results):
        raise ValueError(f"pieces missing or given twice: missing {missing[:3]}, {len(results)} for {len(have)}")
    out = Evaluation(list(layer_names), horizons)
    floors: dict[int, OriginFloors] = {}
    for span in spans:
        parts = [have[(g, span)] for g in groups]
        by_key: list[dict[tuple[int, int], list[dict]]] = []
        for g, part in zip(groups, parts):
            keyed: dict[tuple[int, int], list[dict]] = {}
            for row in part.evaluation.rows:
                keyed.setdefault((row["origin"], row["horizon"]), []).append({**row, "layer": row["layer"] + g[0]})
            by_key.append(keyed)
        for key in by_key[0]:
            for keyed in by_key:
                out.rows.extend(keyed[key])
        for H in sorted({H for p in parts for H in p.evaluation.window_forecasts}):
            steps = parts[0].evaluation.window_forecasts.get(H, {})
            for step in steps:
                out.window_forecasts.setdefault(H, {})[step] = [
                    row for p in parts for row in p.evaluation.window_forecasts[H][step]]
        seen = set()
        for p in parts:
            for f in p.evaluation.failures:
                if (f["horizon"], f["origin"]) not in seen:
                    seen.add((f["horizon"], f["origin"]))
                    out.failures.append(f)
        for p in parts:
            out.seconds += p.evaluation.seconds
            for call, seconds in p.evaluation.timings.items():
                out.timings[call] = out.timings.get(call, 0.0) + seconds
    for part in sorted(floor_parts, key=lambda f: min((int(x.origins[0]) for x in f.values() if len(x.origins)),
                                                      default=0)):
        for H, f in part.items():
            prev = floors.get(H)
            floors[H] = f if prev is None else OriginFloors(
                H, np.concatenate([prev.origins, f.origins]), np.concatenate([prev.origin_steps, f.origin_steps]),
                np.concatenate([prev.constant, f.constant]), np.concatenate([prev.line, f.line]))
    return ShardedEvaluation(out, floors, len(results), sum(r.seconds for r in results))


def evaluate_sharded(dataset: str, model: str, params: dict[str, Any] | None, task: Task, executor=None,
                     layers_per_piece: int = 2, origins_per_piece: int | None = None,
                     floors: bool = True) -> ShardedEvaluation:
    """Evaluate stored dataset `dataset` in pieces on `executor` (default: in this process) and merge them.

    Each piece is a unit that opens the dataset itself (a chunked one reads only its layers' columns), so
    on a cluster the workers need the data home (docs/scaling.md, "A remote Dask cluster").
    """
    from datasets_registry import registry
    from datasets_registry.chunked import ChunkedTrace, is_chunked
    from models import predictor_class

    from .executors import InProcessExecutor, piece_unit, worker_env

    entry = registry.resolve(dataset)
    stored = ChunkedTrace(entry.folder, verify=False) if is_chunked(entry.folder) else registry.load(dataset)
    order = origin_order(stored.steps, task)
    pieces = plan(stored.layers, len(order), layers_per_piece, origins_per_piece)
    check_splittable(predictor_class(model)(**(params or {})), stored.layers, len(order), pieces, task)
    ex = executor or InProcessExecutor()
    env = worker_env()
    tag = f"{dataset}-{model}-{time.time_ns()}"
    futures = [ex.submit(piece_unit, evaluate_piece, (dataset, model, params, task, p), env,
                         key=f"piece-{tag}-{p.layers[0]}-{p.span[0]}") for p in pieces]
    if floors:
        spans = sorted({p.span for p in pieces if p.span[1] > p.span[0]})
        futures += [ex.submit(piece_unit, floors_piece, (dataset, task, s), env, key=f"floors-{tag}-{s[0]}")
                    for s in spans]
    pending, results, floor_parts = set(futures), [], []
    while pending:
        for fut in ex.wait_any(pending):
            pending.discard(fut)
            got = fut.result()
            (results if isinstance(got, PieceResult) else floor_parts).append(got)
    return merge(results, list(stored.card.layer_names), task.horizons, floor_parts)
