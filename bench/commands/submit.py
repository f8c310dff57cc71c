"""`python -m bench submit`: run a predictor on every task of a suite into one results file, or verify such a file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import Progress, add_limit_arguments, limits_from_args, parse_options, print_problems

#: Options that only submitting takes, and those that only verifying takes (argparse dest names).
SUBMIT_ONLY = ("suite", "param", "train", "out", "no_track", "tracking_uri")
VERIFY_ONLY = ("sample", "seed", "rtol")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="run a predictor on every task of a suite into one results file; --verify checks such a file",
        description="Run a predictor on every task of a suite (cached runs are reused, runs are logged to MLflow) "
        "and write one self-describing JSON results file; or, with --verify, check a results file against the "
        "local data and by re-running a sample of its tasks from scratch.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="built-in name, plugin name, sktime:NAME, darts:NAME or path/file.py:Class")
    what.add_argument("--verify", type=Path, metavar="FILE", help="verify a results file instead of submitting")
    p.add_argument("--suite", default=None, help="the suite to run on (default moe-load-v2; `bench suite list`)")
    p.add_argument("--param", action="append", default=None, metavar="KEY=VALUE", help="model parameter; repeatable")
    p.add_argument("--train", action="append", default=None, metavar="DATASET",
                   help="a whole training trace for the predictor on every task; repeatable (recorded, and flagged "
                        "when it is one of the suite's datasets)")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="the results file (default submission-<model>-<suite>.json here)")
    p.add_argument("--no-track", action="store_true", default=None, help="do not log the runs to MLflow")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under the data home)")
    add_limit_arguments(p)
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="with --verify: how many tasks to re-run from scratch (default 2)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="with --verify: the seed that picks the tasks to re-run (default 0)")
    p.add_argument("--rtol", type=float, default=None,
                   help="with --verify: relative tolerance of a re-run's numbers (default 1e-6)")
    p.set_defaults(func=cmd_submit)


def cmd_submit(args) -> int:
    from bench.cli import UserError

    wrong = [name for name in (SUBMIT_ONLY if args.verify else VERIFY_ONLY) if getattr(args, name) is not None]
    if wrong:
        options = ", ".join("--" + name.replace("_", "-") for name in wrong)
        raise UserError(f"{options}: only {'without' if args.verify else 'with'} --verify")
    return verify(args) if args.verify else submit(args)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.3f}%"


def submit(args) -> int:
    from bench import submission
    from bench.suites import DEFAULT_SUITE

    def on_run(run) -> None:
        r = run.result
        errors = ", ".join(f"{_cell(h.value('error_rate'))} at {H}" for H, h in sorted(r.horizons.items()))
        cached = " (cached)" if r.cached else ""
        print(f"{run.task.ref}: error_rate {errors}; {r.seconds:.2f} s{cached}", file=sys.stderr)

    try:
        with Progress(f"{args.model} on the suite", "origins") as bar:
            def progress(task, done: int, total: int) -> None:
                bar.update(done, total, description=f"{args.model} on {task.ref}")

            sub = submission.submit(args.model, args.suite or DEFAULT_SUITE, params=parse_options(args.param or []),
                                    train=args.train or (), limits=limits_from_args(args), track=not args.no_track,
                                    tracking_uri=args.tracking_uri, progress=progress, on_run=on_run)
    except submission.SubmissionError as exc:
        return print_problems(exc.source, exc.problems)
    out = args.out or Path(f"submission-{sub.model.name}-{sub.suite.name}.json")
    sub.save(out)
    m = sub.model
    trained = f"; trained on {', '.join(t.ref for t in m.train)}" if m.train else ""
    if m.trained_on_suite:
        trained += " (one of the suite's datasets)"
    per_origin = m.seconds.get("per_origin")
    print(f"{m.name} (version {m.version}, {m.source}{', ' + m.source_sha256 if m.source_sha256 else ''}) on "
          f"{len(sub.runs)} tasks of suite {sub.suite.ref}{trained}; "
          f"{m.seconds['total']:.1f} s of runs"
          + (f", {1000 * per_origin:.2f} ms per origin" if per_origin is not None else "")
          + f"; {', '.join(m.hardware) or 'hardware unknown'}")
    print(f"wrote {out}")
    return 0


def verify(args) -> int:
    from bench import submission

    try:
        with Progress(f"re-running tasks of {args.verify.name}", "origins") as bar:
            def progress(task, done: int, total: int) -> None:
                bar.update(done, total, description=f"re-running {task.ref} of {args.verify.name}")

            report = submission.verify(args.verify, sample=2 if args.sample is None else args.sample,
                                       seed=args.seed or 0, rtol=submission.VERIFY_RTOL if args.rtol is None
                                       else args.rtol, limits=limits_from_args(args), progress=progress)
    except submission.SubmissionError as exc:
        return print_problems(exc.source, exc.problems)
    print("checked:")
    for line in report.checked:
        print(f"  {line}")
    if not report.ok:
        return print_problems(report.path, report.problems)
    print(f"{report.path}: verified")
    return 0
