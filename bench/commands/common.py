"""What several commands share: option parsing, the task options, the progress bar, warnings."""

from __future__ import annotations

import argparse
import json
import sys


def parse_options(pairs: list[str]) -> dict:
    """KEY=VALUE strings -> dict, values parsed as JSON where they parse (numbers, booleans)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_task_arguments(p: argparse.ArgumentParser) -> None:
    """The task options shared by `run` and `tune`."""
    p.add_argument("--horizon", type=int, action="append", default=None, metavar="ITERS",
                   help="forecast horizon in iterations; repeat for several (default: 1000 and 2000)")
    p.add_argument("--stride", type=int, default=100, help="iterations between origins (default 100)")
    p.add_argument("--min-history", type=int, default=100,
                   help="iterations of history before the first origin (default 100)")
    p.add_argument("--first-origin", type=int, default=None,
                   help="iteration of the first origin (default: first step + min history)")
    p.add_argument("--train", action="append", default=[], metavar="DATASET",
                   help="a whole training trace for the predictor; repeatable")
    p.add_argument("--refit", default="every", help="refit policy: every | every:K | once (default every)")
    p.add_argument("--state-window", type=int, default=100, help="state detector window in iterations (default 100)")
    p.add_argument("--state-threshold", type=float, default=2.5,
                   help="state detector drift/noise threshold (default 2.5)")


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """Time limits of a predictor that is not built in (it runs in a sandboxed worker: bench.isolation)."""
    p.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="wall-clock limit of one call (one origin's forecast) of a third-party predictor (default 120)")
    p.add_argument("--start-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="wall-clock limit of loading a third-party predictor and fitting it on training traces "
                        "(default 600)")
    p.add_argument("--run-timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="wall-clock limit of a third-party predictor's whole run (default 3600)")


def limits_from_args(args):
    from bench.isolation import Limits

    return Limits(seconds_per_call=args.timeout, start_seconds=args.start_timeout, seconds_per_run=args.run_timeout)


def task_from_args(args, dataset: str):
    from bench.task import StateConfig, Task

    return Task(dataset=dataset, horizons=tuple(args.horizon or (1000, 2000)), stride=args.stride,
                min_history=args.min_history, first_origin=args.first_origin, train=tuple(args.train),
                refit=args.refit, states=StateConfig(window=args.state_window, threshold=args.state_threshold))


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


def result_json(result) -> dict:
    """What `--json` prints for a run: its result, and whether it was read back from the cache."""
    return {**result.to_dict(), "cached": result.cached}


def show_warnings() -> None:
    """Print the library's warnings as one ``warning: ...`` line each on stderr (no source lines)."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = show


def print_problems(source: str, problems: list[str]) -> int:
    """Print one ``error: SOURCE: problem`` line per problem on stderr; the exit status of a refusal (1)."""
    for p in problems:
        print(f"error: {source}: {p}", file=sys.stderr)
    return 1
