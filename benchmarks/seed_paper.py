"""The seed paper's comparison ("Prediction Is All MoE Needs", 2024) on this benchmark's protocol.

    python benchmarks/seed_paper.py [--dataset ID[:TRAIN_ID]] ... [--models sw_avg,arima,lstm,...] [--metric error_rate]

For each dataset (``ID:TRAIN`` gives the LSTM, and only it, a training trace: the seed paper
trained on one run and tested on another), runs every model through `bench.runner.run` (cached
runs are reused; new ones are logged to MLflow) with the default task: horizons 1,000 and 2,000
iterations, origins every 100. Prints a markdown table of `--metric` (all / transient / stable)
beside the noise floor, with each run's evaluation time (training included).
"""

from __future__ import annotations

import argparse

MODELS = "sw_avg,arima,lstm,last,ema,static,sw_sum"
PAPER = ("seed paper (GPT-3 350M, 128 experts; SW_Avg/ARIMA/LSTM): about 1.3% at 1k and 1.8% at 2k; 0.25% stable "
         "(125M, 16e, SW_Avg)")


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def main() -> None:
    from bench import runner
    from bench.task import Task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dataset", action="append", default=None, help="ID or ID:TRAIN_ID (repeatable; default smartmoe-ae)"
    )
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--metric", default="error_rate", choices=["error_rate", "window_error", "mape"])
    ap.add_argument("--no-track", action="store_true")
    args = ap.parse_args()
    print("| dataset | model | 1k all | 1k transient | 1k stable | 2k all | 2k transient | 2k stable | eval s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for spec in args.dataset or ["smartmoe-ae"]:
        ds, _, train = spec.partition(":")
        floor = None
        for model in args.models.split(","):
            task = Task(dataset=ds, train=(train,) if train and model == "lstm" else ())
            r = runner.run(model, ds, task=task, track=not args.no_track)
            h = r["horizons"]
            cells = [pct(h[H][args.metric][s]) for H in ("1000", "2000") for s in ("all", "transient", "stable")]
            name = model + (f" (trained on {train})" if task.train else "")
            print(f"| {ds} | {name} | " + " | ".join(cells) + f" | {r['seconds']:.1f} |")
            floor = [pct(h[H]["noise_floor"][s]) for H in ("1000", "2000") for s in ("all", "transient", "stable")]
        print(f"| {ds} | noise floor (per step) | " + " | ".join(floor) + " | |")
    print(
        f"\n{args.metric} in % (error_rate: L1 distance per step, = mean relative error per expert near balance); "
        f"{PAPER}."
    )


if __name__ == "__main__":
    main()
