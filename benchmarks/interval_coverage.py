"""Coverage of the probabilistic predictors' 80% and 90% intervals by state, and the routing's overdispersion.

    python benchmarks/interval_coverage.py --write                  # every trace and predictor (about 1.5 h of CPU)
    python benchmarks/interval_coverage.py --dataset tiny-cpu-s1    # some traces only (repeatable)
    python benchmarks/interval_coverage.py --model sw_quantiles --model dirmult --write  # some predictors (minutes)

With --dataset or --model and --write, only those rows of the table are replaced; the others stay as the doc
shows them. sw_quantiles and dirmult take seconds to a minute a trace; ARIMA and the LSTM (their own intervals,
docs/models.md) one to twenty minutes on 2 cores, the most on the 350M and 128-expert traces.

For every built-in training or serving trace (the probe traces, a record every 100 iterations, have
one record in sw_avg's 100-iteration window and are left out) and smartmoe-ae, on the default task
at the 1,000-iteration horizon: per probabilistic predictor the share of (record, expert) shares
inside its central 80% and 90% intervals, by the state of the layer at the origin, and its quantile
loss over sw_quantiles' (scaled_quantile_loss). Per trace, the overdispersion the Dirichlet-multinomial
fits (``1 + (N - 1) rho``: a record's share variance over a multinomial's of N routed slots), median over
(origin, layer) by state, from the windows dirmult sees. The table in docs/results.md sits between
``<!-- table: coverage -->`` and ``<!-- /table -->``; tests/test_interval_coverage.py recomputes a row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.doc_tables import table_cells, write_table  # noqa: E402

DOC = REPO / "docs" / "results.md"
HORIZON = 1000  # iterations
#: The window's empirical quantiles (the reference), the Dirichlet-multinomial, and two models' own intervals.
MODELS = ("sw_quantiles", "dirmult", "arima", "lstm")
HEAD = ["dataset", "model", "80% transient", "80% stable", "90% transient", "90% stable", "scaled quantile loss",
        "overdispersion transient", "overdispersion stable", "routed slots"]


def datasets() -> list[str]:
    """The built-in traces with a time axis fine enough for a 100-iteration window, then smartmoe-ae."""
    from datasets_registry import registry, storage

    out = []
    for entry in registry.entries():
        card = storage.read_card(entry.folder)
        if entry.kind == "builtin" and not card.static and "probe_of" not in card.extra:
            out.append(entry.id)
    return sorted(set(out)) + ["smartmoe-ae"]


def overdispersion(dataset: str) -> dict[str, float]:
    """Median fitted overdispersion by state over the (origin, layer) pairs of the task at :data:`HORIZON`, and the
    median routed slots per record."""
    import numpy as np

    from bench.states import detect_states
    from bench.task import Task, rolling_origins
    from datasets_registry import registry
    from models.probabilistic import DirichletMultinomial, fit_dirichlet_multinomial

    trace, task = registry.load(dataset), Task(dataset, horizons=(HORIZON,))
    window = DirichletMultinomial.defaults["window"]
    stable = detect_states(trace.proportions, trace.steps, task.states)
    values: dict[bool, list] = {True: [], False: []}
    slots = []
    for o in rolling_origins(trace.steps, task)[HORIZON].records:
        start = int(np.searchsorted(trace.steps[:o], trace.steps[o - 1] - window, side="right"))
        fit = fit_dirichlet_multinomial(trace.counts[min(start, o - 1) : o])
        for l, phi in enumerate(fit.overdispersion):
            values[bool(stable[o, l])].append(phi)
        slots.append(np.median(fit.slots))
    med = {s: float(np.median(v)) if v else float("nan") for s, v in values.items()}
    return {"transient": med[False], "stable": med[True], "slots": float(np.median(slots))}


def rows(dataset: str, models: tuple[str, ...] = MODELS) -> list[list[str]]:
    """The table's rows of one trace: one per model."""
    from bench.api import run

    disp = overdispersion(dataset)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    def times(x: float) -> str:
        return "-" if x != x else f"{x:.1f}"

    out = []
    for model in models:
        h = run(model, dataset, horizons=[HORIZON], track=False).horizons[HORIZON]
        scaled = h.value("scaled_quantile_loss")
        coverage = [pct(h.value(f"coverage_{c}", s)) for c in (80, 90) for s in ("transient", "stable")]
        out.append([f"`{dataset}`", model, *coverage, "-" if scaled is None else f"{scaled:.3f}",
                    times(disp["transient"]), times(disp["stable"]), f"{disp['slots']:,.0f}"])
    return out


def table(body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|---|---|" + "---:|" * (len(HEAD) - 2)]
    note = ("\nCoverage in % of (record, expert) shares inside the interval, at the 1,000-iteration horizon, by the "
            "state of the layer at the origin (- where a trace has no origin in that state); scaled quantile loss over "
            "all origins, against sw_quantiles; overdispersion: the Dirichlet-multinomial's fitted share variance over "
            "the multinomial's of the routed slots per record, median over (origin, layer).\n")
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n" + note


def shown_rows() -> dict[tuple[str, str], list[str]]:
    """The table docs/results.md shows, by (dataset, model)."""
    return {(r[0].strip("`"), r[1]): r for r in table_cells(DOC, "coverage")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", help="only these traces (default: every one)")
    parser.add_argument("--model", action="append", choices=MODELS, help="only these predictors (default: every one)")
    parser.add_argument("--write", action="store_true", help="replace the table's rows in docs/results.md")
    args = parser.parse_args(argv)
    models = tuple(m for m in MODELS if m in (args.model or MODELS))
    body = []
    for dataset in args.dataset or datasets():
        for r in rows(dataset, models):
            body.append(r)
            print(" | ".join(r[:2] + r[2:7]), file=sys.stderr, flush=True)
    if args.dataset or args.model:  # the other rows stay as the doc shows them
        fresh = {(r[0].strip("`"), r[1]): r for r in body}
        merged = {**shown_rows(), **fresh}
        order = {d: i for i, d in enumerate(datasets())}
        body = sorted(merged.values(), key=lambda r: (order.get(r[0].strip("`"), len(order)), MODELS.index(r[1])))
    text = table(body)
    print(text, end="")
    if args.write:
        write_table(DOC, "coverage", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
