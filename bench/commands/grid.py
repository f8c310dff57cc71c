"""`python -m bench grid CONFIG.yaml`: run a whole benchmark grid on an executor (docs/scaling.md)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import Progress, result_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grid",
        help="run a grid of models x parameters x datasets x horizons from a YAML file",
        description="Run every (dataset, model, parameters, horizons) of a grid file, in parallel, "
        "reusing finished runs; then refresh the leaderboard. See docs/scaling.md.",
    )
    p.add_argument("config", help="grid file (YAML), e.g. examples/grid.yaml")
    p.add_argument(
        "--executor",
        choices=["inprocess", "local", "dask"],
        default=None,
        help="where units run (default: the file's `executor:`, else local = all cores)",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="tcp://HOST:8786",
        help="an existing Dask scheduler (implies --executor dask)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes for local / a Dask LocalCluster (default: one per core)",
    )
    p.add_argument(
        "--chunk",
        default=None,
        metavar="N|auto",
        help="origins per chunk of a replayable run; 0 = whole runs (default: the file's, else auto)",
    )
    p.add_argument("--retries", type=int, default=None, help="resubmissions of a failed or lost unit (default 2)")
    p.add_argument("--force", action="store_true", default=None, help="recompute runs even if cached")
    p.add_argument("--no-track", dest="track", action="store_false", default=None, help="do not log to MLflow")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under the data home)",
    )
    p.add_argument("--json", action="store_true", help="print the results as one JSON document on stdout")
    p.set_defaults(func=cmd_grid)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def cmd_grid(args) -> int:
    import signal
    import time

    from bench import grid
    from bench.executors import executor, run_all

    chunk = None if args.chunk in (None, "auto") else int(args.chunk)
    config = grid.override(
        grid.load(args.config),
        executor="dask" if args.address else args.executor,
        address=args.address,
        workers=args.workers,
        retries=args.retries,
        force=args.force,
        track=args.track,
        tracking_uri=args.tracking_uri,
    )
    if args.chunk is not None:
        config.chunk = chunk
    specs = config.specs()
    grid.check(specs)
    t0 = time.perf_counter()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a terminated grid stops its workers as Ctrl-C does
    try:
        with executor(config.executor, config.address, config.workers) as ex:
            with Progress(f"grid on {ex.name} ({ex.workers} workers)", "units") as progress:
                outcome = run_all(
                    specs,
                    ex,
                    chunk=config.chunk,
                    force=config.force,
                    retries=config.retries,
                    track=config.track,
                    tracking_uri=config.tracking_uri,
                    progress=progress.update,
                )
    finally:
        signal.signal(signal.SIGTERM, previous)
    wall = time.perf_counter() - t0
    board = None
    if config.track:  # the leaderboard is built from the MLflow store: only a tracked grid changes it
        from leaderboard.build import from_store

        try:
            board = from_store(config.tracking_uri, datasets=config.datasets)
        except Exception as exc:  # noqa: BLE001 - the grid's results stand whatever the leaderboard does
            print(f"warning: leaderboard not refreshed: {type(exc).__name__}: {exc}", file=sys.stderr)
    if args.json:
        json.dump(
            {
                "results": [None if r is None else result_json(r) for r in outcome.results],
                "failures": outcome.failures,
                "seconds": round(wall, 3),
                "leaderboard": board,
            },
            sys.stdout,
            indent=2,
            default=str,
        )
        print()
    else:
        print_summary(specs, outcome.results, outcome.failures, wall)
        if board is not None:
            from leaderboard.render import print_rich

            print_rich(board)
    return 1 if outcome.failures else 0


def print_summary(specs, results, failures: dict[str, str], wall: float) -> None:
    """One row per run of the grid: its error_rate (all) per horizon, time and run key."""
    from rich.console import Console
    from rich.table import Table

    horizons = sorted({H for r in results if r is not None for H in r.horizons})
    table = Table(title=f"grid: {len(specs)} runs")
    for col in ("model", "params", "dataset", *[f"error_rate h{H}" for H in horizons], "seconds", "run"):
        table.add_column(col, justify="right" if col.startswith(("error", "seconds")) else "left")
    rows = sorted(zip(specs, results), key=lambda sr: (sr[0].dataset, sr[0].model, str(sr[0].params)))
    for spec, r in rows:
        params = ", ".join(f"{k}={v}" for k, v in spec.params) or "-"
        rates = [pct(r.value(H, "error_rate")) if r is not None and H in r.horizons else "-" for H in horizons]
        seconds = "failed" if r is None else f"{r.seconds:.2f}" + (" (cached)" if r.cached else "")
        table.add_row(spec.model, params, spec.dataset, *rates, seconds, "-" if r is None else r.run_key)
    con = Console()
    con.print(table)
    for key, err in failures.items():
        con.print(f"[red]failed[/red] {key}: {err}")
    con.print(f"{wall:.1f} s wall")


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.3f}%"
