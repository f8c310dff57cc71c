"""LocMoE's comparison on the tracer's routers: inter-node traffic, modelled step time, balance, drops, loss.

    python benchmarks/locality.py RUN_FOLDER...            # print the tables
    python benchmarks/locality.py RUN_FOLDER... --write    # replace their preset's tables in docs/locality.md

Each RUN_FOLDER is a tracer run folder (``python -m bench trace ... --sources S``; its ``trace/``) or a trace
folder, every run of one preset, trained on the same batches with a simulated data-parallel layout (per-source
loads, ``source_counts[T, L, S, E]``). The runs are compared over the iterations that all of them reached. Per
router: the share of routed slots that cross nodes, the load imbalance (max / mean GPU load), the dropped
slots, the final loss (mean of the last 100 iterations compared) and the modelled MoE-layer time
(:mod:`bench.topology`: expert compute plus dispatch and combine) on four topologies; the reduction of that
time against hash and Switch routing, beside LocMoE's reported 12.68-22.24%; and the traffic-minimising
placement (:func:`bench.placement.traffic_placement`) planned on the first half of the iterations and scored
on the second, against the contiguous placement the routers were trained for.

The tables in docs/locality.md sit between ``<!-- table: PRESET-NAME -->`` and ``<!-- /table -->``;
tests/test_locality.py recomputes the CPU ones from the traces committed in benchmarks/results/locality/.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.doc_tables import write_table  # noqa: E402

DOC = REPO / "docs" / "locality.md"
#: Tokens per GPU per step that the modelled times are scaled to (the traces' shares of them are kept).
TOKENS_PER_GPU = 4096
#: The topologies, as (preset, nodes, GPUs per node); "layout" uses the nodes the routers were trained for.
TOPOLOGIES = (("nvlink-ib", "layout"), ("pcie-eth", "layout"), ("pcie-eth", "gpu"), ("nvlink-ib", "half"))
LOCMOE_REPORTED = "12.68-22.24%"  # Li et al. 2024, abstract: training time per epoch against hash and Switch


@dataclass
class Run:
    label: str
    router: str
    top_k: int
    preset: str
    card: object
    counts: np.ndarray  # [T, L, E]
    source_counts: np.ndarray  # [T, L, S, E]
    extras: dict
    layout: dict  # the card's data_parallel entry


def load_run(folder: str | Path) -> Run:
    """A tracer run (or trace) folder with per-source loads; a clear error otherwise."""
    from datasets_registry import storage
    from datasets_registry.tracer.config import TracerConfig

    folder = Path(folder)
    if (folder / "trace" / storage.CARD_FILE).exists():
        folder = folder / "trace"
    trace = storage.load(folder)
    extras = dict(trace.extras)  # the per-source split; the run's other side arrays (drops, loss) from the file
    if (folder / storage.EXTRAS_FILE).exists():
        extras.update(storage.read_npz_arrays(folder / storage.EXTRAS_FILE, required=()))
    per_source = extras.get("source_counts")
    if per_source is None or "data_parallel" not in trace.card.extra:
        raise SystemExit(f"{folder}: no per-source loads (train it with --sources S)")
    cfg = TracerConfig.from_dict(trace.card.extra["config"])
    label = f"{cfg.router} top-{cfg.top_k}"
    if cfg.router == "node-limited":
        label += f", M={cfg.node_limit}"
    if cfg.router == "locmoe" and cfg.locality_loss != TracerConfig.locality_loss:
        label += f", mu={cfg.locality_loss:g}"
    return Run(label, cfg.router, cfg.top_k, cfg.preset, trace.card, trace.counts, np.asarray(per_source), extras,
               trace.card.extra["data_parallel"])


def topologies(layout: dict) -> list:
    from bench.topology import topology

    G, N = layout["source_ranks"], layout["nodes"]
    shapes = {"layout": (N, G // N), "gpu": (G, 1), "half": (max(1, N // 2), G // max(1, N // 2))}
    return [topology(name, *shapes[which]) for name, which in TOPOLOGIES]


def analyse(runs: list[Run]) -> dict:
    """Every figure of the tables, from runs of one preset and layout."""
    from bench.placement import contiguous_placement, traffic_placement
    from bench.topology import step_time

    presets = {r.preset for r in runs}
    layouts = {(r.layout["source_ranks"], r.layout["nodes"]) for r in runs}
    if len(presets) != 1 or len(layouts) != 1:
        raise SystemExit(f"the runs mix presets {sorted(presets)} or layouts {sorted(layouts)}")
    T = min(r.counts.shape[0] for r in runs)
    topos = topologies(runs[0].layout)
    out = {"preset": runs[0].preset, "iterations": T, "topologies": [t.describe() for t in topos], "rows": []}
    for r in runs:
        T_, L, E = r.counts[:T].shape
        G = r.layout["source_ranks"]
        tokens = r.card.model.tokens_per_step
        src = r.source_counts[:T].astype(np.float64) * (TOKENS_PER_GPU * G / tokens)
        blocks = contiguous_placement(L, E, G)
        loads = blocks.device_loads(r.counts[:T].astype(np.float64))
        dropped = r.extras["dropped"][:T].astype(np.float64).sum() / (T * L * tokens * r.top_k)
        loss = r.extras["loss"][:T]
        row = {
            "label": r.label,
            "router": r.router,
            "top_k": r.top_k,
            "internode": [], "step_us": [],
            "imbalance": float((loads.max(axis=2) / loads.mean(axis=2)).mean()),
            "dropped": float(dropped),
            "final_loss": float(loss[-min(100, T):].mean()),
        }
        for topo in topos:
            st = step_time(src, contiguous_placement(L, E, G, topo.nodes), topo)
            row["internode"].append(float(st["internode_share"].mean()))
            row["step_us"].append(float(st["step_s"].mean() * 1e6))
        reach = r.extras.get("source_node_tokens")
        if reach is not None:  # the layout's nodes: a dispatch sent once per node and relayed inside it
            scaled = reach[:T].astype(np.float64) * (TOKENS_PER_GPU * G / tokens)
            st = step_time(src, contiguous_placement(L, E, G, topos[0].nodes), topos[0], node_tokens=scaled)
            row["internode_relayed"] = float(st["internode_share"].mean())
            row["step_relayed_us"] = float(st["step_s"].mean() * 1e6)
        half = T // 2
        topo = topos[0]
        planned = traffic_placement(src[:half].mean(axis=0), G, topo.nodes)
        before = step_time(src[half:], contiguous_placement(L, E, G, topo.nodes), topo)
        after = step_time(src[half:], planned, topo)
        after_loads = planned.device_loads(r.counts[half:T].astype(np.float64))
        row["placement"] = {
            "internode_before": float(before["internode_share"].mean()),
            "internode_after": float(after["internode_share"].mean()),
            "step_before_us": float(before["step_s"].mean() * 1e6),
            "step_after_us": float(after["step_s"].mean() * 1e6),
            "imbalance_after": float((after_loads.max(axis=2) / after_loads.mean(axis=2)).mean()),
        }
        if r.router == "locmoe":
            info = r.card.extra.get("locmoe", {})
            row["locmoe"] = {"kl": [float(v) for v in r.extras["locality_loss"][:T][-max(1, T // 10):].mean(axis=0)],
                             "delta": info.get("delta_last_tenth", []), "bound": info.get("capacity_lower_bound", []),
                             "bound_paper": info.get("capacity_lower_bound_at_paper_delta", float("nan")),
                             "capacity": info.get("capacity_used")}
        out["rows"].append(row)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _find(rows: list[dict], router: str, top_k: int) -> dict | None:
    return next((r for r in rows if r["router"] == router and r["top_k"] == top_k and "mu=" not in r["label"]), None)


def tables(result: dict) -> dict[str, str]:
    """The markdown tables: ``routers``, ``speedup`` and ``placement``."""
    rows, topos = result["rows"], result["topologies"]
    head = (["router", "inter-node share", "relayed", "imbalance", "dropped", "final loss"]
            + [f"{t} (us)" for t in topos] + [f"{topos[0]} relayed (us)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        relayed = "internode_relayed" in r
        cells = ([r["label"], _pct(r["internode"][0]), _pct(r["internode_relayed"]) if relayed else "-",
                  f"{r['imbalance']:.2f}", _pct(r["dropped"]), f"{r['final_loss']:.3f}"]
                 + [f"{t:.0f}" for t in r["step_us"]] + [f"{r['step_relayed_us']:.0f}" if relayed else "-"])
        lines.append("| " + " | ".join(cells) + " |")
    routers = "\n".join(lines) + "\n"

    comparisons = [("locmoe", 1, "hash", 1), ("locmoe", 1, "switch", 1),
                   ("node-limited", 2, "softmax-topk", 2), ("node-limited", 2, "hash", 2)]
    head = ["router", "against"] + topos + [f"{topos[0]} relayed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a, ka, b, kb in comparisons:
        x, y = _find(rows, a, ka), _find(rows, b, kb)
        if x is None or y is None:
            continue
        cells = [x["label"], y["label"]] + [_pct(1 - tx / ty) for tx, ty in zip(x["step_us"], y["step_us"])]
        both = "step_relayed_us" in x and "step_relayed_us" in y
        cells.append(_pct(1 - x["step_relayed_us"] / y["step_relayed_us"]) if both else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| LocMoE (reported) | hash, Switch | " + " | ".join([LOCMOE_REPORTED] * (len(topos) + 1)) + " |")
    speedup = "\n".join(lines) + "\n"

    head = ["router", "inter-node share, contiguous", "traffic placement", "imbalance after",
            f"{topos[0]} contiguous (us)", "traffic placement (us)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = r["placement"]
        cells = [r["label"], _pct(p["internode_before"]), _pct(p["internode_after"]), f"{p['imbalance_after']:.2f}",
                 f"{p['step_before_us']:.0f}", f"{p['step_after_us']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    placement = "\n".join(lines) + "\n"
    return {"routers": routers, "speedup": speedup, "placement": placement, "summary": summary(result)}


def summary(result: dict) -> str:
    """The figures the prose of docs/locality.md leans on, as a list (only where the runs hold the routers)."""
    rows, topos = result["rows"], result["topologies"]
    loc, sw, h1 = _find(rows, "locmoe", 1), _find(rows, "switch", 1), _find(rows, "hash", 1)
    nl, top2 = _find(rows, "node-limited", 2), _find(rows, "softmax-topk", 2)
    share = [r["internode"][0] for r in rows]
    lines = [f"* inter-node share of the routed slots ({topos[0]}): {_pct(min(share))} to {_pct(max(share))} across "
             "the routers"]
    if loc and sw and h1:
        cuts = [1 - a / b for other in (sw, h1) for a, b in zip(loc["step_us"], other["step_us"])]
        cuts += [1 - loc["step_relayed_us"] / other["step_relayed_us"] for other in (sw, h1)]
        info = loc.get("locmoe", {})
        lines += [
            f"* LocMoE against Switch and hash top-1 ({topos[0]}): "
            f"{_pct(1 - loc['step_us'][0] / sw['step_us'][0])} and {_pct(1 - loc['step_us'][0] / h1['step_us'][0])} "
            f"less time; {_pct(min(cuts))} to {_pct(max(cuts))} over all topologies",
            f"* max/mean GPU load: LocMoE {loc['imbalance']:.2f}, Switch {sw['imbalance']:.2f}, hash top-1 "
            f"{h1['imbalance']:.2f}; dropped slots {_pct(loc['dropped'])}, {_pct(sw['dropped'])}, "
            f"{_pct(h1['dropped'])}",
        ]
        if info:
            lines.append(
                f"* LocMoE's locality loss over the last tenth: {', '.join(f'{v:.2f}' for v in info['kl'])} (per "
                f"layer); delta {', '.join(f'{v:.3f}' for v in info['delta'])}; capacity lower bound (eq. 9) "
                f"{', '.join(f'{v:.2f}' for v in info['bound'])} tokens ({info['bound_paper']:.3f} at the paper's "
                f"delta = 0.03) against {info['capacity']} slots used")
    for r in rows:
        if r["router"] == "locmoe" and "mu=" in r["label"] and sw:
            change = r["step_us"][0] / sw["step_us"][0] - 1
            lines.append(f"* {r['label']}: inter-node share {_pct(r['internode'][0])}, max/mean GPU load "
                         f"{r['imbalance']:.2f}, dropped {_pct(r['dropped'])}, time against Switch "
                         f"{'+' if change >= 0 else ''}{_pct(change)}, final loss {r['final_loss']:.3f}")
    if nl and top2 and "internode_relayed" in nl:
        cuts = [1 - a / b for a, b in zip(nl["step_us"], top2["step_us"])]
        lines.append(
            f"* node-limited against softmax top-2: the relayed network share {_pct(nl['internode_relayed'])} "
            f"against {_pct(top2['internode_relayed'])}; {_pct(1 - nl['step_relayed_us'] / top2['step_relayed_us'])} "
            f"less time relayed, {_pct(min(cuts))} to {_pct(max(cuts))} not relayed; max/mean GPU load "
            f"{nl['imbalance']:.2f} against {top2['imbalance']:.2f}")
    losses = sorted((r["final_loss"], r["label"]) for r in rows)
    lines.append(f"* final loss: {losses[0][0]:.3f} ({losses[0][1]}) to {losses[-1][0]:.3f} ({losses[-1][1]})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", type=Path, help="tracer run folders (or trace folders) of one preset")
    parser.add_argument("--write", action="store_true", help="replace this preset's tables in docs/locality.md")
    parser.add_argument("--save", type=Path, help="also save the figures as JSON (for runs too large to commit)")
    parser.add_argument("--from-json", type=Path, help="the figures saved by --save, instead of run folders")
    args = parser.parse_args(argv)
    if bool(args.runs) == bool(args.from_json):
        parser.error("give run folders or --from-json, not both")
    result = json.loads(args.from_json.read_text()) if args.from_json else analyse([load_run(f) for f in args.runs])
    if args.save:
        args.save.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"{result['preset']}: {len(result['rows'])} runs, {result['iterations']} iterations compared; "
          f"times per MoE layer at {TOKENS_PER_GPU} tokens per GPU")
    for name, text in tables(result).items():
        print(f"\n{name}\n{text}")
        if args.write:
            write_table(DOC, f"{result['preset']}-{name}", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
