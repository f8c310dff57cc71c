"""`python -m bench run`: evaluate one model on one or more datasets over rolling origins."""

from __future__ import annotations

import argparse
import json
import sys

from .common import (
    Progress,
    add_limit_arguments,
    add_task_arguments,
    limits_from_args,
    parse_options,
    result_json,
    task_from_args,
)


def register(sub: argparse._SubParsersAction) -> None:
    from datasets_registry.registry import DEFAULT_DATASET

    p = sub.add_parser(
        "run",
        help="evaluate a model over rolling origins, log to MLflow",
        description="Evaluate a predictor at every rolling origin of a dataset and log the run to MLflow.",
    )
    p.add_argument(
        "--model",
        default="sw_avg",
        help="built-in name, plugin name, sktime:NAME, darts:NAME or path/file.py:Class (default sw_avg)",
    )
    p.add_argument(
        "--dataset", action="append", default=None, help=f"dataset id; repeatable (default {DEFAULT_DATASET})"
    )
    add_task_arguments(p)
    add_limit_arguments(p)
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model parameter; `--params best` takes the tuned ones",
    )
    p.add_argument(
        "--params",
        default=None,
        choices=["best"],
        help="'best': the best parameters found by `bench tune` for this model and dataset, on the test "
        "task (origins after the tuning split, unless --first-origin is given)",
    )
    p.add_argument(
        "--placement",
        default=None,
        metavar="G=8,R=8",
        help="also score expert placement from the forecasts (devices G, replicas R, ...)",
    )
    p.add_argument(
        "--per-source",
        action="store_true",
        help="also score per-source forecasts: the traffic-weighted error on the tokens that cross a rank or node "
        "(a dataset with sources; docs/protocol.md)",
    )
    p.add_argument("--force", action="store_true", help="recompute even if this exact run is cached")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under the data home)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(func=cmd_run)


def _cell(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "mape" or metric.startswith(("imbalance", "scaled_")) or metric.endswith("_us"):
        return f"{value:.4f}"
    return f"{100 * value:.3f}%"


def print_result(result) -> None:
    """The run's summary as a table: per horizon, every metric by state, origins and failures."""
    from rich.console import Console
    from rich.table import Table

    from bench.states import STATES

    con = Console()
    cached = " (cached)" if result.cached else ""
    table = Table(
        title=f"{result.model} on {result.dataset}@{result.dataset_version}{cached}  [{result.task_fingerprint}]"
    )
    table.add_column("horizon")
    table.add_column("metric")
    for s in STATES:
        table.add_column(s, justify="right")
    for H, h in sorted(result.horizons.items()):
        for metric, by in h.metrics.items():
            table.add_row(str(H), metric, *(_cell(metric, by.get(s)) for s in STATES))
        table.add_row(
            str(H),
            "origins (origin x layer by state)",
            str(h.origins),
            *(str(h.origin_layers.get(s, "-")) for s in STATES[1:]),
        )
        table.add_row(str(H), "failed origins", str(h.failures), "", "")
    con.print(table)
    for H, h in sorted(result.horizons.items()):
        if h.verdict.disqualified:
            con.print(f"[bold red]DISQUALIFIED[/bold red] at horizon {H} (the fair-play test, docs/protocol.md; never "
                      f"ranked): " + "; ".join(h.verdict.reasons), highlight=False)
        elif None not in (err := h.value("error_rate"), floor := h.value("noise_floor")) and err < floor:
            con.print(f"[bold yellow]warning[/bold yellow]: at horizon {H} error_rate {_cell('error_rate', err)} is "
                      f"below the noise floor {_cell('noise_floor', floor)}: under token-choice "
                      "routing no honest forecast scores that on average (it suggests the forecast saw the steps it "
                      "forecasts); the fair-play test did not disqualify the run (docs/protocol.md)", highlight=False)
        if h.failures > h.origins / 2:
            con.print(f"[bold yellow]warning[/bold yellow]: {h.failures} of {h.origins} origins failed at horizon {H}; "
                      "their scores are charged (docs/protocol.md)", highlight=False)
    isolation = "" if result.isolation == "in-process" else f"; ran isolated ({result.isolation})"
    con.print(f"{result.seconds:.2f} s; MLflow run {result.mlflow_run_id or '-'}; run {result.run_key}{isolation}")


def cmd_run(args) -> int:
    from bench import runner
    from datasets_registry.registry import DEFAULT_DATASET

    params = parse_options(args.param)
    results = []
    for dataset in args.dataset or [DEFAULT_DATASET]:
        task, run_params = task_from_args(args, dataset), params
        if args.params == "best":
            from bench.tune import best_params, held_out_task

            run_params = {**best_params(args.model, dataset), **params}
            task = held_out_task(args.model, dataset, task)  # only origins the tuning never saw
        with Progress(f"{args.model} on {dataset}", "origins") as progress:
            result = runner.run(
                args.model,
                dataset,
                params=run_params,
                task=task,
                placement=args.placement,
                per_source=args.per_source,
                force=args.force,
                track=not args.no_track,
                tracking_uri=args.tracking_uri,
                progress=progress.update,
                limits=limits_from_args(args),
            )
        results.append(result)
        if not args.json:
            print_result(result)
    if args.json:
        docs = [result_json(r) for r in results]
        json.dump(docs[0] if len(docs) == 1 else docs, sys.stdout, indent=2)
        print()
    return 0
