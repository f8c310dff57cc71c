"""What several commands share: option parsing, the task options, progress reports, warnings."""

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


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``: a duration for a progress line."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of a long command on stderr, as a context manager; ``update(done, total)`` reports it.

    Under a terminal: a rich bar with the count, the elapsed time and the time left. Otherwise (a
    pipe, a log file, CI, ``nohup``): one plain line at the first report, then each time another
    `every` of the total is done (but not within `min_seconds` of the last line), and at the end,
    with the time elapsed and left, so that a long run never looks hung. `unit` names what is
    counted; `detail(done)` adds text (a rate) to each report; `transient` removes the bar when done.
    """

    def __init__(self, description: str, unit: str = "", *, every: float = 0.1, min_seconds: float = 2.0,
                 detail=None, transient: bool = True, enabled: bool = True, file=None):
        from rich.console import Console

        self.description, self.unit, self.every, self.detail = description, unit, every, detail
        self.min_seconds = min_seconds
        self.enabled, self.transient = enabled, transient
        self.file = file if file is not None else sys.stderr
        self.console = Console(file=self.file)
        self.bar, self.task = None, None
        self.started = self.last_time = 0.0
        self.last_done: int | None = None
        self.last_bucket = -1

    def __enter__(self) -> "Progress":
        import time

        self.started = time.monotonic()
        if self.enabled and self.console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn(self.unit), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                           TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=self.transient)
            self.bar.__enter__()
            self.task = self.bar.add_task(self.description, total=None, detail="")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, done: int, total: int | None = None, description: str | None = None) -> None:
        """`done` of `total` units are done (`total` None: not known yet); a new `description` starts over
        (the next of several jobs)."""
        import time

        if not self.enabled:
            return
        if description is not None and description != self.description:
            self.description, self.last_done, self.last_bucket, self.started = description, None, -1, time.monotonic()
            if self.bar is not None:
                self.bar.reset(self.task, total=total, completed=0, description=description)
        if self.bar is not None:
            detail = self.detail(done) if self.detail else ""
            if self.last_done is None and done > 1:  # resumed work, done at once, is not speed: start the clock here
                self.bar.reset(self.task, total=total, completed=done, detail=detail)
            else:
                self.bar.update(self.task, completed=done, total=total, detail=detail)
            self.last_done = done
            return
        now = time.monotonic()
        bucket = int(done / total / self.every + 1e-9) if total else 0
        finished = bool(total) and done >= total
        if self.last_done is not None and not finished and (
                bucket <= self.last_bucket or now - self.last_time < self.min_seconds):
            return
        if finished and self.last_done == done:
            return
        parts = [f"{done}/{total}" if total else str(done)] + ([self.unit] if self.unit else [])
        line = f"{self.description}: {' '.join(parts)}"
        if total:
            line += f" ({100 * done / total:.0f}%)"
        line += f", {duration(now - self.started)} elapsed"
        if total and not finished and self.last_done is not None and done > self.last_done:
            rate = (done - self.last_done) / max(now - self.last_time, 1e-9)
            line += f", ~{duration((total - done) / rate)} left"
        if self.detail:
            line += f", {self.detail(done)}"
        print(line, file=self.file, flush=True)
        self.last_done, self.last_time, self.last_bucket = done, now, bucket


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
