"""Harness throughput: sw_avg over both horizons at stride 100 with all metrics, on a trace
shaped like the seed paper's 350M setup (20,000 steps x 12 MoE layers x 128 experts).

Compares, in one run:
  - the harness origin by origin (bench.evaluate.evaluate with vectorised=False: copies of the
    past to the predictor, forecast validation, error_rate / window_error / mape / noise_floor,
    state labels);
  - the harness's vectorised path (the default for built-in estimators: sw_avg's estimates at
    every origin from models.kernels, then the same metrics), whose rows must equal the first's;
  - a bare numpy loop over the same origins computing the same metrics (the baseline);
  - sktime's `evaluate` doing the same work for a subset of series and origins, scaled up.

The trace is SYNTHETIC (datasets_registry.synthetic-style multinomial sampling), used only for
its shape. The three timed implementations run ``--repeats`` rounds, in a rotated order each round,
and the medians are reported; ``--write`` saves the output in benchmarks/results/ and the table of
docs/scale.md. Usage: python benchmarks/harness_throughput.py [--steps 20000] [--sktime-series 4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "harness_throughput.json"
DOC = ROOT / "docs" / "scale.md"


def doc_table(fig: dict) -> str:
    """The table of docs/scale.md from the saved figures."""
    rows = [("harness, origin by origin", fig["harness_cpu_s"]), ("harness, vectorised", fig["vectorised_cpu_s"]),
            ("bare numpy loop", fig["bare_cpu_s"])]
    out = ["| implementation | CPU s (median) | / bare |", "|---|---|---|"]
    out += [f"| {name} | {t:.2f} | {t / fig['bare_cpu_s']:.2f}x |" for name, t in rows]
    return "\n".join(out) + "\n"


def make_trace(steps: int, layers: int, experts: int, seed: int = 0):
    from datasets_registry.trace import Card, Trace

    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (layers, experts))
    walk = np.cumsum(rng.normal(0, 0.01, (steps, layers, experts)), axis=0)
    z = logits + walk + rng.normal(0, 0.02, (steps, layers, experts))
    q = np.exp(z - z.max(axis=2, keepdims=True))
    q /= q.sum(axis=2, keepdims=True)
    counts = rng.multinomial(8192, q.reshape(-1, experts)).reshape(steps, layers, experts)
    counts[:, :, 0] += 1
    return Trace.from_arrays(
        counts, np.arange(steps) + 1, Card(id="synthetic-350m-shape", title="SYNTHETIC"), source="<synthetic>"
    )


def bare_numpy(trace, horizons, stride, min_history, window):
    """The same origins and metrics, written as a plain loop (no harness)."""
    from bench.metrics import noise_floor

    p, steps, totals = trace.proportions, trace.steps, trace.totals
    E = trace.experts
    out = {}
    for H in horizons:
        errs = []
        for s in range(int(steps[0]) + min_history, int(steps[-1]) - H + 1, stride):
            o = int(np.searchsorted(steps, s))
            est = p[max(0, o - window) : o].mean(axis=0)
            truth = p[o : o + H]
            diff = np.abs(est - truth)
            er = diff.sum(axis=2).mean(axis=0)
            we = np.abs(est - truth.mean(axis=0)).sum(axis=1)
            mape = (diff / np.maximum(truth, 1 / (100 * E))).mean(axis=(0, 2))
            nf = noise_floor(truth.mean(axis=0), totals[o : o + H].mean(axis=0))
            errs.append((er, we, mape, nf))
        out[H] = np.mean([e[0] for e in errs], axis=0).mean()
    return out


def sktime_subset(trace, H, stride, min_history, window, series, origins):
    """sktime `evaluate` of a window-mean NaiveForecaster on `series` series, first `origins` folds."""
    import warnings

    import pandas as pd
    from sktime.forecasting.model_evaluation import evaluate
    from sktime.forecasting.naive import NaiveForecaster
    from sktime.split import SlidingWindowSplitter

    warnings.filterwarnings("ignore")
    p = trace.proportions
    n = min_history + stride * (origins - 1) + H
    fh = np.arange(1, H + 1)
    t0 = time.process_time()
    for k in range(series):
        l, e = divmod(k, trace.experts)
        y = pd.Series(p[:n, l, e])
        cv = SlidingWindowSplitter(fh=fh, window_length=window, step_length=stride, initial_window=None)
        # sktime re-enables FutureWarnings on every construction: keep them off the terminal
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            evaluate(NaiveForecaster(strategy="mean", window_length=window), cv=cv, y=y, strategy="refit")
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--sktime-series", type=int, default=4)
    ap.add_argument("--sktime-origins", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="save the figures and docs/scale.md's table")
    ap.add_argument("--doc", action="store_true", help="only rewrite docs/scale.md's table from the saved figures")
    args = ap.parse_args()
    if args.doc:
        from benchmarks.doc_tables import write_table

        write_table(DOC, "throughput", doc_table(json.loads(RESULTS.read_text())))
        return

    from bench.evaluate import evaluate
    from bench.task import Task, rolling_origins
    from models.baselines import SlidingWindowAverage

    trace = make_trace(args.steps, args.layers, args.experts)
    _ = trace.proportions, trace.totals
    task = Task("synthetic", horizons=(1000, 2000), stride=100)
    n_origins = {H: len(o.records) for H, o in rolling_origins(trace.steps, task).items()}

    def run_harness():
        return evaluate(trace, SlidingWindowAverage(window=100), task, vectorised=False)

    def run_fast():
        return evaluate(trace, SlidingWindowAverage(window=100), task)

    def run_bare():
        return bare_numpy(trace, task.horizons, task.stride, task.min_history, 100)

    timed = {"harness": [], "fast": [], "bare": []}
    walls = {k: [] for k in timed}
    out = {}
    kinds = list(timed)
    for r in range(args.repeats):
        for kind in kinds[r % 3 :] + kinds[: r % 3]:
            w0, t0 = time.perf_counter(), time.process_time()
            out[kind] = {"harness": run_harness, "fast": run_fast, "bare": run_bare}[kind]()
            timed[kind].append(time.process_time() - t0)
            walls[kind].append(time.perf_counter() - w0)
    t_harness, t_fast, t_bare = (statistics.median(timed[k]) for k in kinds)
    w_harness, w_fast, w_bare = (statistics.median(walls[k]) for k in kinds)
    ev, fast, bare_err = out["harness"], out["fast"], out["bare"]
    frame = ev.frame()
    harness_err = {H: frame[frame.horizon == H].groupby("layer").error_rate.mean().mean() for H in task.horizons}
    assert fast.frame().equals(frame) and fast.window_forecasts == ev.window_forecasts, "vectorised path differs"
    for H in task.horizons:
        assert abs(harness_err[H] - bare_err[H]) < 1e-12, (H, harness_err[H], bare_err[H])

    S, K = args.sktime_series, args.sktime_origins
    t_sk = sktime_subset(trace, 1000, 100, 100, 100, S, K)
    per_fold = t_sk / (S * K)
    folds_total = sum(n_origins.values()) * args.layers * args.experts
    t_sk_scaled = per_fold * folds_total

    lines = []
    say = lines.append  # the report: printed at the end, and saved with --write
    say(f"trace {trace.shape} (synthetic, 350M-shaped); origins per horizon: {n_origins}")
    say(f"CPU seconds of this process, median of {args.repeats} rounds (wall-clock in brackets; CPU time is "
          "steadier on a shared machine)")
    say(f"harness origin by origin (sw_avg, both horizons, all metrics + states): {t_harness:8.2f} s "
          f"[{w_harness:.2f}]")
    say(f"harness vectorised (identical rows):                                   {t_fast:8.2f} s [{w_fast:.2f}]")
    say(
        f"bare numpy loop, same origins and metrics:                              {t_bare:8.2f} s [{w_bare:.2f}]")
    say(f"harness origin by origin / bare = {t_harness / t_bare:.2f}x; vectorised / bare = {t_fast / t_bare:.2f}x")
    say(f"sktime evaluate: {per_fold * 1e3:.1f} ms per (series, origin) fold on {S} series x {K} origins;")
    say(
        f"  scaled to {folds_total:,} folds:                   {t_sk_scaled:8.0f} s   sktime / harness = "
        f"{t_sk_scaled / t_harness:.0f}x"
    )
    say(
        f"error_rate (all) per horizon, harness = bare: { ({H: round(float(v), 6) for H, v in harness_err.items()}) }"
    )
    print("\n".join(lines))
    if args.write:
        from benchmarks.doc_tables import write_table

        fig = {"shape": list(trace.shape), "repeats": args.repeats, "harness_cpu_s": t_harness,
               "vectorised_cpu_s": t_fast, "bare_cpu_s": t_bare, "harness_cpu_s_all": timed["harness"],
               "vectorised_cpu_s_all": timed["fast"], "bare_cpu_s_all": timed["bare"]}
        RESULTS.write_text(json.dumps(fig, indent=1) + "\n")
        RESULTS.with_suffix(".txt").write_text("\n".join(lines) + "\n")
        write_table(DOC, "throughput", doc_table(fig))


if __name__ == "__main__":
    main()
