"""The `python -m bench` command line.

Each sub-command lives in its own module under :mod:`bench.commands` with a
``register(subparsers)`` function; modules import heavy libraries only inside the function that
runs the command, so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Sub-command modules, in the order `--help` lists them.
COMMAND_MODULES = [
    "bench.commands.run",
    "bench.commands.datasets",
    "bench.commands.trace",
    "bench.commands.leaderboard",
    "bench.commands.suite",
    "bench.commands.submit",
    "bench.commands.ui",
    "bench.commands.plugins",
    "bench.commands.tune",
    "bench.commands.grid",
    "bench.commands.placement",
    "bench.commands.gps",
    "bench.commands.doctor",
]


class UserError(Exception):
    """An error caused by input (a file, an argument): printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="moe-load-bench: forecast the expert load of Mixture-of-Experts models, and score what the "
                    "forecasts are worth.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from datasets_registry.trace import TraceError

    from .commands.common import show_warnings
    from .tracking import StoreError

    show_warnings()
    try:
        return int(args.func(args) or 0)
    except (UserError, TraceError, StoreError, FileNotFoundError, FileExistsError, LookupError, ValueError) as exc:
        msg = exc.args[0] if isinstance(exc, LookupError) and exc.args else str(exc)
        print(f"error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a rerun resumes", file=sys.stderr)
        return 130
