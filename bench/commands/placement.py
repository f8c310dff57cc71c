"""`python -m bench placement`: the EPLB-like placement of a dataset's mean load, against static.

Works on any dataset, static ones included (one run's totals, counts ``[1, L, E]``): the
placement is made from the mean proportion over all records and scored on every record's
counts, i.e. with hindsight (what the oracle of `bench run --placement` gets per horizon).
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from datasets_registry.registry import DEFAULT_DATASET

    p = sub.add_parser(
        "placement",
        help="place a dataset's experts on devices (EPLB-like) and compare with static",
        description="Place experts plus replicas on devices from a dataset's mean load (EPLB-like: replicate "
        "the hottest, then longest-processing-time packing) and score it against round-robin.",
    )
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"dataset id (default {DEFAULT_DATASET})")
    p.add_argument("--devices", "-G", type=int, default=8, help="devices (GPUs), G (default 8)")
    p.add_argument("--replicas", "-R", type=int, default=8, help="redundant expert replicas per layer, R (default 8)")
    p.add_argument("--nodes", "-N", type=int, default=1, help="nodes, for the hierarchical policy (default 1)")
    p.add_argument(
        "--groups", "-K", type=int, default=None, help="expert groups packed onto nodes (default: one per expert)"
    )
    p.add_argument("--cf", type=float, default=1.25, help="capacity factor for the drop rate (default 1.25)")
    p.add_argument(
        "--hw",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="step-time model setting: link=nvlink|pcie|pcie4, net=ib|roce, bw, net_bw, hidden, ffn, mats, bytes, "
             "tflops",
    )
    p.add_argument(
        "--layer",
        default=None,
        help="layer (index or name) whose placement to print (default: the most imbalanced under static)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--export",
        metavar="FORMAT",
        choices=("sglang", "trtllm", "deepseek", "vllm"),
        help="write the placement in an engine's file format: sglang (--init-expert-location JSON), trtllm "
             "(load balancer YAML), deepseek (EPLB's phy2log/log2phy/logcnt JSON); vllm reads none (says why)",
    )
    p.add_argument("--output", "-o", default=None, help="file to write the export to (default: standard output)")
    p.add_argument(
        "--first-layer",
        type=int,
        default=0,
        help="model layer index of the first MoE layer, for the export (e.g. DeepSeek-V3's first_k_dense_replace=3)",
    )
    p.add_argument(
        "--model-layers",
        type=int,
        default=None,
        help="the model's num_hidden_layers, for the sglang export (default: up to the last MoE layer)",
    )
    p.set_defaults(func=cmd_placement)


def cmd_placement(args) -> int:
    from bench.placement import PlacementSpec, dataset_placement
    from datasets_registry import registry

    trace = registry.load(args.dataset)
    text = f"G={args.devices},R={args.replicas},N={args.nodes},cf={args.cf}" + (
        f",K={args.groups}" if args.groups else ""
    )
    spec = PlacementSpec.parse(",".join([text, *args.hw])).check(trace.experts)
    if args.export:
        return _export(args, trace, spec)
    out = dataset_placement(trace, spec)
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    names = [r["name"] for r in out["layers"]]
    if args.layer is None:
        layer = max(range(len(names)), key=lambda i: out["layers"][i]["imbalance_static"])
    else:
        layer = names.index(args.layer) if args.layer in names else int(args.layer)
    _print(out, layer, out["layers"][layer]["device_share"])
    return 0


def _export(args, trace, spec) -> int:
    """Write the placement of the trace's mean load in the engine's format; vLLM's answer is an error."""
    from bench.engines import FORMATS, export
    from bench.placement import place

    try:
        text = export(place(trace.proportions.mean(axis=0), spec), args.export, args.first_layer, args.model_layers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
        return 0
    with open(args.output, "w") as f:
        f.write(text)
    print(f"wrote {args.output}: {spec.describe()} on {trace.id}@{trace.card.version}, for {FORMATS[args.export][1]}",
          file=sys.stderr)
    return 0


def _print(out: dict, layer: int, device_share) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    kind = "static dataset (one run's totals)" if out["static_dataset"] else f"{out['records']} records"
    table = Table(title=f"placement {out['spec']} on {out['dataset']}@{out['version']}, {kind}: EPLB-like vs static")
    for col in ("layer", "imbalance", "static", "drop", "drop static", "time µs", "static µs", "faster"):
        table.add_column(col, justify="right")
    for r in out["layers"]:
        table.add_row(
            r["name"],
            f"{r['imbalance']:.4f}",
            f"{r['imbalance_static']:.4f}",
            f"{100 * r['drop_rate']:.2f}%",
            f"{100 * r['drop_rate_static']:.2f}%",
            f"{r['layer_time_us']:.1f}",
            f"{r['layer_time_static_us']:.1f}",
            f"{100 * (r['layer_time_static_us'] / r['layer_time_us'] - 1):.1f}%",
        )
    m = out["mean"]
    table.add_row(
        "mean",
        f"{m['imbalance']:.4f}",
        f"{m['imbalance_static']:.4f}",
        f"{100 * m['drop_rate']:.2f}%",
        f"{100 * m['drop_rate_static']:.2f}%",
        f"{m['layer_time_us']:.1f}",
        f"{m['layer_time_static_us']:.1f}",
        f"{100 * m['layer_time_gain']:.1f}%",
    )
    con.print(table)
    r = out["layers"][layer]
    con.print(f"layer {r['name']}: device -> experts (load share)")
    for g, experts in enumerate(r["devices"]):
        con.print(
            f"  gpu{g}: {' '.join(str(e) + ('*' if r['replicas'][e] > 1 else '') for e in experts):<40} "
            f"{100 * device_share[g]:6.2f}%"
        )
    con.print("* replicated expert; imbalance = mean over records of max/mean device load")
