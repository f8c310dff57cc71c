"""`python -m bench datasets ...`: list, show, import, validate, build and fetch datasets."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import parse_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list, show, import and validate expert-load traces")
    dsub = p.add_subparsers(dest="datasets_command", metavar="ACTION", required=True)

    q = dsub.add_parser("list", help="list built-in, public and user datasets")
    q.add_argument("--json", action="store_true", help="print one JSON array")
    q.set_defaults(func=cmd_list)

    q = dsub.add_parser("show", help="show a dataset's card and shape (builds a public dataset on first use)")
    q.add_argument("id", help="dataset id, NAME or NAME@VERSION")
    q.add_argument("--json", action="store_true", help="print one JSON document")
    q.set_defaults(func=cmd_show)

    q = dsub.add_parser("import", help="import a load dump into the user registry")
    q.add_argument("path", type=Path)
    q.add_argument("--format", required=True, help="dump format (see `datasets formats`)")
    q.add_argument("--id", required=True, help="dataset id to store it under")
    q.add_argument("--version", type=int, default=None, help="version number (default: next free)")
    q.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="format-specific option")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_import)

    q = dsub.add_parser("validate", help="check a stored trace folder or a dump without storing it")
    q.add_argument("path", type=Path)
    q.add_argument("--format", default=None, help="dump format; default: a stored trace folder, or npz by suffix")
    q.set_defaults(func=cmd_validate)

    q = dsub.add_parser("formats", help="list the import formats")
    q.set_defaults(func=cmd_formats)

    q = dsub.add_parser("build", help="build a declared public dataset from a local copy")
    q.add_argument("id")
    q.add_argument("--from", dest="source", type=Path, default=None, help="folder or archive of the upstream files")
    q.set_defaults(func=cmd_build)

    q = dsub.add_parser("fetch", help="download a public dataset's upstream archive (needs network)")
    q.add_argument("id")
    q.set_defaults(func=cmd_fetch)


def cmd_list(args) -> int:
    from datasets_registry import registry
    from datasets_registry.sources import PUBLIC

    rows = registry.listing()
    have = {r["id"] for r in rows}
    for src in PUBLIC.values():
        if src.id not in have:
            rows.append(
                {
                    "id": src.id,
                    "version": src.card.version,
                    "kind": "public (not built)",
                    "layers": src.card.model.moe_layers,
                    "experts": src.card.model.experts,
                    "records": None,
                    "first_step": None,
                    "last_step": None,
                    "static": False,
                    "source": src.url,
                    "licence": src.licence,
                    "fingerprint": None,
                    "error": None,
                }
            )
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from bench.columns import fit_columns

    broken = any(r["error"] for r in rows)
    cells = []
    for r in rows:
        shown_id = r["id"].encode("unicode_escape").decode()  # a folder name may hold a newline
        shape = "×".join(str(r[k] or "-") for k in ("records", "layers", "experts"))
        steps = f"{r['first_step']}..{r['last_step']}" if r["records"] else "-"
        kind, _, built = r["kind"].partition(" (")  # "public (not built)": its steps are not known yet
        licence = (r["licence"] or "-").split(" (")[0]  # `datasets show` has it all
        cells.append([shown_id, str(r["version"]), kind, shape, built.rstrip(")") or steps, licence]
                     + [r["error"] or ""] * broken)
    # Readable in 80 columns (a pipe, CI): ids and numbers whole, headers wrapped at their spaces, other text
    # folded, never cut; no borders, so that the longest ids fit with every column.
    console = Console()
    heads = ["id", "v", "kind", "records × layers × experts", "steps", "licence"] + ["problem"] * broken
    text = ("kind", "licence", "problem")
    table = Table(title="datasets", box=box.SIMPLE_HEAD, show_edge=False, padding=0)
    for i, width in fit_columns(heads, cells, console.width, text=text, per_column=1, fixed=-1).items():
        table.add_column(heads[i], justify="right" if heads[i] not in text + ("id",) else "left", overflow="fold",
                         width=width)
    for c in cells:
        table.add_row(*map(escape, c))
    console.print(table)
    console.print("`python -m bench datasets show ID`: a dataset's card, source and full licence", highlight=False)
    return 0


def cmd_show(args) -> int:
    from datasets_registry import registry, storage

    entry = registry.resolve(args.id)
    trace = storage.load(entry.folder)
    info = registry.describe(trace, entry)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
        return 0
    print(f"{info['id']}@{info['version']}  ({info['kind']}, {info['path']})")
    print(f"  {info['title']}" if info.get("title") else "", end="")
    print(f"\n  shape: {info['records']} records x {info['layers']} MoE layers x {info['experts']} experts")
    print(f"  steps: {info['first_step']} .. {info['last_step']} ({info['step_unit']})")
    tpr = info["tokens_per_record"]
    print(f"  routed slots per layer per record: {tpr['min']}" + ("" if tpr["constant"] else f" .. {tpr['max']}"))
    print(f"  model: {json.dumps({k: v for k, v in info['model'].items() if v is not None})}")
    if info["sources"]:
        src = info["sources"]
        shares = src["share_of_tokens"]
        print(f"  sources: {src['count']} {src['unit']}s ({src['layout']}); share of the tokens each sends: "
              f"{min(shares):.2%} .. {max(shares):.2%}")
    print(f"  source: {info['source_summary']}")
    print(f"  licence: {info['licence']}")
    print(f"  fingerprint: {info['fingerprint']}")
    if info.get("notes"):
        print(f"  notes: {info['notes']}")
    return 0


def cmd_import(args) -> int:
    from datasets_registry import registry
    from datasets_registry.importers import import_path

    registry.check_user_id(args.id, args.version)  # before the import's work
    trace = import_path(args.path, args.format, **parse_options(args.option))
    entry = registry.add(trace, args.id, args.version)
    info = registry.summary(entry)
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
    else:
        print(
            f"imported {args.path} as {entry.ref}: {info['records']} records x {info['layers']} layers x "
            f"{info['experts']} experts ({info['fingerprint']})"
        )
    return 0


def cmd_validate(args) -> int:
    from datasets_registry import storage
    from datasets_registry.importers import import_path

    if args.format is None and args.path.is_dir() and (args.path / storage.CARD_FILE).exists():
        trace = storage.load(args.path)
    else:
        trace = import_path(args.path, args.format or args.path.suffix.lstrip(".").lower() or "npz")
    s = trace.summary()
    print(
        f"{args.path}: valid, {s['records']} records x {s['layers']} layers x {s['experts']} experts, steps "
        f"{s['first_step']}..{s['last_step']}, {s['fingerprint']}"
    )
    return 0


def cmd_formats(args) -> int:
    from datasets_registry.importers import FORMATS

    for name, (_, desc) in sorted(FORMATS.items()):
        print(f"{name:24s} {desc}")
    return 0


def cmd_build(args) -> int:
    from datasets_registry import registry

    entry = registry.build_public(args.id, args.source)
    print(f"built {entry.ref} at {entry.folder}")
    return 0


def cmd_fetch(args) -> int:
    from datasets_registry.sources import PUBLIC

    if args.id not in PUBLIC:
        raise LookupError(f"{args.id!r} is not a declared public dataset; declared: {', '.join(PUBLIC)}")
    dest = PUBLIC[args.id].fetch()
    print(f"downloaded {dest}")
    return 0
