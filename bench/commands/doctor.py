"""`python -m bench doctor`: check the data home for damage and leftovers; `--repair` puts right what it can."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check the data home (datasets, runs, journals, artifacts, MLflow store)",
                       description="Check every dataset, run, journal, artifact and the MLflow store of the data home; "
                                   "report each problem with its path. --repair removes leftovers and what cannot be "
                                   "trusted (runs are recomputed from their journals) and rebuilds a broken store.")
    p.add_argument("--repair", action="store_true", help="remove leftovers, rebuild what can be rebuilt")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under the data home)")
    p.add_argument("--json", action="store_true", help="print the findings as one JSON document")
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from bench.doctor import doctor
    from datasets_registry.registry import data_home

    findings = doctor(repair=args.repair, tracking_uri=args.tracking_uri)
    left = [f for f in findings if f.repaired is None]
    if args.json:
        json.dump({"data_home": str(data_home()), "findings": [f.to_dict() for f in findings],
                   "clean": not left}, sys.stdout, indent=2)
        print()
    else:
        for f in findings:
            print(f"{f.path}: {f.problem}" + (f" -> {f.repaired}" if f.repaired else ""))
        if not findings:
            print(f"{data_home()}: no problems found")
        elif left:
            print(f"{len(left)} problem(s) left" + ("" if args.repair else "; `--repair` puts right what it can"))
    return 1 if left else 0
