"""ARIMA fits per second: statsforecast vs statsmodels, same order, same real series.

    python benchmarks/arima_fits.py [--dataset smartmoe-ae] [--series 48] [--window 1000] [--bin 10]
                                    [--order 0,1,1] [--horizon 200] [--n-jobs -1]

Fits (and forecasts `horizon` points of) `series` series of `window` iterations in points of
`bin` iterations (100 points with the defaults), taken from the middle of the dataset as the
predictor takes them (E * p), first in this process with each engine, then
through the predictor's process pool (both as the predictor runs them: one BLAS thread per
process) with `n-jobs` workers. Prints fits/s and the ratio to statsmodels measured in the same
run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np


def main() -> None:
    from datasets_registry import registry
    from datasets_registry.registry import DEFAULT_DATASET
    from models.arima import Arima, fitted_series, parse_order

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=DEFAULT_DATASET)
    ap.add_argument("--series", type=int, default=48)
    ap.add_argument("--window", type=int, default=1000, help="iterations")
    ap.add_argument("--bin", type=int, default=10, help="iterations per point")
    ap.add_argument("--order", default="0,1,1")
    ap.add_argument("--horizon", type=int, default=200)
    ap.add_argument("--n-jobs", type=int, default=-1)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    tr = registry.load(args.dataset)
    T, L, E = tr.shape
    Y = fitted_series(tr.proportions[: T // 2], tr.steps[: T // 2], args.window, args.bin)
    Y = np.ascontiguousarray(Y[np.random.default_rng(0).choice(L * E, size=min(L * E, args.series), replace=False)])
    order = parse_order(args.order)
    workers = len(os.sched_getaffinity(0)) if args.n_jobs in (-1, 0) else args.n_jobs
    rows = {}
    for n_jobs, label in ((1, "1 process"), (workers, f"{workers} workers")):
        for engine in ("statsmodels", "statsforecast"):
            pred = Arima(engine=engine, n_jobs=n_jobs, order=args.order, window=args.window, bin=args.bin)
            pred._map(Y[: 2 * n_jobs], order, args.horizon, None)  # warm-up: imports, numba, the pool
            t0 = time.perf_counter()
            pred._map(Y, order, args.horizon, None)
            rows[f"{engine} ({label})"] = len(Y) / (time.perf_counter() - t0)
    base = rows["statsmodels (1 process)"]
    print(
        f"{args.dataset}: {len(Y)} series x {Y.shape[1]} points, order ({args.order}), {args.horizon}-point forecasts"
    )
    for name, rate in rows.items():
        print(f"  {name:28s} {rate:8.1f} fits/s   x{rate / base:5.1f} vs statsmodels (1 process)")
    print(json.dumps({k: round(v, 2) for k, v in rows.items()}))


if __name__ == "__main__":
    main()
