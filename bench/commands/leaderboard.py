"""`python -m bench leaderboard`: rank the logged runs per dataset and horizon, and across datasets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="rank the logged runs (tables, skill against sw_avg, win rate)",
        description="Build the leaderboard from the runs in the MLflow tracking store: per dataset and horizon, "
        "each model's errors beside the noise floor; skill against sw_avg, rank and win rate across datasets.",
    )
    p.add_argument(
        "--dataset",
        action="append",
        default=None,
        metavar="ID",
        help="only this dataset (NAME or NAME@VERSION); repeatable",
    )
    p.add_argument("--model", action="append", default=None, metavar="NAME", help="only this model; repeatable")
    p.add_argument("--json", action="store_true", help="print the leaderboard as one JSON document")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="write leaderboard.{md,csv,html} for the selected runs to DIR",
    )
    p.add_argument(
        "--write",
        action="store_true",
        help="refresh the committed leaderboard: run the reference models on the built-in datasets (cached runs "
             "reused), "
        "then write leaderboard/leaderboard.{md,csv,html} (or --out DIR) from exactly those runs",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under the data home)",
    )
    p.set_defaults(func=cmd_leaderboard)


def cmd_leaderboard(args) -> int:
    from leaderboard import build, render

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    only = None
    if args.write:
        from leaderboard import reference

        only = reference.refresh(args.tracking_uri, args.dataset, say=lambda s: print(s, file=sys.stderr))
    board = build.from_store(args.tracking_uri, datasets=args.dataset, models=args.model, only=only, warn=warn)
    if args.write:
        board["note"] = render.HEADER_NOTE
    out = args.out or (reference.OUT_DIR if args.write else None)
    if out is not None:
        for path in render.write(board, out):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        json.dump({k: v for k, v in board.items() if k != "note"}, sys.stdout, indent=2)
        print()
    elif out is None:
        render.print_rich(board)
    return 0
