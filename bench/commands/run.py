"""`python -m bench run`: evaluate one model on one or more datasets over rolling origins."""

from __future__ import annotations

import argparse
import json
import sys


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    """The task options shared by `run`, `tune` and `grid`."""
    p.add_argument("--horizon", type=int, action="append", default=None, metavar="ITERS",
                   help="forecast horizon in iterations; repeat for several (default: 1000 and 2000)")
    p.add_argument("--stride", type=int, default=100, help="iterations between origins (default 100)")
    p.add_argument("--min-history", type=int, default=100, help="iterations of history before the first origin (default 100)")
    p.add_argument("--first-origin", type=int, default=None, help="iteration of the first origin (default: first step + min history)")
    p.add_argument("--train", action="append", default=[], metavar="DATASET", help="a whole training trace for the predictor; repeatable")
    p.add_argument("--refit", default="every", help="refit policy: every | every:K | once (default every)")
    p.add_argument("--state-window", type=int, default=100, help="state detector window in iterations (default 100)")
    p.add_argument("--state-threshold", type=float, default=2.5, help="state detector drift/noise threshold (default 2.5)")


def task_from_args(args, dataset: str):
    from bench.task import StateConfig, Task

    return Task(dataset=dataset, horizons=tuple(args.horizon or (1000, 2000)), stride=args.stride, min_history=args.min_history,
                first_origin=args.first_origin, train=tuple(args.train), refit=args.refit,
                states=StateConfig(window=args.state_window, threshold=args.state_threshold))


def register(sub: argparse._SubParsersAction) -> None:
    from datasets_registry.registry import DEFAULT_DATASET

    p = sub.add_parser("run", help="evaluate a model over rolling origins, log to MLflow",
                       description="Evaluate a predictor at every rolling origin of a dataset and log the run to MLflow.")
    p.add_argument("--model", default="sw_avg", help="built-in name, plugin name, sktime:NAME, darts:NAME or path/file.py:Class (default sw_avg)")
    p.add_argument("--dataset", action="append", default=None, help=f"dataset id; repeatable (default {DEFAULT_DATASET})")
    add_task_arguments(p)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="model parameter; `--params best` takes the tuned ones")
    p.add_argument("--params", default=None, choices=["best"], help="'best': the best parameters found by `bench tune` for this model and dataset, "
                   "on the test task (origins after the tuning split, unless --first-origin is given)")
    p.add_argument("--placement", default=None, metavar="G=8,R=8", help="also score expert placement from the forecasts (devices G, replicas R, ...)")
    p.add_argument("--force", action="store_true", help="recompute even if this exact run is cached")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under the data home)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(func=cmd_run)


def progress_bar(description: str, enabled: bool):
    """A rich progress bar on stderr; returns (context manager, callback(done, total))."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True), transient=True, disable=not enabled)
    tid = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(tid, completed=done, total=total)

    return bar, update


def print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    cached = " (cached)" if result.get("cached") else ""
    table = Table(title=f"{result['model']} on {result['dataset']}@{result['dataset_version']}{cached}  [{result['task_fingerprint']}]")
    table.add_column("horizon")
    table.add_column("metric")
    for s in ("all", "transient", "stable"):
        table.add_column(s, justify="right")
    for H, entry in result["horizons"].items():
        for metric, v in entry.items():
            if isinstance(v, dict) and "all" in v:
                cells = [("-" if v[s] is None else f"{100 * v[s]:.3f}%" if metric != "mape" and not metric.startswith("imbalance") and not metric.endswith("_us") else f"{v[s]:.4f}") for s in ("all", "transient", "stable")]
                table.add_row(H, metric, *cells)
        table.add_row(H, "origins (origin x layer by state)", str(entry["n_origins"]), *(str(entry.get("origin_layers_by_state", {}).get(s, "-")) for s in ("transient", "stable")))
        table.add_row(H, "failed origins", str(entry["failures"]), "", "")
    con.print(table)
    con.print(f"{result['seconds']:.2f} s; MLflow run {result['mlflow_run_id'] or '-'}; results in run {result['run_key']}")


def cmd_run(args) -> int:
    from bench import runner
    from datasets_registry.registry import DEFAULT_DATASET

    from .datasets import parse_options

    params = parse_options(args.param)
    results = []
    for dataset in args.dataset or [DEFAULT_DATASET]:
        task, run_params = task_from_args(args, dataset), params
        if args.params == "best":
            from bench.tune import best_params, held_out_task

            run_params = {**best_params(args.model, dataset), **params}
            task = held_out_task(args.model, dataset, task)  # only origins the tuning never saw
        bar, update = progress_bar(f"{args.model} on {dataset}", enabled=sys.stderr.isatty())
        with bar:
            result = runner.run(args.model, dataset, params=run_params, task=task, placement=args.placement, force=args.force,
                                track=not args.no_track, tracking_uri=args.tracking_uri, progress=update)
        results.append(result)
        if not args.json:
            print_result(result)
    if args.json:
        json.dump(results[0] if len(results) == 1 else results, sys.stdout, indent=2)
        print()
    return 0
