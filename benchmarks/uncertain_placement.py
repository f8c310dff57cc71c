"""Placement under uncertainty: replicas by an upper quantile of the forecast against replicas by its mean.

    python benchmarks/uncertain_placement.py                       # the traces below, print the table
    python benchmarks/uncertain_placement.py --write               # replace the table in docs/placement.md
    python benchmarks/uncertain_placement.py --dataset smartmoe-ae  # some traces only (repeatable)

On each trace, at every origin of the task below, one probabilistic predictor forecasts the next
1,000 iterations: its point forecast (sw_avg's, for both predictors here) and its quantiles. Two
placements of the same G=8 devices with R=8 redundant slots are made from that one forecast and scored
on the horizon's actual per-step counts by the step-time model (bench.placement, bench.steptime):

- *point*: the project's EPLB-like policy on the forecast mean (:func:`bench.placement.place`);
- *spread*: the same, replicating by the ``1 - threshold`` quantile (:func:`bench.placement.place_with_spread`:
  an expert gets a replica while the forecast probability that it overloads its devices exceeds the
  threshold at the lowest capacity the slots allow), for thresholds 0.1, 0.05 and 0.01.

The table gives the point policy's layer-time gain over the static placement, the oracle's (the policy on
the horizon's actual mean), and each spread policy's change of layer time against the point policy
(negative: faster), mean over origins then layers, with the transient / stable split for threshold 0.05,
its 95% interval (the leaderboard's paired circular block bootstrap of the origins, blocks of the 10 origins one
horizon spans: :func:`leaderboard.stats.resample_means`) and the shares of (origin, layer)
pairs where it is faster and slower. The table in docs/placement.md sits between
``<!-- table: spread -->`` and ``<!-- /table -->``; tests/test_uncertain_placement.py recomputes a row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.doc_tables import table_cells, write_table  # noqa: E402

DOC = REPO / "docs" / "placement.md"
#: Training traces of 16, 64 and 128 experts, a serving trace of small batches, and smartmoe-ae.
DATASETS = ("gpt3-125m-16e-top2-s1", "gpt3-125m-64e-ds6-s1", "gpt3-125m-128e-top2-s1", "gpt3-125m-16e-serve-shift-b512",
            "smartmoe-ae")
MODELS = ("dirmult", "sw_quantiles")
HORIZON, STRIDE = 1000, 100  # iterations: a plan per 1,000 iterations, an origin every 100 (the default task's)
SPEC = "G=8,R=8"
THRESHOLDS = (0.1, 0.05, 0.01)
HEAD = (["dataset", "experts", "quantiles", "origins", "point vs static", "oracle vs static"]
        + [f"spread {t:g}" for t in THRESHOLDS]
        + ["spread 0.05 95% interval", "spread 0.05 transient", "spread 0.05 stable", "spread 0.05 faster / slower"])


def compare(dataset: str, model: str) -> dict:
    """Per (origin, layer) layer times (microseconds) of the static, point, oracle and spread placements, and the
    layer's state at the origin."""
    import numpy as np

    from bench.placement import PlacementSpec, place, place_with_spread, placement_scores, static_placement
    from bench.states import detect_states
    from bench.task import Task, rolling_origins
    from datasets_registry import registry
    from models import predictor_class

    trace = registry.load(dataset)
    task = Task(dataset, horizons=(HORIZON,), stride=STRIDE)
    spec = PlacementSpec.parse(SPEC).check(trace.experts)
    L, E = trace.layers, trace.experts
    stable = detect_states(trace.proportions, trace.steps, task.states)
    origins = rolling_origins(trace.steps, task)[HORIZON]
    predictor = predictor_class(model)()
    predictor.start(L, E)
    static = static_placement(L, E, spec.devices, spec.nodes)
    out: dict[str, list] = {"static": [], "point": [], "oracle": [], "stable": []} | {t: [] for t in THRESHOLDS}
    fed = 0
    for o, n in zip(origins.records.tolist(), origins.lengths.tolist()):
        predictor.observe(trace.counts[fed:o].copy(), trace.steps[fed:o].copy())
        fed = o
        target = trace.steps[o : o + n].copy()
        estimate = np.asarray(predictor.forecast(target)).mean(axis=0)  # [L, E]
        quantiles = np.asarray(predictor.forecast_quantiles(target)).mean(axis=0)  # [L, E, levels]
        counts = trace.counts[o : o + n]
        actual = trace.proportions[o : o + n].mean(axis=0)

        def time_of(placement, share):
            return placement_scores(placement, share, counts, spec)["layer_time_us"]

        out["static"].append(time_of(static, np.full((L, E), 1.0 / E)))
        out["point"].append(time_of(place(estimate, spec), estimate))
        out["oracle"].append(time_of(place(actual, spec), actual))
        for t in THRESHOLDS:
            out[t].append(time_of(place_with_spread(estimate, quantiles, spec, t), estimate))
        out["stable"].append(stable[o])
    return {k: np.array(v) for k, v in out.items()}


def row(dataset: str, model: str) -> list[str]:
    """The table's row of one trace and quantile forecast."""
    import numpy as np

    from datasets_registry import registry

    c = compare(dataset, model)

    def mean(x, mask=None):
        """Mean over origins, then over layers (a layer without any origin in `mask` left out)."""
        if mask is None:
            mask = np.ones_like(x, dtype=bool)
        per_layer = [x[mask[:, l], l].mean() for l in range(x.shape[1]) if mask[:, l].any()]
        return float(np.mean(per_layer)) if per_layer else float("nan")

    def change(a, b, mask=None) -> str:
        v = mean(a, mask) / mean(b, mask) - 1.0
        return "-" if v != v else f"{100 * v:+.2f}%"

    base = c["point"]

    def gain(faster) -> str:
        return f"{100 * (mean(c['static']) / mean(faster) - 1):.1f}%"

    return [f"`{dataset}`", str(registry.load(dataset).experts), model, str(len(base)), gain(base), gain(c["oracle"]),
            *[change(c[t], base) for t in THRESHOLDS], interval(c[0.05], base, dataset),
            change(c[0.05], base, ~c["stable"]), change(c[0.05], base, c["stable"]),
            f"{100 * float((c[0.05] < base).mean()):.0f}% / {100 * float((c[0.05] > base).mean()):.0f}%"]


def interval(spread, point, dataset: str) -> str:
    """The leaderboard's 95% interval of the change of mean layer time from `point` to `spread` (both [origins,
    layers]): both resampled alike (paired), by blocks of the origins one horizon spans (:mod:`leaderboard.stats`)."""
    import numpy as np

    from leaderboard import stats

    means = stats.resample_means(np.stack([spread.mean(axis=1), point.mean(axis=1)]), HORIZON, STRIDE,
                                 (dataset, HORIZON, "spread"))
    lo, hi = stats.interval(means[0] / means[1] - 1.0)
    return f"[{100 * lo:+.2f}, {100 * hi:+.2f}]%"


def table(body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|---|---:|---|" + "---:|" * (len(HEAD) - 3)]
    note = (f"\nPlacement {SPEC} (8 GPUs, 8 redundant slots) per 1,000-iteration plan, origins every {STRIDE} "
            "iterations, default step-time hardware (docs/placement.md, \"Step-time model\"). *point vs static*, "
            "*oracle vs static*: how much faster than the static placement the layer runs (mean layer time over "
            "origins, then layers). *spread t*: the change of layer time when the replicas follow the 1 - t quantile "
            "instead of the mean (negative: faster), all origins, with its 95% interval for t = 0.05 (paired block "
            "bootstrap of the origins), then by the layer's state (- where a trace has no origin in that state); "
            "*faster / slower*: the shares of (origin, layer) pairs where spread 0.05 is faster and slower than point "
            "(the rest: the same placement).\n")
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n" + note


def shown_rows() -> dict[tuple[str, str], list[str]]:
    """The table docs/placement.md shows, by (dataset, quantiles)."""
    return {(r[0].strip("`"), r[2]): r for r in table_cells(DOC, "spread")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", help="only these traces (default: DATASETS)")
    parser.add_argument("--write", action="store_true", help="replace the table in docs/placement.md")
    args = parser.parse_args(argv)
    body = []
    for dataset in args.dataset or DATASETS:
        for model in MODELS:
            body.append(row(dataset, model))
            print(" | ".join(body[-1]), file=sys.stderr, flush=True)
    text = table(body)
    print(text, end="")
    if args.write:
        write_table(DOC, "spread", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
