"""The seed paper's comparison ("Prediction Is All MoE Needs", 2024) on this benchmark's protocol.

    python benchmarks/seed_paper.py [--dataset ID[:TRAIN_ID]] ... [--models sw_avg,arima,lstm,...]
        [--metric error_rate | --readings | --seeds]

For each dataset (``ID:TRAIN`` gives the LSTM, and only it, a training trace: the seed paper
trained on one run and tested on another), runs every model through `bench.runner.run` (cached
runs are reused; new ones are logged to MLflow) with the default task: horizons 1,000 and 2,000
iterations, origins every 100. Prints a markdown table of `--metric` (all / transient / stable)
beside the noise floor, with each run's evaluation time (training included).

``--readings`` prints instead one table of every plausible reading of the paper's "mean value of
the error ratio for each individual MoE layer prediction result", each derived from the metrics
a run reports (E is the trace's number of experts):

1. ``error_rate``: the L1 distance of the shares, summed over experts;
2. ``error_rate / E``: the mean absolute error per expert, in share units (as a fraction of the
   uniform share 1/E it is ``error_rate`` again);
3. ``mape``: the relative error per expert;
4. ``window_error`` and ``window_error / E``: the error of the horizon's mean load, and per expert.

Readings 1 and 2 have the multinomial noise floor beside them (``noise_floor`` and its ``/ E``).

``--seeds`` groups the datasets by configuration (the id less its ``-sN`` seed) and prints each
model's `--metric` as mean +- sample standard deviation over the seeds, and the seeds' range.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.doc_tables import write_table  # noqa: E402

MODELS = "sw_avg,arima,lstm,last,ema,static,sw_sum"
PAPER = (
    "seed paper (GPT-3 350M, 128 experts; SW_Avg/ARIMA/LSTM): about 1.3% at 1k and 1.8% at 2k; 0.25% stable "
    "(125M, 16e, SW_Avg)"
)
HORIZONS = (1000, 2000)
RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
STATES = ("all", "transient", "stable")
#: (label, metric, divided by the number of experts); the floor of readings 1 and 2 is the noise floor.
READINGS = (
    ("1 error_rate", "error_rate", False),
    ("2 error_rate / E", "error_rate", True),
    ("3 mape", "mape", False),
    ("4a window_error", "window_error", False),
    ("4b window_error / E", "window_error", True),
)
FLOORS = (
    ("1 error_rate", "noise_floor", False),
    ("2 error_rate / E", "noise_floor", True),
)


def pct(x, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def experts(result) -> int:
    """E of the trace a run was evaluated on, read from its card and array headers."""
    from datasets_registry import registry

    return int(registry.summary(registry.resolve(f"{result.dataset}@{result.dataset_version}"))["experts"])


def cells(result, metric: str, per_expert: bool, digits: int = 2) -> list[str]:
    E = experts(result) if per_expert else 1
    out = []
    for H in HORIZONS:
        for s in STATES:
            v = result.value(H, metric, s)
            out.append(pct(None if v is None else v / E, digits))
    return out


def label(model: str, ds: str, train: str) -> str:
    """`model`, and for the LSTM where it trains: ``(history)`` or ``(trained on -s1)`` (the id's differing tail)."""
    if model != "lstm":
        return model
    if not train:
        return "lstm (history)"
    a, b = ds.split("-"), train.split("-")
    common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    tail = b[common:]
    return f"lstm (trained on {'-' + '-'.join(tail) if common and tail else train})"


def runs(specs: list[str], models: list[str], track: bool):
    """(dataset, model label, result) of every model on every dataset, in order."""
    from bench import runner
    from bench.task import Task

    for spec in specs:
        ds, _, train = spec.partition(":")
        for model in models:
            task = Task(dataset=ds, train=(train,) if train and model == "lstm" else ())
            r = runner.run(model, ds, task=task, track=track)
            yield ds, label(model, ds, train if task.train else ""), r


def metric_table(specs: list[str], models: list[str], metric: str, track: bool) -> None:
    print("| dataset | model | 1k all | 1k transient | 1k stable | 2k all | 2k transient | 2k stable | eval s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")

    def floor(r) -> None:
        print(f"| {r.dataset} | noise floor (per step) | " + " | ".join(cells(r, "noise_floor", False)) + " | |")

    last = None
    for ds, name, r in runs(specs, models, track):
        if last is not None and last.dataset != ds:
            floor(last)
        print(f"| {ds} | {name} | " + " | ".join(cells(r, metric, False)) + f" | {r.seconds:.1f} |")
        last = r
    if last is not None:
        floor(last)
    print(
        f"\n{metric} in % (error_rate: L1 distance per step, = mean relative error per expert near balance); {PAPER}."
    )


SEEDS_HEAD = ("| configuration | seeds | model | 1k all | 1k transient | 1k stable | 2k all | 2k transient "
              "| 2k stable |\n|---|---:|---|---:|---:|---:|---:|---:|---:|")


def spread(values: list[float], seeds: int) -> str:
    """``mean +- sd (min-max)`` in %, with ``[n=k]`` where fewer than all seeds have a value."""
    import numpy as np

    v = 100 * np.array(values)
    if not len(v):
        return "-"
    out = f"{v.mean():.2f} +- {v.std(ddof=1) if len(v) > 1 else 0:.2f} ({v.min():.2f}-{v.max():.2f})"
    return out + (f" [n={len(v)}]" if len(v) < seeds else "")


def seed_rows(specs: list[str], models: list[str], metric: str, track: bool) -> list[str]:
    """One row per (configuration, model): mean +- standard deviation over the seeds; the noise floor closes each."""
    groups: dict[str, dict[str, list]] = {}
    for ds, name, r in runs(specs, models, track):
        groups.setdefault(re.sub(r"-s\d+$", "", ds), {}).setdefault(name, []).append(r)
    rows = []
    for config, by_model in groups.items():
        lines = [(n, rs, metric) for n, rs in by_model.items()]
        for name, results, m in lines + [("*noise floor*", next(iter(by_model.values())), "noise_floor")]:
            cells_ = [spread([v for v in (r.value(H, m, st) for r in results) if v is not None], len(results))
                      for H in HORIZONS for st in STATES]
            rows.append(f"| {config} | {len(results)} | {name} | " + " | ".join(cells_) + " |")
    return rows


def seeds_table(specs: list[str], models: list[str], metric: str, track: bool) -> str:
    return (SEEDS_HEAD + "\n" + "\n".join(seed_rows(specs, models, metric, track))
            + f"\n\n{metric} in %: mean +- sample standard deviation over the seeds (their range; [n=k] where only k"
            " seeds have origins in that state).\n")


def readings_table(specs: list[str], models: list[str], track: bool) -> None:
    """One row per (dataset, model, reading), grouped by dataset; the noise floors close each dataset."""
    by_ds: dict[str, list] = {}
    for ds, name, r in runs(specs, models, track):
        by_ds.setdefault(ds, []).append((name, r))
    print("| dataset | model | reading | 1k all | 1k trans. | 1k stable | 2k all | 2k trans. | 2k stable |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for ds, rows in by_ds.items():
        lines = [(name, r, READINGS) for name, r in rows] + [("*noise floor*", rows[0][1], FLOORS)]
        for name, r, readings in lines:
            for reading, metric, per_expert in readings:
                values = cells(r, metric, per_expert, 3 if per_expert else 2)
                print(f"| {ds} | {name} | {reading} | " + " | ".join(values) + " |")
    sizes = ", ".join(f"{ds} {experts(rows[0][1])}" for ds, rows in by_ds.items())
    print(f"\nAll readings in %, the per-expert ones (/ E) in points of share. E (experts): {sizes}.")
    print("1: L1 distance of the shares; 2: mean absolute error per expert (as a fraction of the uniform share 1/E")
    print("it is reading 1); 3: relative error per expert; 4a, 4b: the error of the horizon's mean load.")
    print(f"{PAPER}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dataset", action="append", default=None, help="ID or ID:TRAIN_ID (repeatable; default smartmoe-ae)"
    )
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--metric", default="error_rate", choices=["error_rate", "window_error", "mape"])
    ap.add_argument(
        "--readings",
        action="store_true",
        help="one table of every reading of the paper's error (error_rate, /E, mape, window_error, /E)",
    )
    ap.add_argument("--seeds", action="store_true", help="mean +- spread over the seeds of each configuration")
    ap.add_argument("--write", action="store_true", help="with --seeds: replace the table in docs/results.md")
    ap.add_argument("--no-track", action="store_true")
    args = ap.parse_args()
    specs, models = args.dataset or ["smartmoe-ae"], args.models.split(",")
    if args.seeds:
        text = seeds_table(specs, models, args.metric, not args.no_track)
        print(text, end="")
        if args.write:
            write_table(RESULTS, "seeds", text)
    elif args.readings:
        readings_table(specs, models, not args.no_track)
    else:
        metric_table(specs, models, args.metric, not args.no_track)


if __name__ == "__main__":
    main()
