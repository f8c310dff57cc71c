"""The committed board's runs scored as expert placements: the engines against the zoo in gap closed and step time.

    python benchmarks/engines_placement.py            # print the comparison from leaderboard/placement.json.gz
    python benchmarks/engines_placement.py --write    # score the committed runs the file lacks, write the file
    python benchmarks/engines_placement.py --write --rescore  # score every committed run again

`--write` keeps the scores leaderboard/placement.json.gz holds for committed runs (same run key, same origins) and
scores the others, whose forecasts it needs in the data home ($MOE_LOAD_BENCH_HOME/runs/<run key>/
window_forecasts_h*.npz, left there by `make zoo`, or copied from a data home that ran it): it places each
forecast with `leaderboard.placement.SPEC` and scores it on the trace (minutes of CPU: no model is run). Then
`python -m bench leaderboard --write` and `python benchmarks/readme_outputs.py --write --tables` put the
comparison on the board and in the README (table `engines-placement`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help="score the committed runs' forecasts in the data home and write "
                             "leaderboard/placement.json.gz")
    parser.add_argument("--rescore", action="store_true",
                        help="with --write: score every committed run again, not only those the file lacks")
    args = parser.parse_args()
    from bench import submission
    from leaderboard import build, placement, reference, render

    if args.write:
        runs = [run.result for path in submission.submission_files([reference.SUBMISSIONS])
                for run in submission.load(path).runs]
        started = time.perf_counter()
        try:
            previous = None if args.rescore or not placement.PATH.exists() else placement.load()
            doc = placement.score(runs, say=lambda s: print(s, file=sys.stderr), previous=previous)
        except (FileNotFoundError, ValueError) as exc:  # PlacementScoresError is a ValueError
            raise SystemExit(str(exc)) from None
        print(f"wrote {placement.save(doc)} ({len(runs)} runs, {time.perf_counter() - started:.0f} s)", file=sys.stderr)
    board = build.from_submissions([reference.SUBMISSIONS], placement_scores=placement.load())
    print(render.markdown_table(*render.placement_engine_rows(board)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
