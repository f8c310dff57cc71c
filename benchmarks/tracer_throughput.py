"""Tracer throughput: tokens/s, model FLOP utilisation (MFU) and the overhead of recording.

For each preset (or variant ``PRESET:key=value,...``) the script builds the tracer, runs warm-up
iterations (these include torch.compile), then alternates timed blocks of iterations with
recording ON (counts, drops and loss pushed into the device buffer, copied to the host every
``--flush-every`` iterations) and recording OFF (the same training step, nothing recorded), in
alternating order, and reports medians. The model computes the per-expert counts in both cases:
the load-balancing loss and the capacity drops need them, so "recording" is only keeping them.

MFU = model FLOPs per token (forward + backward, k active experts, attention scores; see
``datasets_registry.tracer.model.flops_per_token``) x tokens/s / peak. The peak defaults to the
H100 SXM dense bf16 figure, 989.4 TFLOP/s; the script also measures a large bf16 matmul in the
same run and prints MFU against that.

    python benchmarks/tracer_throughput.py --device cuda
    python benchmarks/tracer_throughput.py --device cuda --variants gpt3-125m-16e "gpt3-125m-16e:d_model=768,n_heads=12"
    python benchmarks/tracer_throughput.py --device cuda --variants gpt3-125m-16e@cudagraphs gpt3-125m-16e@full
    python benchmarks/tracer_throughput.py --device cpu --variants tiny-cpu --steps 20 --rounds 2 --warmup 5
    python benchmarks/tracer_throughput.py --table benchmarks/results/tracer_throughput_h200_*.json --write

``--table`` renders saved ``--json-out`` files as the throughput table of docs/tracer.md (``--write`` puts it there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_variant(spec: str):
    from datasets_registry.tracer.config import get_preset

    spec = spec.split("@")[0]
    name, _, rest = spec.partition(":")
    cfg = get_preset(name)
    changes = {}
    for pair in filter(None, rest.split(",")):
        k, _, v = pair.partition("=")
        field_type = type(getattr(cfg, k))
        changes[k] = v if field_type is str else (float(v) if field_type is float else int(v))
    return cfg.replace(**changes)


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def bench_one(cfg, device, steps, rounds, warmup, flush_every, compile, profile=False, fold_clip=True):
    import torch

    from datasets_registry.tracer.model import flops_per_token
    from datasets_registry.tracer.train import Tracer

    t0 = time.perf_counter()
    tr = Tracer(cfg, device=device, compile=compile, flush_every=flush_every, fold_clip=fold_clip)
    for _ in range(warmup):
        tr.train_step(record=True)
    sync(tr.device)
    warm_s = time.perf_counter() - t0
    times = {True: [], False: []}
    for r in range(rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        for rec in order:
            sync(tr.device)
            t = time.perf_counter()
            for _ in range(steps):
                tr.train_step(record=rec)
            if rec:
                tr.buffer.flush()  # the host copy is part of recording
            sync(tr.device)
            times[rec].append((time.perf_counter() - t) / steps)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if tr.device.type == "cuda" else [])
        with prof(activities=acts) as p:
            for _ in range(5):
                tr.train_step(record=True)
            sync(tr.device)
        key = "self_cuda_time_total" if tr.device.type == "cuda" else "self_cpu_time_total"
        print(p.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60), flush=True)
    fl = flops_per_token(cfg)
    mem = torch.cuda.max_memory_allocated(tr.device) / 2**30 if tr.device.type == "cuda" else None
    out = {
        "variant": cfg.preset,
        "compile": tr.compiled,
        "expert_matmul": cfg.expert_matmul,
        "clip": "folded" if tr.fold_clip else "separate",
        "d_model": cfg.d_model,
        "layers": cfg.n_layers,
        "experts": cfg.n_experts,
        "top_k": cfg.top_k,
        "tokens_per_step": cfg.tokens_per_step,
        "params": tr.model.num_params(),
        "active_params": int(fl["active_params"]),
        "flops_per_token": fl["total"],
        "warmup_compile_s": round(warm_s, 1),
        "step_ms_on": on * 1e3,
        "step_ms_off": off * 1e3,
        "all_ms_on": [x * 1e3 for x in times[True]],
        "all_ms_off": [x * 1e3 for x in times[False]],
        "tokens_per_s_on": cfg.tokens_per_step / on,
        "tokens_per_s_off": cfg.tokens_per_step / off,
        "overhead_pct": (on / off - 1) * 100,
        "max_mem_gib": mem,
    }
    del tr
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch._dynamo.reset()
    return out


DOC = Path(__file__).resolve().parents[1] / "docs" / "tracer.md"


def table(paths: list[Path]) -> str:
    """The markdown table of saved runs (rows in file order): one line per variant and setting."""
    lines = [
        "| run | variant | d | tokens/step | experts' matmul | clipping | ms/step | tokens/s | TFLOP/s | MFU (989.4) "
        "| MFU (measured matmul) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        saved = json.loads(path.read_text())
        for r in saved["rows"]:
            tflops = r["flops_per_token"] * r["tokens_per_s_on"] / 1e12
            lines.append(
                f"| {path.stem} | {r['variant']} | {r['d_model']} | {r['tokens_per_step']} | {r['expert_matmul']} "
                f"| {r.get('clip', 'separate')} | {r['step_ms_on']:.2f} | {r['tokens_per_s_on'] / 1e3:.0f}k "
                f"| {tflops:.0f} | {r['mfu_pct']:.1f}% | {r['mfu_measured_peak_pct']:.1f}% |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", nargs="+", default=["tiny-cpu", "gpt3-125m-16e", "gpt3-350m-128e"])
    ap.add_argument("--steps", type=int, default=100, help="iterations per timed block")
    ap.add_argument("--rounds", type=int, default=3, help="timed blocks per mode (ON and OFF alternate)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--flush-every", type=int, default=100)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler kernel table of 5 steps per variant")
    ap.add_argument(
        "--peak-tflops", type=float, default=989.4, help="peak bf16 dense TFLOP/s for MFU (H100 SXM: 989.4)"
    )
    ap.add_argument(
        "--clip", choices=("folded", "separate", "both"), default="folded",
        help="gradient clipping folded into the fused AdamW step (the tracer's default), a separate "
        "clip_grad_norm_ pass, or both (each variant twice: the ratio in the same run)",
    )
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--table", type=Path, nargs="+", help="render these saved --json-out files as a table, run nothing")
    ap.add_argument("--write", action="store_true", help="with --table: write it into docs/tracer.md")
    args = ap.parse_args(argv)
    if args.table:
        text = table(args.table)
        if args.write:
            from benchmarks.doc_tables import write_table

            write_table(DOC, "tracer-throughput-h200", text)
        print(text, end="")
        return 0

    import torch

    device = torch.device(args.device)
    peak = args.peak_tflops * 1e12
    measured = matmul_peak(device)
    if measured:
        print(
            f"device: {torch.cuda.get_device_name(device)}; torch {torch.__version__}; bf16 8192^3 matmul: "
            f"{measured / 1e12:.0f} TFLOP/s",
            flush=True,
        )
    rows = []
    clips = {"folded": (True,), "separate": (False,), "both": (False, True)}[args.clip]
    for spec, fold_clip in ((spec, fold) for spec in args.variants for fold in clips):
        cfg = parse_variant(spec)
        mode = spec.split("@")[1] if "@" in spec else None
        try:
            r = bench_one(
                cfg,
                device,
                args.steps,
                args.rounds,
                args.warmup,
                args.flush_every,
                False if args.no_compile else mode,
                args.profile,
                fold_clip,
            )
        except torch.cuda.OutOfMemoryError as exc:  # report and go on
            print(f"{spec}: out of memory ({exc})", flush=True)
            torch.cuda.empty_cache()
            continue
        r["spec"] = spec if len(clips) == 1 else f"{spec} [{r['clip']} clip]"
        r["mfu_pct"] = 100 * r["flops_per_token"] * r["tokens_per_s_on"] / peak if device.type == "cuda" else None
        r["mfu_measured_peak_pct"] = 100 * r["flops_per_token"] * r["tokens_per_s_on"] / measured if measured else None
        rows.append(r)
        print(json.dumps({k: v for k, v in r.items() if not k.startswith("all_")}), flush=True)
        if args.json_out:
            args.json_out.write_text(
                json.dumps(
                    {"device": str(device), "matmul_peak_flops": measured, "peak_flops": peak, "rows": rows}, indent=2
                )
            )

    print()
    print(
        f"{'variant':44s} {'d':>5s} {'tok/step':>8s} {'ms/step':>8s} {'tok/s':>10s} {'TFLOP/s':>8s} {'MFU%':>6s} "
        f"{'MFU%meas':>8s} {'rec ON/OFF':>10s} {'overhead%':>9s}"
    )
    for r in rows:
        tf = r["flops_per_token"] * r["tokens_per_s_on"] / 1e12
        mfu = f"{r['mfu_pct']:.1f}" if r["mfu_pct"] is not None else "-"
        mfm = f"{r['mfu_measured_peak_pct']:.1f}" if r["mfu_measured_peak_pct"] is not None else "-"
        print(
            f"{r['spec']:44s} {r['d_model']:5d} {r['tokens_per_step']:8d} {r['step_ms_on']:8.2f} "
            f"{r['tokens_per_s_on']:10.0f} {tf:8.1f} {mfu:>6s} {mfm:>8s} "
            f"{r['step_ms_on'] / r['step_ms_off']:10.4f} {r['overhead_pct']:9.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
