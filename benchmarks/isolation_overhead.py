"""Isolation overhead: a sw_avg clone run in-process and in a sandboxed worker (bench.isolation).

Both run the default task (horizons of 1,000 and 2,000 iterations, stride 100) through
bench.evaluate.evaluate on the built-in gpt3-350m-128e-top2-s1 trace (5,000 records x 12 MoE
layers x 128 experts), alternately in the same process; the script checks that they give the same
per-origin errors and prints the best wall time of each and their ratio. The isolated time
includes starting the worker and loading the predictor in it.

Usage: python benchmarks/isolation_overhead.py [--dataset gpt3-350m-128e-top2-s1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from pathlib import Path

CLONE = textwrap.dedent('''
    from models.baselines import SlidingWindowAverage


    class SwAvgClone(SlidingWindowAverage):
        """sw_avg itself, loaded from a file as a submission would be (and so run in the sandbox)."""

        name = "sw_avg_clone"
''')


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="gpt3-350m-128e-top2-s1")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each, interleaved; the best time counts")
    args = parser.parse_args()

    from bench.evaluate import evaluate
    from bench.isolation import IsolatedPredictor, isolation_level
    from bench.task import Task
    from datasets_registry import registry
    from models.registry import predictor_class

    trace = registry.load(args.dataset)
    task = Task(dataset=args.dataset)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clone.py"
        path.write_text(CLONE)
        spec = f"{path}:SwAvgClone"
        cls = predictor_class(spec)

        def in_process():
            return evaluate(trace, cls(), task)

        def isolated():
            with IsolatedPredictor(spec) as predictor:
                return evaluate(trace, predictor, task)

        inside, outside = [], []
        for _ in range(args.repeats):  # interleaved, so that both see the same load on the machine
            inside.append(timed(in_process))
            outside.append(timed(isolated))
    if inside[0][1].rows != outside[0][1].rows or outside[0][1].failures:
        raise SystemExit("the isolated run did not reproduce the in-process errors")
    t_in, t_out = min(t for t, _ in inside), min(t for t, _ in outside)
    origins = len({r["origin"] for r in inside[0][1].rows})
    print(f"{args.dataset} {trace.shape}, default task: {origins} origins, horizons {task.horizons}")
    print(f"in-process : {t_in:7.2f} s")
    print(f"isolated   : {t_out:7.2f} s   (isolation: {isolation_level()})")
    print(f"ratio      : {t_out / t_in:7.2f}x   ({(t_out - t_in) / origins * 1000:+.1f} ms per origin)")
    print("all runs   : in-process " + " ".join(f"{t:.2f}" for t, _ in inside)
          + " | isolated " + " ".join(f"{t:.2f}" for t, _ in outside))


if __name__ == "__main__":
    main()
