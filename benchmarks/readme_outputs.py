"""The command outputs the README shows, produced by running the commands: `--write` puts them in README.md.

    python benchmarks/readme_outputs.py            # print them
    python benchmarks/readme_outputs.py --write    # replace the blocks in README.md
    python benchmarks/readme_outputs.py --check    # exit 1 if README.md shows other numbers
    python benchmarks/readme_outputs.py --write --tables   # only the tables of the committed board

Each block in README.md follows a ``<!-- output: NAME -->`` marker. The commands run in a fresh data
home (no cached run); the last line of a run's output (seconds, run ids) differs from run to run
and is not compared by `--check`. The README's tables between ``<!-- table: NAME -->`` and
``<!-- /table -->`` are made from the committed result files the same way: the top of the
leaderboard (``leaderboard``) and, per dataset, the best zoo model against the best engine
estimator, in error (``engines``) and in placement terms (``engines-placement``, from the
scores ``benchmarks/engines_placement.py --write`` keeps in leaderboard/placement.json.gz).
tests/test_readme.py keeps the quick blocks and the tables in step.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: name -> (the command as the README shows it, the arguments run here, whether tests/test_readme.py runs it)
BLOCKS = {
    "lstm": ("python -m bench run --model lstm", ["run", "--model", "lstm"], False),
    "sw_avg": ("python -m bench run --model sw_avg --dataset smartmoe-ae --horizon 1000 --horizon 2000 "
               "--param window=100",
               ["run", "--model", "sw_avg", "--dataset", "smartmoe-ae", "--horizon", "1000", "--horizon", "2000",
                "--param", "window=100"], True),
}
MARKER = re.compile(r"<!-- output: (\w+) -->\n```\n(.*?)```\n", re.S)
#: Models of the committed board the README quotes.
TOP = 5


def committed_board() -> dict:
    """The committed leaderboard, built from its result files."""
    from leaderboard import build, placement, reference

    return build.from_submissions([reference.SUBMISSIONS], placement_scores=placement.committed())


def leaderboard_top(board: dict) -> str:
    """The first rows of the committed leaderboard's ranking, as Markdown."""
    from leaderboard import render

    head, rows = render.ranking_rows(board, runtime=True)
    keep = [head.index(h) for h in ("rank", "model", "headroom skill [95% CI]", "skill [95% CI]",
                                    "window skill [95% CI]", "win rate", "s/origin")]
    lines = render.markdown_table([head[i] for i in keep], [[row[i] for i in keep] for row in rows[:TOP]])
    return lines + f"\n\n({len(rows)} models in all; the whole board: [leaderboard/leaderboard.md]" \
                   "(leaderboard/leaderboard.md))\n"


def engines_versus_zoo(board: dict) -> str:
    """Per dataset and horizon of the committed board: does a zoo model beat the engines' own estimators?"""
    from leaderboard import render

    head, rows = render.engine_rows(board)
    verdicts = [row[head.index("verdict")] for row in rows]
    datasets = {row[0] for row in rows}
    beaten = sorted({row[0] for row in rows if row[head.index("verdict")] == "beats"})
    return (render.markdown_table(head, rows) + f"\n\nA zoo model beats the best engine estimator in "
            f"{verdicts.count('beats')} of {len(rows)} tables ({len(beaten)} of {len(datasets)} datasets at one "
            f"horizon or both), ties in {verdicts.count('ties')} and loses in {verdicts.count('loses')}.\n")


def engines_versus_zoo_in_placement(board: dict) -> str:
    """The same in placement terms: gap closed and modelled layer time (leaderboard/placement.py)."""
    from leaderboard import render

    head, rows = render.placement_engine_rows(board)
    verdicts = [row[head.index("verdict")] for row in rows]
    times = [row[head.index("step time")] for row in rows]

    def datasets(column: str, value: str) -> str:
        names = sorted({row[0] for row in rows if row[head.index(column)] == value})
        return f"{len(names)} of {len({row[0] for row in rows})} datasets" + (f": {', '.join(names)}" if names else "")

    return (render.markdown_table(head, rows) + "\n\nIn gap closed, a zoo model beats the best engine estimator in "
            f"{verdicts.count('beats')} of {len(rows)} tables ({datasets('verdict', 'beats')}), ties in "
            f"{verdicts.count('ties')} and loses in {verdicts.count('loses')}. In modelled layer time, its placement "
            f"is faster in {times.count('faster')} tables ({datasets('step time', 'faster')}), ties in "
            f"{times.count('ties')} and is slower in {times.count('slower')}.\n")


#: name -> the function of the committed board that makes the README table `<!-- table: NAME -->`.
TABLES = {"leaderboard": leaderboard_top, "engines": engines_versus_zoo,
          "engines-placement": engines_versus_zoo_in_placement}


def table_pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- table: {name} -->\n)(.*?)(<!-- /table -->)", re.S)


def shown_table(name: str) -> str:
    match = table_pattern(name).search(README.read_text())
    return match.group(2) if match else ""


def tables() -> dict[str, str]:
    """name -> the README table as the committed result files make it."""
    board = committed_board()
    return {name: make(board) for name, make in TABLES.items()}


def output(name: str) -> str:
    """The command's output, as a user with an 80-column terminal sees it."""
    _, args, _ = BLOCKS[name]
    with tempfile.TemporaryDirectory(prefix="moe-readme-") as home:
        env = {**os.environ, "MOE_LOAD_BENCH_HOME": home, "COLUMNS": "80", "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=1800)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return "".join(line.rstrip() + "\n" for line in done.stdout.splitlines())


def comparable(text: str) -> str:
    """The table without the run's last line (its seconds and ids change every time)."""
    return "\n".join(line for line in text.rstrip("\n").splitlines() if "MLflow run" not in line)


def shown() -> dict[str, str]:
    """name -> the block README.md shows after its marker."""
    return {m.group(1): m.group(2) for m in MARKER.finditer(README.read_text())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the blocks in README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md shows other numbers")
    parser.add_argument("--only", action="append", choices=sorted(BLOCKS), help="only these blocks")
    parser.add_argument("--tables", action="store_true", help="only the tables of the committed board (runs nothing)")
    args = parser.parse_args()
    names = [] if args.tables else args.only or list(BLOCKS)
    fresh = {name: output(name) for name in names}
    made = tables()
    if args.check:
        stale = [n for n in names if comparable(shown().get(n, "")) != comparable(fresh[n])]
        stale += [name for name, table in made.items() if shown_table(name) != table]
        for n in stale:
            print(f"README.md block {n!r} is stale; run `python benchmarks/readme_outputs.py --write`")
        return 1 if stale else 0
    if args.write:
        text = README.read_text()
        for name, table in made.items():
            text, n = table_pattern(name).subn(lambda m, table=table: m.group(1) + table + m.group(3), text)
            if n != 1:
                raise SystemExit(f"README.md has {n} tables marked {name!r}, expected 1")
        for name, out in fresh.items():
            text, n = re.subn(rf"<!-- output: {name} -->\n```\n.*?```\n",
                              lambda m, out=out: f"<!-- output: {name} -->\n```\n{out}```\n", text, flags=re.S)
            if n != 1:
                raise SystemExit(f"README.md has {n} blocks marked {name!r}, expected 1")
        README.write_text(text)
        print(f"wrote {', '.join([*fresh, *made])} into {README}")
        return 0
    for name, out in fresh.items():
        print(f"$ {BLOCKS[name][0]}\n{out}")
    for table in made.values():
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
