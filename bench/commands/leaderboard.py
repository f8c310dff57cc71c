"""`python -m bench leaderboard`: rank the logged runs per dataset and horizon, and across datasets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_limit_arguments, limits_from_args, print_problems


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="rank the logged runs (headroom skill and skill against sw_avg, intervals, win rate)",
        description="Build the leaderboard from the runs in the MLflow tracking store (or from submission files: "
        "--submissions): per dataset and horizon, "
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
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--submissions",
        nargs="+",
        type=Path,
        default=None,
        metavar="PATH",
        help="build the board from these submission files (`bench submit`), or folders of *.json files, "
        "instead of the MLflow store",
    )
    source.add_argument(
        "--write",
        action="store_true",
        help="rebuild the committed leaderboard/leaderboard.{md,csv,html} (or --out DIR) from the result files in "
        "leaderboard/submissions/ (the zoo of leaderboard/zoo.yaml on the suite moe-load-v2)",
    )
    p.add_argument("--refresh", action="store_true",
                   help="with --write: first submit every zoo model whose result file is missing (runs what is not "
                        "cached: hours for the library models)")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under the data home)",
    )
    add_limit_arguments(p)
    p.set_defaults(func=cmd_leaderboard)


def cmd_leaderboard(args) -> int:
    from leaderboard import build, render

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    if args.refresh and not args.write:
        from bench.cli import UserError

        raise UserError("--refresh goes with --write (it computes the committed board's result files)")
    paths = args.submissions
    if args.write:
        from leaderboard import reference

        if args.refresh:
            reference.refresh(args.tracking_uri, say=lambda s: print(s, file=sys.stderr),
                              limits=limits_from_args(args))
        paths = [reference.SUBMISSIONS]
    if paths:
        from bench.submission import SubmissionError

        scores = None
        if args.write:
            from leaderboard import placement

            try:
                scores = placement.committed()
            except placement.PlacementScoresError as exc:
                return print_problems(str(placement.PATH), [str(exc)])
        try:
            board = build.from_submissions(paths, datasets=args.dataset, models=args.model, placement_scores=scores)
        except SubmissionError as exc:
            return print_problems(exc.source, exc.problems)
    else:
        board = build.from_store(args.tracking_uri, datasets=args.dataset, models=args.model, warn=warn)
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
