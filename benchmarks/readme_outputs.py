"""The command outputs the README shows, produced by running the commands: `--write` puts them in README.md.

    python benchmarks/readme_outputs.py            # print them
    python benchmarks/readme_outputs.py --write    # replace the blocks in README.md
    python benchmarks/readme_outputs.py --check    # exit 1 if README.md shows other numbers

Each block in README.md follows a ``<!-- output: NAME -->`` marker. The commands run in a fresh data
home (no cached run); the last line of a run's output (seconds, run ids) differs from run to run
and is not compared by `--check`. The README's top of the leaderboard (between ``<!-- table:
leaderboard -->`` and ``<!-- /table -->``) is made from the committed result files the same way.
tests/test_readme.py keeps the quick blocks and the table in step.
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
TABLE = re.compile(r"(<!-- table: leaderboard -->\n)(.*?)(<!-- /table -->)", re.S)
#: Models of the committed board the README quotes.
TOP = 5


def leaderboard_top() -> str:
    """The first rows of the committed leaderboard's ranking, as Markdown."""
    from leaderboard import build, reference, render

    board = build.from_submissions([reference.SUBMISSIONS])
    head, rows = render.ranking_rows(board, runtime=True)
    keep = [head.index(h) for h in ("rank", "model", "headroom skill [95% CI]", "skill [95% CI]",
                                    "window skill [95% CI]", "win rate", "s/origin")]
    lines = render.markdown_table([head[i] for i in keep], [[row[i] for i in keep] for row in rows[:TOP]])
    return lines + f"\n\n({len(rows)} models in all; the whole board: [leaderboard/leaderboard.md]" \
                   "(leaderboard/leaderboard.md))\n"


def shown_table() -> str:
    match = TABLE.search(README.read_text())
    return match.group(2) if match else ""


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
    args = parser.parse_args()
    names = args.only or list(BLOCKS)
    fresh = {name: output(name) for name in names}
    table = leaderboard_top()
    if args.check:
        stale = [n for n in names if comparable(shown().get(n, "")) != comparable(fresh[n])]
        stale += ["leaderboard"] if shown_table() != table else []
        for n in stale:
            print(f"README.md block {n!r} is stale; run `python benchmarks/readme_outputs.py --write`")
        return 1 if stale else 0
    if args.write:
        text = TABLE.sub(lambda m: m.group(1) + table + m.group(3), README.read_text())
        for name, out in fresh.items():
            text, n = re.subn(rf"<!-- output: {name} -->\n```\n.*?```\n",
                              lambda m, out=out: f"<!-- output: {name} -->\n```\n{out}```\n", text, flags=re.S)
            if n != 1:
                raise SystemExit(f"README.md has {n} blocks marked {name!r}, expected 1")
        README.write_text(text)
        print(f"wrote {', '.join(fresh)} into {README}")
        return 0
    for name, out in fresh.items():
        print(f"$ {BLOCKS[name][0]}\n{out}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
