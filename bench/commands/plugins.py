"""`python -m bench predictors` and `python -m bench check-predictor SPEC`: third-party predictors."""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_limit_arguments, limits_from_args, parse_options


def register(sub: argparse._SubParsersAction) -> None:
    from datasets_registry.registry import DEFAULT_DATASET

    p = sub.add_parser(
        "check-predictor",
        help="run the conformance suite on a predictor (yours before you submit it)",
        description="Check a predictor on a small real slice: interface, forecast shapes and distributions, "
        "determinism, no look-ahead, speed. Exit code 1 when a check fails. "
        "See docs/contributing-a-predictor.md.",
    )
    p.add_argument("spec", help="built-in or plugin name, path/to/file.py:Class, sktime:NAME or darts:NAME")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="model parameter; repeatable")
    p.add_argument("--dataset", default=None,
                   help=f"dataset to slice (default {DEFAULT_DATASET}, the built-in default trace)")
    p.add_argument("--records", type=int, default=150, help="records of the slice (default 150)")
    p.add_argument("--layers", type=int, default=4, help="layers of the slice (default 4)")
    add_limit_arguments(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "predictors",
        help="list the predictors --model accepts, with their parameters (built-in, plugins, adapters)",
        description="List what --model accepts: each predictor's description, parameters with their defaults, and "
        "whether it needs training data or a GPU. Installed plugins and predictor files are described by a "
        "sandboxed worker, never imported here. Name SPECs (sktime:NAME, darts:NAME, FILE.py:CLASS, ...) to "
        "describe only those.",
    )
    p.add_argument("spec", nargs="*", help="describe only these (built-in or plugin name, sktime:NAME, darts:NAME, "
                                          "path/to/file.py:Class)")
    p.add_argument("--json", action="store_true", help="print one JSON array")
    add_limit_arguments(p)
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


def _describe(spec: str, limits) -> dict:
    """{name, kind, target, description, parameters, training_data, gpu, error} of what `spec` names."""
    from models.registry import (
        ADAPTERS,
        BUILTIN,
        THIRD_PARTY,
        about,
        about_class,
        plugin_names,
        predictor_class,
        spec_kind,
    )

    kind = spec_kind(spec)
    target = BUILTIN.get(spec) or (plugin_names()[spec].value if kind == "entry_point" else spec)
    try:
        if kind in THIRD_PARTY:  # not this package's code: described by a sandboxed worker, never imported here
            from bench.isolation import describe

            meta = describe(spec, limits=limits)
            info = about(meta["name"], meta["doc"], meta["defaults"], meta["needs_training"])
        else:
            info = about_class(predictor_class(spec), spec if kind == "adapter" else None)
        error = None
    except Exception as exc:  # noqa: BLE001 - one predictor that does not load is reported, the others listed
        info, error = about(spec, "", {}, False), str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    label = {"builtin": "built-in", "entry_point": "plugin", "adapter": "adapter", "file": "file"}[kind]
    if kind == "adapter" and spec.split(":", 1)[0] in ADAPTERS and error is None:
        target = ADAPTERS[spec.split(":", 1)[0]]
    return {**info, "name": spec if kind != "builtin" else info["name"], "kind": label, "target": target,
            "error": error}


def _generic() -> list[dict]:
    """The rows for what is named on use: a library forecaster through its adapter, a predictor in a file."""
    import importlib

    from models.adapters.common import ADAPTER_DEFAULTS
    from models.registry import ADAPTERS, about

    rows = []
    for prefix, target in ADAPTERS.items():
        doc = importlib.import_module(target.partition(":")[0]).__doc__ or ""
        rows.append({**about(f"{prefix}:NAME", doc, ADAPTER_DEFAULTS, False, fits=False), "kind": "adapter",
                     "target": target,
                     "error": None, "more": f"and the forecaster's constructor parameters: `python -m bench "
                                            f"predictors {prefix}:NAME` lists them"})
    rows.append({**about("FILE.py:CLASS", "A Predictor subclass defined in a file, run in a sandboxed worker.", {},
                         False), "kind": "file", "target": "path/to/file.py:Class", "error": None,
                 "training_data": "as the class says", "gpu": "as the class says",
                 "more": "its own: `python -m bench predictors FILE.py:CLASS` lists them"})
    return rows


def cmd_list(args) -> int:
    import shutil
    import textwrap

    from models.registry import BUILTIN, plugin_names

    limits = limits_from_args(args)
    rows = [_describe(spec, limits) for spec in args.spec or [*BUILTIN, *plugin_names()]]
    if not args.spec:
        rows += _generic()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 1 if any(r["error"] for r in rows) else 0
    width = min(100, shutil.get_terminal_size((80, 24)).columns)
    pad = " " * 4
    for r in rows:
        print(f"{r['name']}  ({r['kind']}, {r['target']})")
        if r["error"]:
            print(f"{pad}does not load: {r['error']}")
            continue
        params = ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in r["parameters"].items())
        params = "; ".join(x for x in (params, r.get("more")) if x) or "none"
        source = f"defaults from {r['source']}" if r.get("source") else ""
        for text in (r["description"], f"parameters: {params}", source,
                     f"training data: {r['training_data']}; GPU: {r['gpu']}"):
            if text:
                print(textwrap.fill(text, width, initial_indent=pad, subsequent_indent=pad + "  ",
                                    break_on_hyphens=False))
    return 1 if any(r["error"] for r in rows) else 0
