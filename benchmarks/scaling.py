"""Scaling: one grid's wall time in-process vs a local process pool vs a Dask LocalCluster.

The grid: ARIMA (statsforecast, ``n_jobs=1`` so that all parallelism comes from the executor)
with 2 orders x 4 windows (8 runs; ``--orders``, ``--windows``), horizon 1,000 and stride 2,000
iterations (synthetic: 100 and 20), on a 16-expert trace: a tracer trace whose id contains "16e"
(a top-2 one first) when the registry has one, else a SYNTHETIC one (``datasets_registry.synthetic.switching_trace``,
registered as ``synthetic-16e-<layers>x<records>``, labelled synthetic in its card). Each run is one unit (ARIMA is
not replayable, so its origins are not chunked). For every executor the script times

- startup: creating the executor and importing the model in each worker (a warm-up unit each),
- grid: :func:`bench.executors.run_all` with ``force=True`` (every run computed again),

repeats the rounds (executors interleaved, in a rotated order each round, so that load from
elsewhere hits them alike), checks
that every executor gave identical results, and prints medians with speedups against in-process
measured in the same run. It also reports the executors' per-unit overhead: the wall time of N
trivial units (a function returning its argument) divided by N. With ``--jobs-row``, an extra
row runs the grid in-process with ARIMA's own series-level pool (``n_jobs=-1``) for comparison.

The machine is shared: each round also records the CPU seconds the driver and its workers used
during the grid, and ``cores`` = CPU seconds / wall seconds, i.e. how much of the machine the
executor actually got; the load average after each measurement is printed beside it.

    MOE_LOAD_BENCH_HOME=/tmp/dask-home MOE_LOAD_BENCH_SOURCES=../shared/datasets \\
        python benchmarks/scaling.py [--repeats 2] [--workers 2] [--trivial 200] [--dataset ID]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("inprocess", "local", "dask")


def noop(x):
    return x


def warm_up(seconds: float = 0.5) -> int:
    """Import (and JIT-compile) what the ARIMA units need, then hold the worker a moment so that
    the next warm-up goes to another worker."""
    import warnings

    warnings.simplefilter("ignore")
    import numpy as np
    import statsforecast.arima  # noqa: F401

    import bench.plots  # noqa: F401
    import bench.runner  # noqa: F401
    from models.arima import fit_forecast

    y = 1 + np.sin(np.arange(60.0) / 3) + np.random.default_rng(0).normal(0, 0.1, 60)
    for order in ((1, 0, 1), (0, 1, 1)):  # compile statsforecast's numba code here, not in the first run
        fit_forecast(y, order, "statsforecast", 5, 20)
    time.sleep(seconds)
    return os.getpid()


def dataset(name: str | None, layers: int, records: int) -> str:
    from datasets_registry import registry
    from datasets_registry.synthetic import switching_trace

    if name:
        return name
    tracer = sorted(
        (e.id for e in registry.entries() if "16e" in e.id and not e.id.startswith("synthetic")),
        key=lambda i: ("top2" not in i, i),
    )
    if tracer:
        return tracer[0]
    name = f"synthetic-16e-{layers}x{records}"
    if name not in {e.id for e in registry.entries()}:
        registry.add(switching_trace(records=records, layers=layers, experts=16, switch=records // 2, seed=16), name)
    return name


SLEEPY = str(Path(__file__).resolve().parents[1] / "tests" / "bench" / "executor_models.py") + ":SlowAverage"


def grid_specs(ds: str, args, n_jobs: int = 1):
    from bench.executors import RunSpec
    from bench.task import Task

    task = Task(ds, horizons=(args.horizon,), stride=args.stride, min_history=100)
    if args.sleep:  # sw_avg that sleeps at each forecast: the executors' concurrency without CPU contention
        return [
            RunSpec.of(SLEEPY, ds, {"window": window, "delay": args.sleep}, task)
            for window in range(10, 10 + 10 * len(args.orders) * len(args.windows), 10)
        ]
    # bin 1: a point per record, so the windows are records of this per-iteration trace
    return [
        RunSpec.of("arima", ds, {"order": order, "window": window, "bin": 1, "n_jobs": n_jobs}, task)
        for order in args.orders
        for window in args.windows
    ]


def wait_all(ex, futures) -> list:
    pending, out = set(futures), []
    while pending:
        for f in ex.wait_any(pending):
            pending.discard(f)
            out.append(f.result())
    return out


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and all its live descendants (the workers)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me] + me.children(recursive=True):
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def time_grid(kind: str, specs, workers: int) -> dict:
    from bench.executors import make_executor, run_all

    t0 = time.perf_counter()
    ex = make_executor(kind, workers=None if kind == "inprocess" else workers)
    try:
        wait_all(
            ex,
            [
                ex.submit(warm_up, 0.5 if kind != "inprocess" else 0.0, key=f"warm-{i}-{time.time()}")
                for i in range(ex.workers)
            ],
        )
        startup = time.perf_counter() - t0
        t1, c1 = time.perf_counter(), cpu_seconds()
        outcome = run_all(specs, ex, force=True, chunk=0)
        grid, cpu = time.perf_counter() - t1, cpu_seconds() - c1
    finally:
        ex.close()
    assert not outcome.failures, outcome.failures
    return {"startup": startup, "grid": grid, "cpu": cpu, "results": outcome.results}


def time_trivial(kind: str, n: int, workers: int) -> float:
    """Seconds per trivial unit, on a started and warmed-up executor."""
    from bench.executors import make_executor

    ex = make_executor(kind, workers=None if kind == "inprocess" else workers)
    try:
        wait_all(ex, [ex.submit(noop, i, key=f"warm-noop-{i}") for i in range(2 * ex.workers)])
        t0 = time.perf_counter()
        out = wait_all(ex, [ex.submit(noop, i, key=f"noop-{i}") for i in range(n)])
        wall = time.perf_counter() - t0
    finally:
        ex.close()
    assert sorted(out) == list(range(n))
    return wall / n


def table(rows: dict[str, list[dict]]) -> dict:
    """Medians, bests and speedups against in-process: per round (same-round ratios), and of the bests."""
    base = rows["inprocess"]
    print(
        f"\n{'executor':>28} {'startup s':>10} {'grid s (median)':>16} {'grid s (best)':>14} {'CPU s':>8} {'cores':>6} "
        f"{'speedup grid':>13} {'speedup best':>13} {'speedup with startup':>21}"
    )
    out = {}
    for kind, ms in rows.items():
        grid = [m["grid"] for m in ms]
        ratio = statistics.median(b["grid"] / m["grid"] for b, m in zip(base, ms))
        ratio_total = statistics.median(
            (b["grid"] + b["startup"]) / (m["grid"] + m["startup"]) for b, m in zip(base, ms)
        )
        best = min(b["grid"] for b in base) / min(grid)
        startup = statistics.median(m["startup"] for m in ms)
        cpu = statistics.median(m["cpu"] for m in ms)
        cores = statistics.median(m["cpu"] / m["grid"] for m in ms)
        print(
            f"{kind:>28} {startup:10.2f} {statistics.median(grid):16.2f} {min(grid):14.2f} {cpu:8.1f} {cores:6.2f} "
            f"{ratio:12.2f}x {best:12.2f}x {ratio_total:20.2f}x"
        )
        out[kind] = {
            "startup_s": startup,
            "grid_s": grid,
            "cpu_s": [m["cpu"] for m in ms],
            "cores": cores,
            "speedup_grid_median": ratio,
            "speedup_grid_best": best,
            "speedup_with_startup_median": ratio_total,
        }
    return out


def comparable(results: list[dict]) -> str:
    drop = {"seconds", "cached", "mlflow_run_id", "artifacts", "extras", "code_version"}
    return json.dumps([{k: v for k, v in r.items() if k not in drop} for r in results], sort_keys=True, default=str)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trivial", type=int, default=200, help="trivial units for the per-unit overhead")
    ap.add_argument(
        "--dataset", default=None, help="a 16-expert dataset id (default: a tracer '16e' trace, else synthetic)"
    )
    ap.add_argument("--layers", type=int, default=2, help="layers of the synthetic trace")
    ap.add_argument("--records", type=int, default=400, help="records of the synthetic trace")
    ap.add_argument(
        "--horizon", type=int, default=None, help="forecast horizon in iterations (default 1000; synthetic 100)"
    )
    ap.add_argument("--stride", type=int, default=None, help="iterations between origins (default 2000; synthetic 20)")
    ap.add_argument("--orders", nargs="+", default=["1,0,1", "0,1,1"], help="ARIMA orders of the grid")
    ap.add_argument(
        "--windows",
        type=int,
        nargs="+",
        default=[60, 100, 150, 200],
        help="ARIMA windows of the grid (iterations, one point per iteration)",
    )
    ap.add_argument(
        "--sleep",
        type=float,
        default=0.0,
        metavar="S",
        help="instead of ARIMA, the same number of sw_avg runs sleeping S seconds per forecast "
        "(measures the executors' concurrency when the cores are busy with other work)",
    )
    ap.add_argument("--jobs-row", action="store_true", help="add a row: in-process with ARIMA's own pool (n_jobs=-1)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()

    from datasets_registry import registry

    ds = dataset(args.dataset, args.layers, args.records)
    synthetic = ds.startswith("synthetic")
    args.horizon = args.horizon or (100 if synthetic else 1000)
    args.stride = args.stride or (20 if synthetic else 2000)
    trace = registry.load(ds)
    specs = grid_specs(ds, args)
    print(
        f"dataset {ds} ({trace.card.title}): {trace.records} records x {trace.layers} layers x {trace.experts} "
        f"experts; "
        f"grid: {len(specs)} "
        + (
            f"sw_avg runs sleeping {args.sleep} s per forecast"
            if args.sleep
            else f"ARIMA runs (orders {args.orders} x windows {args.windows}, n_jobs=1)"
        )
        + f", horizon {args.horizon}, "
        f"stride {args.stride}; {args.workers} workers; {args.repeats} rounds; "
        f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    rows = {k: [] for k in KINDS}
    if args.jobs_row and not args.sleep:
        rows["inprocess, arima n_jobs=-1"] = []
    reference = None
    for r in range(args.repeats):
        kinds = list(rows)
        for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:  # rotated, so that no executor always goes last
            m = (
                time_grid("inprocess", grid_specs(ds, args, -1), args.workers)
                if "n_jobs" in kind
                else time_grid(kind, specs, args.workers)
            )
            if "n_jobs" not in kind:
                reference = reference or comparable(m["results"])
                assert comparable(m["results"]) == reference, f"{kind}: results differ from the first executor's"
            rows[kind].append(m)
            print(
                f"  round {r + 1} {kind:>28}: startup {m['startup']:6.2f} s, grid {m['grid']:7.2f} s, "
                f"CPU {m['cpu']:7.2f} s = {m['cpu'] / m['grid']:.2f} cores  (load average after: "
                f"{os.getloadavg()[0]:.2f})",
                flush=True,
            )
    figures = {"dataset": ds, "runs": len(specs), "workers": args.workers, "rounds": args.repeats, "executors": {}}
    if args.repeats:
        print("\nidentical results across inprocess, local, dask: yes")
        figures["executors"] = table(rows)
    if args.trivial:
        print(f"\nper-unit overhead ({args.trivial} trivial units, warm executor):")
        figures["per_unit_ms"] = {}
        for kind in KINDS:
            per = time_trivial(kind, args.trivial, args.workers)
            figures["per_unit_ms"][kind] = per * 1e3
            print(f"{kind:>28} {per * 1e3:8.3f} ms/unit")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
