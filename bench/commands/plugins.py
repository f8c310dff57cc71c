"""`python -m bench predictors` and `python -m bench check-predictor SPEC`: third-party predictors."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_limit_arguments, limits_from_args, parse_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-predictor",
        help="run the conformance suite on a predictor (yours before you submit it)",
        description="Check a predictor on a small real slice: interface, forecast shapes and distributions, "
        "determinism, no look-ahead, speed. Exit code 1 when a check fails. "
        "See docs/contributing-a-predictor.md.",
    )
    p.add_argument("spec", help="built-in or plugin name, path/to/file.py:Class, sktime:NAME or darts:NAME")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="model parameter; repeatable")
    p.add_argument("--dataset", default=None, help="dataset to slice (default: the built-in default trace)")
    p.add_argument("--records", type=int, default=150, help="records of the slice (default 150)")
    p.add_argument("--layers", type=int, default=4, help="layers of the slice (default 4)")
    add_limit_arguments(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("predictors", help="list the predictors --model accepts (built-in and installed plugins)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)


def cmd_check(args) -> int:
    from bench.conformance import check_predictor

    report = check_predictor(
        args.spec,
        parse_options(args.param),
        dataset=args.dataset,
        records=args.records,
        layers=args.layers,
        limits=limits_from_args(args),
    )
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print(report.text())
    return 0 if report.ok else 1


def cmd_list(args) -> int:
    from models.registry import ADAPTERS, BUILTIN, plugin_names

    plugins = {name: ep.value for name, ep in plugin_names().items()}
    if args.json:
        json.dump(
            {"builtin": BUILTIN, "plugins": plugins, "adapters": sorted(f"{k}:NAME" for k in ADAPTERS)},
            sys.stdout,
            indent=2,
        )
        print()
        return 0
    for name, target in BUILTIN.items():
        print(f"{name:12} built-in  {target}")
    for name, target in plugins.items():
        print(f"{name:12} plugin    {target}")
    for prefix in ADAPTERS:
        print(f"{prefix + ':NAME':12} adapter   any {prefix} forecaster by class name")
    print(f"{'FILE.py:CLASS':12} file      a Predictor subclass defined in a file")
    return 0
