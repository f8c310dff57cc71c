"""What the forecaster in the loop costs: the same training with and without it, in one run.

Trains the tracer's model (a preset, default tiny-cpu, on random tokens) for `--steps` steps in
a plain PyTorch loop, alternating steps without and with a LoadRecorder + LivePlanner
(bench.live.RecordingPlanner: recording, predictor updates, a plan every `--every` recorded steps)
so that both see the same machine load (on a shared machine, blocks of steps drift apart), and
prints the time per step of each, the overhead as a fraction of the step time, and the planner's
own time per step (everything outside the forward hooks).

    python benchmarks/live_overhead.py [--preset tiny-cpu] [--model sw_avg] [--steps 600] [--every 100]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from bench.live import LivePlanner, RecordingPlanner
    from datasets_registry.tracer.config import PRESETS
    from datasets_registry.tracer.model import MoEGPT
    from datasets_registry.tracer.recorder import LoadRecorder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny-cpu")
    ap.add_argument("--model", default="sw_avg")
    ap.add_argument("--spec", default="G=4,R=4")
    ap.add_argument("--steps", type=int, default=600, help="steps of each variant")
    ap.add_argument("--every", type=int, default=100, help="plan interval, steps")
    ap.add_argument("--block", type=int, default=1, help="steps per alternating block")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = PRESETS[args.preset]
    model = MoEGPT(cfg).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator(device=args.device).manual_seed(1)
    recorder = LoadRecorder(cfg.n_experts).attach(
        {f"moe{i}": b.moe for i, b in enumerate(model.moe_blocks)}, kind="counts", select=1)
    driver = RecordingPlanner(recorder, LivePlanner(args.model, args.spec, args.every))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def train_step() -> None:
        tok = torch.randint(0, cfg.vocab, (cfg.batch_size, cfg.seq_len + 1), generator=gen, device=args.device)
        loss, aux, _, _ = model(tok[:, :-1], tok[:, 1:])
        (loss + cfg.aux_loss * aux).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(20):  # warm up
        recorder.enabled = False
        train_step()
    seconds = {"without": 0.0, "with": 0.0}
    planner_seconds = 0.0
    done = {"without": 0, "with": 0}
    iteration = 0
    while min(done.values()) < args.steps:
        for variant in ("without", "with"):
            recorder.enabled = variant == "with"
            sync()
            t = time.perf_counter()
            for _ in range(args.block):
                train_step()
                if variant == "with":
                    t_plan = time.perf_counter()
                    driver.step(iteration)
                    planner_seconds += time.perf_counter() - t_plan
                    iteration += 1
            sync()
            seconds[variant] += time.perf_counter() - t
            done[variant] += args.block
    driver.flush()
    per = {k: seconds[k] / done[k] for k in seconds}
    print(f"{args.preset} on {args.device}, {args.model} planning {args.spec} every {args.every} steps "
          f"({len(driver.planner.plans)} plans over {iteration} recorded steps):")
    print(f"  without: {1e3 * per['without']:.2f} ms/step, with: {1e3 * per['with']:.2f} ms/step")
    own = planner_seconds / done["with"]
    print(f"  overhead: {100 * (per['with'] / per['without'] - 1):+.2f}% of the step time; the planner's own "
          f"time: {1e3 * own:.3f} ms/step ({100 * own / per['without']:.2f}% of the step time)")


if __name__ == "__main__":
    main()
