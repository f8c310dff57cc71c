"""Growth with the trace's shape: sw_avg and ema over records x layers x experts up to DeepSeek-V3's 58 x 256.

For each size a SYNTHETIC trace (``datasets_registry.synthetic.drifting_blocks``, labelled
synthetic in its card) is written to the data home in the chunked layout, block by block (it is
never whole in memory), then evaluated at horizons 1,000 and 2,000, stride 100, by

- the harness: ``bench.sharded.evaluate_sharded`` in this machine's one process, layer group by
  layer group (``--layers-per-piece``; the vectorised estimators, all metrics, noise floor and
  state labels; ``--floors`` adds the hindsight floors);
- a bare numpy loop over the same layer groups and origins computing the same metrics and noise
  floor (no state labels): the baseline, measured in the same run.

Each (size, model, implementation) runs in a subprocess of its own, which reports its CPU and
wall seconds and its peak resident memory (``ru_maxrss``: the interpreter, numpy and pandas
included). The script prints one row per measurement, the ratio harness / bare, and per model
and implementation the log-log slope of CPU seconds against records x layers x experts.

    MOE_LOAD_BENCH_HOME=/tmp/shape-home nice python benchmarks/scaling_shape.py [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = "5000x6x16,10000x12x64,50000x58x256,20000x24x128"  # the largest before the last: it is the one needed
PARAMS = {"sw_avg": {"window": 100}, "ema": {"decay": 0.95}}
RESULTS = ROOT / "benchmarks" / "results" / "scaling_shape.txt"
DOC = ROOT / "docs" / "scale.md"


def slopes(rows: list[dict]) -> dict[tuple[str, str], float]:
    """(model, implementation) -> log-log slope of CPU seconds against records x layers x experts."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        for kind in ("harness", "bare"):
            pts = [(np.prod(r["size"]), r["cpu_s"]) for r in rows if r["model"] == model and r["kind"] == kind]
            if len(pts) > 1:
                out[model, kind] = float(np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0])
    return out


def doc_table(rows: list[dict]) -> str:
    """docs/scale.md's table from the saved measurements (benchmarks/results/scaling_shape.json)."""
    out = ["| records x layers x experts | model | harness CPU s | harness peak MB | bare CPU s | bare peak MB "
           "| harness / bare |", "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (int(np.prod(r["size"])), r["model"])):
        if r["kind"] != "harness":
            continue
        b = next(x for x in rows if x["kind"] == "bare" and x["model"] == r["model"] and x["size"] == r["size"])
        out.append(f"| {' x '.join(f'{n:,}' for n in r['size'])} | {r['model']} | {r['cpu_s']:.1f} | "
                   f"{r['peak_mb']:.0f} | {b['cpu_s']:.1f} | {b['peak_mb']:.0f} | {r['cpu_s'] / b['cpu_s']:.2f}x |")
    out.append("")
    out += [f"- log-log slope of CPU seconds against records x layers x experts, {m} {k}: {v:.2f}"
            for (m, k), v in slopes(rows).items()]
    return "\n".join(out) + "\n"


def dataset_id(size: tuple[int, int, int]) -> str:
    return "synthetic-shape-{}x{}x{}".format(*size)


def generate(size: tuple[int, int, int]) -> None:
    from datasets_registry import registry
    from datasets_registry.synthetic import drifting_blocks, drifting_card

    T, L, E = size
    name = dataset_id(size)
    if any(e.id == name for e in registry.entries()):
        return
    with registry.chunked_writer(name, drifting_card(name, L, E), L, E, dtype="uint16") as w:
        for counts, steps in drifting_blocks(T, L, E, block=1024, seed=T + L + E):
            w.append(counts, steps)


def task():
    from bench.task import Task

    return Task("synthetic", horizons=(1000, 2000), stride=100, min_history=100)


def harness(size, model: str, layers_per_piece: int, floors: bool) -> dict:
    from bench.sharded import evaluate_sharded

    got = evaluate_sharded(dataset_id(size), model, PARAMS[model], task(), layers_per_piece=layers_per_piece,
                           floors=floors)
    sums = {H: 0.0 for H in task().horizons}
    counts = dict.fromkeys(task().horizons, 0)
    for row in got.evaluation.rows:
        sums[row["horizon"]] += row["error_rate"]
        counts[row["horizon"]] += 1
    return {"error_rate": {H: sums[H] / counts[H] for H in sums}, "pieces": got.pieces}


def bare(size, model: str, layers_per_piece: int, floors: bool) -> dict:
    """The same metrics as a plain loop: per layer group, per origin, per horizon (no harness)."""
    from bench.metrics import noise_floor
    from bench.sharded import layer_groups
    from bench.task import rolling_origins
    from datasets_registry import registry

    stored = registry.open_chunked(dataset_id(size))
    steps, E = stored.steps, stored.experts
    origins = rolling_origins(steps, task())
    every = np.unique(np.concatenate([o.records for o in origins.values()]))
    sums = {H: 0.0 for H in origins}
    counts = dict.fromkeys(origins, 0)
    for group in layer_groups(stored.layers, layers_per_piece):
        c = stored.read(layers=group)
        totals = c.sum(axis=2)
        p = c / totals[:, :, None]
        del c
        if model == "sw_avg":
            est = {}
            for o in every.tolist():
                start = min(int(np.searchsorted(steps, steps[o - 1] - PARAMS[model]["window"], side="right")), o - 1)
                est[o] = p[start:o].mean(axis=0)
        else:
            est, state, d, i = {}, p[0].copy(), PARAMS[model]["decay"], 0
            for t in range(1, int(every[-1]) + 1):
                if t == every[i]:
                    est[t] = state / state.sum(axis=-1, keepdims=True)
                    i += 1
                    if t == every[-1]:
                        break
                a = d ** float(steps[t] - steps[t - 1])
                state = a * state + (1 - a) * p[t]
        for H, ori in origins.items():
            for o, n in zip(ori.records.tolist(), ori.lengths.tolist()):
                truth = p[o : o + n]
                diff = np.abs(est[o] - truth)
                er = diff.sum(axis=2).mean(axis=0)
                np.abs(est[o] - truth.mean(axis=0)).sum(axis=1)
                (diff / np.maximum(truth, 1 / (100 * E))).mean(axis=(0, 2))
                noise_floor(truth.mean(axis=0), totals[o : o + n].mean(axis=0))
                sums[H] += er.sum()
                counts[H] += len(er)
    return {"error_rate": {H: sums[H] / counts[H] for H in sums}, "pieces": len(layer_groups(stored.layers,
                                                                                            layers_per_piece))}


def measure(kind: str, size, model: str, layers_per_piece: int, floors: bool) -> dict:
    """Run in a subprocess of its own: seconds and peak memory of one evaluation."""
    import resource

    import pandas  # noqa: F401 - imports are not what is measured
    import pyarrow.parquet  # noqa: F401
    import scipy.stats  # noqa: F401

    import bench.metrics  # noqa: F401
    import bench.sharded  # noqa: F401
    import datasets_registry.chunked  # noqa: F401

    w0, c0 = time.perf_counter(), time.process_time()
    out = (harness if kind == "harness" else bare)(size, model, layers_per_piece, floors)
    out.update(cpu_s=time.process_time() - c0, wall_s=time.perf_counter() - w0,
               peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{args}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=SIZES, help="comma-separated RECORDSxLAYERSxEXPERTS")
    ap.add_argument("--models", default="sw_avg,ema")
    ap.add_argument("--layers-per-piece", type=int, default=2)
    ap.add_argument("--floors", action="store_true", help="the harness also computes the hindsight floors")
    ap.add_argument("--write", action="store_true", help=f"also save the output in {RESULTS.relative_to(ROOT)}")
    ap.add_argument("--doc", action="store_true", help="only rewrite docs/scale.md's table from the saved figures")
    ap.add_argument("--generate", help=argparse.SUPPRESS)
    ap.add_argument("--measure", nargs=3, metavar=("KIND", "MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.doc:
        from benchmarks.doc_tables import write_table

        write_table(DOC, "shape", doc_table(json.loads(RESULTS.with_suffix(".json").read_text())))
        return 0
    if args.generate:
        generate(tuple(int(x) for x in args.generate.split("x")))
        print(json.dumps({"ok": True}))
        return 0
    if args.measure:
        kind, model, size = args.measure
        print(json.dumps(measure(kind, tuple(int(x) for x in size.split("x")), model, args.layers_per_piece,
                                 args.floors)))
        return 0

    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    models = args.models.split(",")
    say(f"SYNTHETIC traces (drifting_blocks), chunked; horizons 1000 and 2000, stride 100; layer groups of "
        f"{args.layers_per_piece}; hindsight floors: {'yes' if args.floors else 'no'}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    say(f"{'records':>8} {'layers':>6} {'experts':>7} {'cells':>13} {'model':>7} {'impl':>8} {'CPU s':>9} "
        f"{'wall s':>9} {'peak MB':>8} {'harness/bare':>13}")
    rows = []

    def save(final: bool) -> None:
        """With --write: the output so far (a long run stopped early keeps what it measured)."""
        if not args.write:
            return
        RESULTS.write_text("\n".join(lines) + ("\n" if final else "\n(stopped before the end)\n"))
        saved = [{**r, "size": list(r["size"])} for r in rows]
        RESULTS.with_suffix(".json").write_text(json.dumps(saved, indent=1) + "\n")
        if final:
            from benchmarks.doc_tables import write_table

            write_table(DOC, "shape", doc_table(saved))

    for size in sizes:
        w0 = time.perf_counter()
        child(["--generate", "x".join(map(str, size))])
        gen_s = time.perf_counter() - w0
        for model in models:
            got = {}
            for kind in ("harness", "bare"):
                extra = ["--layers-per-piece", str(args.layers_per_piece)] + (["--floors"] if args.floors else [])
                got[kind] = child(["--measure", kind, model, "x".join(map(str, size)), *extra])
            for H in got["harness"]["error_rate"]:
                a, b = got["harness"]["error_rate"][H], got["bare"]["error_rate"][H]
                assert abs(a - b) <= 1e-9 * abs(b), (size, model, H, a, b)
            ratio = got["harness"]["cpu_s"] / got["bare"]["cpu_s"]
            for kind in ("harness", "bare"):
                m = got[kind]
                rows.append({"size": size, "model": model, "kind": kind, **m})
                say(f"{size[0]:>8} {size[1]:>6} {size[2]:>7} {int(np.prod(size)):>13,} {model:>7} {kind:>8} "
                    f"{m['cpu_s']:9.1f} {m['wall_s']:9.1f} {m['peak_mb']:8.0f} "
                    f"{(f'{ratio:.2f}x' if kind == 'harness' else ''):>13}")
            save(final=False)
        say(f"  (trace written in {gen_s:.0f} s, or found in the data home)")
    say()
    for (model, kind), slope in slopes(rows).items():
        say(f"log-log slope of CPU seconds against records x layers x experts, {model} {kind}: {slope:.2f}")
    say(f"mean error_rate per horizon agreed between harness and bare at every size (relative 1e-9); load average "
        f"{os.getloadavg()[0]:.1f} at the end")
    save(final=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
