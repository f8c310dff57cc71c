"""`python -m bench gps`: distribution-only or token-to-expert prediction for inference-time expert duplication?

    python -m bench gps --dataset gpt3-125m-16e-serve-shift-b512
    python -m bench gps --dataset gpt3-125m-16e-serve-shift-b512 --gpus 16 --expert small --interconnect pcie+roce
    python -m bench gps --dataset gpt3-125m-16e-serve-shift-b4096 --pool 4 --sweep --json

Scores every strategy on an inference trace (bench/gps.py, docs/gps.md) and prints, for one system (or the
whole grid with --sweep), which kind gives the lower MoE time per pass, and by how much. On an imported trace
whose token-level sample lacks a field a strategy needs (token ids, the pre-gate's predictions), that strategy
is left out and said so.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from bench.gps import EXPERTS, INTERCONNECTS

    p = sub.add_parser(
        "gps",
        help="distribution-only vs token-to-expert prediction on an inference trace, judged end to end (MoE-GPS)",
        description="Score distribution-only predictors (sw_avg, ema, the engines' window sum, last) and "
        "token-to-expert predictors (token frequency tables, a layer-transition table, the serving loop's "
        "pre-gate) on an inference trace with a token-level sample, and say which kind gives the lower MoE time "
        "per forward pass on a system: expert compute on the slowest GPU plus the all-to-all, plus the "
        "predictor's measured overhead where it runs on the critical path (docs/gps.md).",
    )
    p.add_argument("--dataset", required=True, help="an inference trace (datasets list: step unit 'forward pass')")
    p.add_argument("--pool", type=int, default=1, help="judge N consecutive sampled passes together as one batch")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--expert", default="mixtral", choices=list(EXPERTS), help="expert shape (hidden, ffn)")
    p.add_argument("--interconnect", default="nvlink+ib", choices=list(INTERCONNECTS))
    p.add_argument("--sweep", action="store_true", help="every system of the grid (4-64 GPUs, both experts and "
                   "interconnects)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gps)


def cmd_gps(args) -> int:
    from bench.gps import System, end_to_end, judge, recommend, score, sweep

    judged = judge(args.dataset, args.pool)
    rows = score(judged)
    systems = sweep(judged) if args.sweep else [
        {"gpus": args.gpus, "expert": args.expert, "interconnect": args.interconnect,
         "tokens_per_pass": float(judged.tokens.mean()),
         **recommend(end_to_end(judged, System(args.gpus, args.expert, args.interconnect)))}]
    if args.json:
        json.dump({"dataset": args.dataset, "pool": args.pool, "judged_passes": int(len(judged.tokens)),
                   "strategies": rows, "left_out": judged.left_out, "caveats": judged.caveats, "systems": systems},
                  sys.stdout, indent=2)
        print()
        return 0
    print(f"{args.dataset}: {len(judged.tokens)} judged passes of {judged.tokens.mean():.0f} tokens on average "
          f"(pool {args.pool})")
    print(f"{'strategy':17s} {'kind':18s} {'error_rate':>10s} {'F1':>6s} {'exact':>6s} {'elem.':>6s} "
          f"{'overhead':>10s}")
    for r in rows:
        acc = (f"{r['f1']:6.1%} {r['exact']:6.1%} {r['elementwise']:6.1%}" if "f1" in r else f"{'':6s} {'':6s} "
               f"{'':6s}")
        where = "" if r["critical_path"] else " (off path)"
        print(f"{r['strategy']:17s} {r['kind']:18s} {r['error_rate']:10.1%} {acc} {r['overhead_ms']:8.3f} ms{where}")
    for name, why in judged.left_out.items():
        print(f"left out: {name} ({why})")
    for name, how in judged.caveats.items():
        print(f"note: {name}: {how}")
    for s in systems:
        faster = s["distribution_only"] if s["winner"] == "distribution-only" else s["token_to_expert"]
        print(f"{s['gpus']} GPUs, {s['expert']} experts, {s['interconnect']}: {s['winner']} ({faster}) by "
              f"{s['margin']:.1%}; MoE time per pass {s['distribution_only_us']:.0f} us distribution-only "
              f"({s['distribution_only']}), {s['token_to_expert_us']:.0f} us token-to-expert "
              f"({s['token_to_expert']}), {s['none_us']:.0f} us without duplication, {s['oracle_us']:.0f} us "
              f"oracle; token-to-expert would win under {s['token_budget_us']:.0f} us of overhead a pass")
    return 0
