"""The look-ahead test's false alarms and detections: honest models and synthetic cheats on real traces.

    python benchmarks/fairplay_calibration.py [--models sw_avg,last,...|all] [--dataset ID ...]
                                              [--scores DIR] [--output FILE]

For every dataset (default: the built-in traces and smartmoe-ae) and model (default: the cheap
honest ones; ``all`` adds arima and lstm, minutes each on 2 cores), evaluates the model with
:func:`bench.evaluate.evaluate` and the default task (horizons 1,000 and 2,000, lstm training on
the history before each origin), computes the per-origin hindsight floors
(:func:`bench.hindsight.floors_at_origins`) and prints, per (model, dataset, horizon), the ratios
of the look-ahead test, their bounds and the verdict (:func:`bench.fairplay.verdict`). Then the
same for synthetic cheats scored from the truth directly (no predictor can reach it through the
harness): the truth itself; the truth mixed 50/50 with sw_avg's forecast; the truth resampled
with each step's routed slots (an error at the noise floor); the truth, and the 50/50 mix, at a
seeded 30% of the origins with sw_avg's forecast elsewhere. Last, the smallest honest ratios, the
largest honest share, how many honest runs were flagged (must be none) and how many cheats were.

Per dataset it also times the floors against sw_avg's whole evaluation, in the same process.

``--scores DIR`` keeps each run's per-origin scores there (``.npz``, keyed by the model, its
parameters, the data and the task) and reuses them on the next call, so the verdicts can be
recomputed without re-running arima and lstm (sw_avg, the cost yardstick, always runs). Public
datasets are built into a temporary data home unless ``MOE_LOAD_BENCH_HOME`` is set.
``--output`` also writes the report to FILE, whole or not at all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHEAP = "sw_avg,last,ema,static,sw_sum,damped_trend"
ALL = CHEAP + ",arima,lstm"
CHEATS = ("truth", "truth 50/50 sw_avg", "truth resampled", "truth at 30% of origins", "50/50 at 30% of origins")
CHEAT_SEED = 7
FIELDS = ("steps", "err", "noise", "window")


def predictor(spec: str):
    """A predictor with default parameters; ``damped_trend`` is the template's DampedTrend."""
    if spec == "damped_trend":
        from models.template import DampedTrend

        return DampedTrend()
    from models.registry import predictor_class

    return predictor_class(spec)()


def scores(spec: str, trace, task, store: Path | None) -> tuple[dict, float, bool]:
    """{horizon: (origin steps, errors, noise floor, window forecasts)} of one model on one trace,
    the seconds its evaluation took (wall clock, measured when it ran) and whether it was stored."""
    from bench.evaluate import evaluate
    from bench.fairplay import run_scores

    pred = predictor(spec)
    blob = json.dumps({"model": spec, "class": type(pred).__qualname__, "params": pred.params, "version": pred.version,
                       "task": task.fingerprint(trace.fingerprint)}, sort_keys=True, default=str)
    # sw_avg is always evaluated afresh: its time is the yardstick of the floors' cost
    keep = store is not None and spec != "sw_avg"
    path = store / f"{spec}-{trace.id}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.npz" if keep else None
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as z:
            out = {H: tuple(z[f"{k}{H}"] for k in FIELDS) for H in task.horizons}
            return out, float(z["seconds"]), True
    t0 = time.perf_counter()
    ev = evaluate(trace, pred, task)
    seconds = time.perf_counter() - t0
    out = {}
    for H in task.horizons:
        steps, err, noise = run_scores(ev, H)
        window = np.array([ev.window_forecasts[H][int(s)] for s in steps]).reshape(len(steps), *trace.shape[1:])
        out[H] = (steps, err, noise, window)
    if path is not None:
        store.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, seconds=seconds, **{f"{k}{H}": v for H, vals in out.items() for k, v in zip(FIELDS, vals)})
        os.replace(tmp, path)
    return out, seconds, False


def cheat_errors(trace, task, base: dict) -> dict[str, dict[int, np.ndarray]]:
    """error_rate [O, L] of each synthetic cheat at the origins of sw_avg's run `base`."""
    from bench.metrics import forecast_errors
    from bench.task import rolling_origins

    rng = np.random.default_rng(CHEAT_SEED)
    p, totals = trace.proportions, trace.totals
    out: dict[str, dict[int, np.ndarray]] = {name: {} for name in CHEATS}
    for H, o in rolling_origins(trace.steps, task).items():
        steps, _, _, window = base[H]
        length = dict(zip(o.records.tolist(), o.lengths.tolist()))
        peek = np.zeros(len(steps), bool)
        peek[rng.choice(len(steps), round(0.3 * len(steps)), replace=False)] = True
        rows: dict[str, list] = {name: [] for name in CHEATS}
        for i, rec in enumerate(np.searchsorted(trace.steps, steps).tolist()):
            truth = p[rec : rec + length[rec]]
            sw_avg = np.broadcast_to(window[i], truth.shape)
            slots = totals[rec : rec + length[rec]].astype(np.int64)
            mixed = 0.5 * truth + 0.5 * sw_avg
            forecasts = (truth, mixed, rng.multinomial(slots, truth) / slots[..., None],
                         truth if peek[i] else sw_avg, mixed if peek[i] else sw_avg)
            for name, phat in zip(CHEATS, forecasts):
                rows[name].append(forecast_errors(phat, truth)["error_rate"])
        for name in CHEATS:
            out[name][H] = np.array(rows[name])
    return out


def table_row(model: str, dataset: str, H: int, v) -> str:
    return (f"| {model} | {dataset} | {H} | {v.origins} | {v.block_origins} | {v.noise_ratio:.3f} | "
            f"{v.noise_ratio_upper:.3f} | {v.origins_below_noise} | {v.hindsight_ratio:.3f} | "
            f"{v.hindsight_ratio_upper:.3f} | {100 * v.beaten_share:.1f} | {100 * v.beaten_share_lower:.1f} | "
            f"{'DISQUALIFIED' if v.disqualified else 'ok'} |")


HEADER = ("| model | dataset | H | origins | block | err/noise | upper | origins < noise/2 | err/hindsight | upper "
          "| beaten % | lower % | verdict |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=CHEAP, help=f"comma-separated, or 'all' ({ALL}); default {CHEAP}")
    ap.add_argument("--dataset", action="append", default=None,
                    help="dataset id (repeatable); default every built-in one and smartmoe-ae")
    ap.add_argument("--scores", type=Path, default=None, help="keep and reuse per-origin scores in this folder")
    ap.add_argument("--output", type=Path, default=None, help="also write the report to this file")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="moe-load-bench-home-") as home:
        os.environ.setdefault("MOE_LOAD_BENCH_HOME", home)
        report = run(args)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_name(args.output.name + ".tmp")
        tmp.write_text(report)
        os.replace(tmp, args.output)
    return 0


def run(args) -> str:
    import scipy.stats  # noqa: F401  (imported before any timing: the first evaluation would pay for it)

    from bench import fairplay
    from bench.hindsight import floors_at_origins
    from bench.task import Task
    from datasets_registry import registry

    models = (ALL if args.models == "all" else args.models).split(",")
    datasets = args.dataset or [e.id for e in registry.entries() if e.kind == "builtin"] + ["smartmoe-ae"]
    out: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        out.append(text)

    say(f"look-ahead test: noise margin {fairplay.NOISE_MARGIN}, origin noise fraction "
        f"{fairplay.ORIGIN_NOISE_FRACTION}, hindsight margin {fairplay.HINDSIGHT_MARGIN}, share limit "
        f"{fairplay.SHARE_LIMIT}, one-sided level {fairplay.LEVEL}, {fairplay.RESAMPLES} block resamples "
        f"(seed {fairplay.SEED})")
    say(f"models {','.join(models)}; datasets {','.join(datasets)}; default task (horizons 1000, 2000, stride 100)")
    say()
    say(HEADER)
    honest, cheats, timing, reused = [], [], [], []
    sw_avg_error: dict[tuple[str, int], float] = {}
    for ds in datasets:
        trace = registry.load(ds)
        task = Task(dataset=ds)
        t0 = time.perf_counter()
        floors = floors_at_origins(trace.proportions, trace.steps, task)
        floor_seconds = time.perf_counter() - t0

        def judged(errors, steps, noise, H):
            hindsight = floors[H].hindsight[floors[H].rows_for(steps)]
            return fairplay.verdict(errors, noise, hindsight, steps, H, task.stride)

        base = None
        for spec in ["sw_avg"] + [m for m in models if m != "sw_avg"]:
            result, seconds, stored = scores(spec, trace, task, args.scores)
            reused += [f"{spec} on {ds}"] if stored else []
            if spec == "sw_avg":
                base = result
                sw_avg_error.update({(ds, H): float(r[1].mean()) for H, r in result.items()})
                timing.append((ds, floor_seconds, seconds))
            if spec in models:
                for H, (steps, err, noise, _) in result.items():
                    honest.append((spec, ds, H, judged(err, steps, noise, H)))
                    say(table_row(spec, ds, H, honest[-1][3]))
        for name, by_h in cheat_errors(trace, task, base).items():
            for H, err in by_h.items():
                steps, _, noise, _ = base[H]
                cheats.append((name, ds, H, judged(err, steps, noise, H), float(err.mean())))
                say(table_row(f"*{name}*", ds, H, cheats[-1][3]))
    say()
    say("Cost of the hindsight floors (every origin, both horizons) against sw_avg's whole evaluation, same process:")
    for ds, floor_s, sw_s in timing:
        say(f"  {ds}: floors {floor_s:.2f} s, sw_avg evaluation {sw_s:.2f} s, ratio {floor_s / sw_s:.1f}")
    say()
    summarise(say, honest, cheats, sw_avg_error)
    if reused:
        say(f"\n{len(reused)} of {len(honest) // 2} honest runs' per-origin scores were read from --scores, as an "
            f"earlier call evaluated them; floors, sw_avg's run, cheats and verdicts were computed by this call")
    return "\n".join(out) + "\n"


def summarise(say, honest: list, cheats: list, sw_avg_error: dict[tuple[str, int], float]) -> None:
    """The extremes over honest runs, and how many honest and cheating verdicts were flagged."""
    def extreme(key: str, pick) -> str:
        spec, ds, H, v = pick(honest, key=lambda t: getattr(t[3], key))
        value = getattr(v, key)
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        return f"{shown} ({spec} on {ds} at {H})"

    if honest:
        for key, pick in (("noise_ratio", min), ("noise_ratio_upper", min), ("origin_noise_ratio_min", min),
                          ("origins_below_noise", max), ("hindsight_ratio", min), ("hindsight_ratio_upper", min),
                          ("beaten_share", max), ("beaten_share_lower", max)):
            say(f"honest {'smallest' if pick is min else 'largest'} {key}: {extreme(key, pick)}")
        runs = {(m, d) for m, d, _, _ in honest}
        flagged_runs = {(m, d) for m, d, _, v in honest if v.disqualified}
        say(f"honest verdicts flagged: {sum(v.disqualified for *_, v in honest)} of {len(honest)} "
            f"(runs flagged at any horizon: {len(flagged_runs)} of {len(runs)})")
    for name in CHEATS:
        mine = [(d, H, v) for n, d, H, v, _ in cheats if n == name]
        if not mine:
            continue
        runs = {d for d, _, _ in mine}
        flagged_runs = {d for d, _, v in mine if v.disqualified}
        missed = [f"{d} at {H}" for d, H, v in mine if not v.disqualified]
        say(f"cheat '{name}': flagged {sum(v.disqualified for *_, v in mine)} of {len(mine)} verdicts, "
            f"{len(flagged_runs)} of {len(runs)} runs at some horizon"
            + (f"; not flagged: {', '.join(missed)}" if missed else ""))
        if missed:
            d, H, v, error = min(((d, H, v, e) for n, d, H, v, e in cheats if n == name and not v.disqualified),
                                 key=lambda t: t[3] / sw_avg_error[t[0], t[1]])
            say(f"  its largest unflagged gain ({d} at {H}): mean error {100 * (1 - error / sw_avg_error[d, H]):.1f}% "
                f"below sw_avg's, {v.hindsight_ratio:.3f}x the hindsight floor, {100 * v.beaten_share:.1f}% of cells "
                f"below {v.settings['hindsight_margin']}x it")


if __name__ == "__main__":
    sys.exit(main())
