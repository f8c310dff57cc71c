"""`python -m bench suite ...`: the declared suites (named, versioned sets of tasks) and whether the local data
matches them."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suite", help="list and show the suites that `submit` runs a predictor on")
    ssub = p.add_subparsers(dest="suite_command", metavar="ACTION", required=True)

    q = ssub.add_parser("list", help="list the declared suites")
    q.add_argument("--json", action="store_true", help="print one JSON array")
    q.set_defaults(func=cmd_list)

    q = ssub.add_parser("show", help="show a suite's tasks, and where the local data differs from them")
    q.add_argument("name", help="suite name, e.g. moe-load-v2")
    q.add_argument("--json", action="store_true", help="print one JSON document")
    q.set_defaults(func=cmd_show)


def cmd_list(args) -> int:
    from bench.suites import SUITES

    rows = [{"name": s.name, "version": s.version, "description": s.description, "tasks": len(s.tasks),
             "datasets": list(s.datasets)} for s in SUITES.values()]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    for r in rows:
        print(f"{r['name']}  version {r['version']}, {r['tasks']} tasks: {r['description']}")
    return 0


def cmd_show(args) -> int:
    from bench import suites

    suite = suites.get(args.name)
    problems = suites.check(suite)
    if args.json:
        json.dump({**suite.to_dict(), "problems": [vars(p) for p in problems]}, sys.stdout, indent=2)
        print()
        return 0
    from rich.console import Console
    from rich.table import Table

    def settings(t) -> str:
        k = t.task
        return (f"horizons {', '.join(map(str, k.horizons))}; stride {k.stride}; min history {k.min_history}; "
                f"refit {k.refit}" + (f"; first origin {k.first_origin}" if k.first_origin is not None else ""))

    shared = len({settings(t) for t in suite.tasks}) == 1
    table = Table(title=f"suite {suite.name}, version {suite.version}: {suite.description}",
                  caption=f"every task: {settings(suite.tasks[0])} (iterations)" if shared else None)
    for col in ("dataset", "fingerprint", "here") + (() if shared else ("task",)):
        table.add_column(col, no_wrap=col != "task")
    for t in suite.tasks:
        here = next((p.kind for p in problems if p.dataset == t.ref), "ok")
        table.add_row(t.ref, t.fingerprint[: len("sha256:") + 16], {"fingerprint": "differs"}.get(here, here),
                      *(() if shared else (settings(t),)))
    Console().print(table)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    return 0
