"""The project's placement policy against DeepSeek's own EPLB code on real traces, same loads.

Every 1,000 iterations (the origin), both policies place the mean load of the previous 1,000
iterations (what sw_avg forecasts) with `bench.placement.place` and `deepseek_place` (the vendored
deepseek-ai/EPLB `rebalance_experts`); both placements are scored on the next 1,000 iterations'
actual counts: max/mean device load per step, averaged over steps, layers and origins. Prints the
table docs/placement.md quotes (`--write` updates it there; tests/bench/test_placement.py keeps
it in step) and how long each policy takes per call, as a ratio measured in this run.

    python benchmarks/eplb_reference.py [--write]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRACES = ("gpt3-125m-16e-top2-s1", "gpt3-125m-64e-ds6-s1", "gpt3-350m-128e-top2-s1", "smartmoe-ae")
SPECS = ("G=8,R=8", "G=16,R=16,N=2")
WINDOW = 1000  # iterations
DOC = REPO / "docs" / "placement.md"
MARK = "<!-- output: eplb-reference -->"


def origins(steps: np.ndarray):
    """(window before, horizon after) record slices, one origin every WINDOW iterations."""
    for origin in range(int(steps[0]) + WINDOW, int(steps[-1]) - WINDOW + 2, WINDOW):
        a, b, c = np.searchsorted(steps, [origin - WINDOW, origin, origin + WINDOW])
        yield slice(a, b), slice(b, c)


def compare(trace_id: str, spec_text: str) -> dict:
    from bench.placement import PlacementSpec, deepseek_place, imbalance, place
    from datasets_registry import registry

    trace = registry.load(trace_id)
    spec = PlacementSpec.parse(spec_text).check(trace.experts)
    out = {"own": [], "eplb": [], "own_s": 0.0, "eplb_s": 0.0, "origins": 0, "identical": 0}
    for before, after in origins(trace.steps):
        estimate, counts = trace.proportions[before].mean(axis=0), trace.counts[after].astype(np.float64)
        for name, policy in (("own", place), ("eplb", deepseek_place)):
            t = time.perf_counter()
            placement = policy(estimate, spec)
            out[f"{name}_s"] += time.perf_counter() - t
            out[name].append(imbalance(placement.device_loads(counts)))
        out["identical"] += int((out["own"][-1] == out["eplb"][-1]).sum())
        out["origins"] += 1
    out["layers"] = trace.layers
    return out


def available(trace_id: str) -> bool:
    from datasets_registry import registry

    try:
        registry.load(trace_id)
        return True
    except Exception:  # a public trace whose raw files are not here
        return False


def rows(traces=TRACES) -> list[str]:
    """The quoted table's lines (deterministic); timings go to `timings`."""
    lines = [
        "| trace | spec | origins x layers | project max/mean | DeepSeek EPLB max/mean | same placement load |",
        "|---|---|---|---|---|---|",
    ]
    timings.clear()
    for trace_id in traces:
        if not available(trace_id):
            continue
        for spec in SPECS:
            r = compare(trace_id, spec)
            n = r["origins"] * r["layers"]
            lines.append(
                f"| {trace_id} | {spec} | {n} | {np.mean(r['own']):.5f} | {np.mean(r['eplb']):.5f} | "
                f"{r['identical']}/{n} |"
            )
            timings.append((trace_id, spec, r["own_s"] / r["origins"], r["eplb_s"] / r["origins"]))
    return lines


timings: list[tuple[str, str, float, float]] = []


def shown() -> list[str]:
    text = DOC.read_text()
    block = text[text.index(MARK) + len(MARK):].lstrip("\n")
    return block[: block.index("\n\n")].splitlines() if "\n\n" in block else block.splitlines()


def write(lines: list[str]) -> None:
    text = DOC.read_text()
    start = text.index(MARK) + len(MARK)
    old = "\n".join(shown())
    DOC.write_text(text[:start] + re.sub(re.escape(old), lambda _: "\n".join(lines), text[start:], count=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"update the table in {DOC.relative_to(REPO)}")
    args = ap.parse_args()
    lines = rows()
    print("\n".join(lines))
    print("\ntime per placement call (all layers), same run:")
    for trace_id, spec, own, eplb in timings:
        print(f"  {trace_id} {spec}: project {1e3 * own:.1f} ms, DeepSeek EPLB {1e3 * eplb:.1f} ms "
              f"({eplb / own:.0f}x as long)")
    if args.write:
        write(lines)
        print(f"wrote {DOC.relative_to(REPO)}")


if __name__ == "__main__":
    main()
