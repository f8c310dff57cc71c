"""The tables of docs/gps.md: accuracy and overhead of every strategy, and the recommendation map (MoE-GPS).

    python benchmarks/gps_map.py            # print both tables
    python benchmarks/gps_map.py --write    # replace them in docs/gps.md

Every inference trace of the registry with a token-level sample (the built-in serving traces) at pool 1, and
the two shift traces at pool 4 too (four sampled passes judged together as one batch), through bench/gps.py.
The tables sit between ``<!-- table: gps-accuracy -->`` / ``<!-- table: gps-map -->`` and ``<!-- /table -->``;
tests/bench/test_gps.py recomputes what does not depend on this machine's timings (errors, accuracy, the
overhead budget and the winners).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.doc_tables import table_cells, write_table  # noqa: E402

DOC = REPO / "docs" / "gps.md"
#: (dataset, pool) columns of the map, in order.
JUDGED = (("gpt3-125m-16e-serve-shift-b512", 1), ("gpt3-125m-16e-serve-shift-b512", 4),
          ("gpt3-125m-16e-serve-code-b512", 1), ("gpt3-125m-16e-serve-shift-b4096", 1),
          ("gpt3-125m-16e-serve-shift-b4096", 4))


def short(dataset: str) -> str:
    return dataset.removeprefix("gpt3-125m-16e-serve-")


def accuracy_table(judged: dict) -> str:
    from bench.gps import score

    lines = ["| trace (pool) | tokens/pass | strategy | kind | error_rate | F1 | exact set | element-wise | "
             "overhead per pass |", "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for (ds, pool), j in judged.items():
        if pool != 1:
            continue
        for r in score(j):
            acc = (f"{r['f1']:.1%} | {r['exact']:.1%} | {r['elementwise']:.1%}" if "f1" in r else "| |").strip()
            where = "" if r["critical_path"] else " (off the path)"
            lines.append(f"| {short(ds)} ({pool}) | {j.tokens.mean():.0f} | {r['strategy']} | {r['kind']} | "
                         f"{r['error_rate']:.1%} | {acc} | {r['overhead_ms']:.3f} ms{where} |")
    return "\n".join(lines) + "\n"


def map_table(judged: dict) -> str:
    from bench.gps import sweep

    columns = {key: sweep(j) for key, j in judged.items()}
    head = [f"{short(ds)} ({pool}, {judged[(ds, pool)].tokens.mean():.0f} tok)" for ds, pool in judged]
    lines = ["| GPUs | experts | interconnect | " + " | ".join(head) + " |",
             "|---:|---|---|" + "---|" * len(head)]
    for i, first in enumerate(next(iter(columns.values()))):
        cells = []
        for rows in columns.values():
            s = rows[i]
            letter = "D" if s["winner"] == "distribution-only" else "T"
            cells.append(f"{letter} +{s['margin']:.0%} ({s['token_budget_us']:.0f} us)")
        lines.append(f"| {first['gpus']} | {first['expert']} | {first['interconnect']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tables() -> dict[str, str]:
    from bench.gps import judge

    judged = {(ds, pool): judge(ds, pool) for ds, pool in JUDGED}
    return {"gps-accuracy": accuracy_table(judged), "gps-map": map_table(judged)}


def shown(name: str) -> list[list[str]]:
    """The rows of a table docs/gps.md shows, as cells."""
    return table_cells(DOC, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the tables in docs/gps.md")
    args = parser.parse_args(argv)
    made = tables()
    for text in made.values():
        print(text)
    if args.write:
        for name, text in made.items():
            write_table(DOC, name, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
