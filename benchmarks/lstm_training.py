"""LSTM training on the CPU and on a GPU: time, determinism and the scores it reaches.

    python benchmarks/lstm_training.py [--train gpt3-350m-128e-top2-s1] [--dataset gpt3-350m-128e-top2-s2]
                                       [--devices cpu,gpu] [--repeats 2] [--param KEY=VALUE ...]

For each device, evaluates `lstm` (trained once on `--train`, then forecasting every rolling
origin of `--dataset`; the default task) `--repeats` times with the same seed, and prints the
training time, the whole evaluation time, error_rate (all) at 1k and 2k, and whether the
repeats gave identical per-origin errors (the determinism the predictor promises). Times are
ratios against the first device, measured in the same run. A device torch cannot see is
skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def main() -> None:
    import torch

    from bench.aggregate import summarize
    from bench.evaluate import evaluate
    from bench.task import Task
    from datasets_registry import registry
    from models.lstm import LSTMPredictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", default="gpt3-350m-128e-top2-s1")
    ap.add_argument("--dataset", default="gpt3-350m-128e-top2-s2")
    ap.add_argument("--devices", default="cpu,gpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    params = dict(kv.split("=", 1) for kv in args.param)
    trace, train = registry.load(args.dataset), registry.load(args.train)
    task = Task(dataset=args.dataset, train=(args.train,))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {len(os.sched_getaffinity(0))} cores, "
        f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
    )
    print(
        f"lstm trained on {args.train} ({train.records} records), tested on {args.dataset} {trace.shape}, params "
        f"{params or 'defaults'}"
    )
    rows, base = [], None
    for device in args.devices.split(","):
        if device == "gpu" and not torch.cuda.is_available():
            print("gpu: skipped (torch sees no GPU)")
            continue
        runs = []
        for _ in range(args.repeats):
            pred = LSTMPredictor(**params, device=device)
            ev = evaluate(trace, pred, task, [train])
            frame = ev.frame().sort_values(["horizon", "origin", "layer"])
            summary = summarize(frame, ev.failures, task.horizons, ["error_rate"])
            runs.append(
                (
                    pred.train_seconds,
                    ev.seconds,
                    frame["error_rate"].to_numpy(),
                    summary,
                    pred.best_val,
                    len(ev.failures),
                )
            )
        train_s = min(r[0] for r in runs)
        eval_s = min(r[1] for r in runs)
        base = base or (train_s, eval_s)
        identical = all(np.array_equal(runs[0][2], r[2]) for r in runs[1:])
        s = runs[0][3]
        row = {
            "device": device,
            "train_s": round(train_s, 2),
            "eval_s": round(eval_s, 2),
            "train_vs_first": round(base[0] / train_s, 2),
            "eval_vs_first": round(base[1] / eval_s, 2),
            "error_rate_1k": s["1000"]["error_rate"]["all"],
            "error_rate_2k": s["2000"]["error_rate"]["all"],
            "best_val_loss": runs[0][4],
            "repeats": args.repeats,
            "repeats_identical": identical,
            "failures": sum(r[5] for r in runs),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if len(rows) == 2:
        a, b = rows
        diff = max(abs(a["error_rate_1k"] - b["error_rate_1k"]), abs(a["error_rate_2k"] - b["error_rate_2k"]))
        print(
            f"{b['device']} vs {a['device']}: training x{b['train_vs_first']:.2f} faster, evaluation "
            f"x{b['eval_vs_first']:.2f}; "
            f"error_rate differs by at most {100 * diff:.4f} points"
        )


if __name__ == "__main__":
    main()
