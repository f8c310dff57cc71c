"""`python -m bench tune`: Optuna over a predictor's search space, on a validation split (see bench.tune)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_task_arguments, parse_options, task_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from datasets_registry.registry import DEFAULT_DATASET

    p = sub.add_parser(
        "tune",
        help="tune a model's parameters with Optuna on the early part of a trace",
        description="Tune a predictor's declared search space with Optuna on the origins before a split "
        "step; the origins after it are the test task (`run --params best` uses them). "
        "The study lives in sqlite under the data home and resumes; every trial is an MLflow "
        "run nested under the study's.",
    )
    p.add_argument(
        "--model", required=True, help="built-in name, plugin name, sktime:NAME, darts:NAME or path/file.py:Class"
    )
    p.add_argument("--dataset", default=None, help=f"dataset id (default {DEFAULT_DATASET})")
    p.add_argument("--trials", type=int, default=20, help="completed trials wanted in the study, in all (default 20)")
    p.add_argument(
        "--split",
        type=float,
        default=0.5,
        help="fraction of the origin range used for validation; the test task starts after it (default 0.5)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="a parameter held fixed; repeatable"
    )
    add_task_arguments(p)
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    p.add_argument("--json", action="store_true", help="print the best record as JSON")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    from bench.tune import tune
    from datasets_registry.registry import DEFAULT_DATASET

    dataset = args.dataset or DEFAULT_DATASET

    def report(t: dict) -> None:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        print(f"trial {t['trial']}: {params} -> {100 * t['value']:.3f}% ({t['seconds']:.1f} s)", file=sys.stderr)

    record = tune(
        args.model,
        dataset,
        args.trials,
        params=parse_options(args.param),
        task=task_from_args(args, dataset),
        split=args.split,
        seed=args.seed,
        track=not args.no_track,
        tracking_uri=args.tracking_uri,
        on_trial=report,
    )
    if args.json:
        json.dump(record, sys.stdout, indent=2, default=str)
        print()
        return 0 if record["value"] is not None else 1
    if record["value"] is None:
        print(f"no trial completed in study {record['study']}", file=sys.stderr)
        return 1
    default = f"; defaults {100 * record['default_value']:.3f}%" if record["default_value"] is not None else ""
    print(
        f"best of {record['trials_complete']} trials: {json.dumps(record['params'])} -> validation error_rate "
        f"{100 * record['value']:.3f}%{default}"
    )
    print(f"validation: steps < {record['split_step']}; test task: origins from step {record['test_first_origin']}")
    print(
        f"test it:  python -m bench run --model {args.model} --dataset {dataset} --params best   "
        f"(vs defaults: --first-origin {record['test_first_origin']})"
    )
    return 0
