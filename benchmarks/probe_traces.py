"""Probe traces against their training-batch traces: noise floor and the share of sw_avg's error a forecast can close.

    python benchmarks/probe_traces.py            # print the table
    python benchmarks/probe_traces.py --write    # replace the table in docs/tracer.md

For every built-in probe trace (a card with ``extra.probe_of``) and the training-batch trace of the
same run, at the 1,000-iteration horizon and over all origins: the noise floor (docs/protocol.md),
sw_avg's `error_rate`, the hindsight floor (the best constant forecast of each origin's window, chosen
knowing it) and the *closable share* ``1 - hindsight floor / sw_avg``, the part of sw_avg's error that
any forecast could remove at all. The table in docs/tracer.md sits between ``<!-- table: probes -->``
and ``<!-- /table -->``; tests/datasets_registry/tracer/test_probe_traces.py recomputes one row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.doc_tables import table_cells, write_table  # noqa: E402

DOC = REPO / "docs" / "tracer.md"
HORIZON = 1000  # iterations
HEAD = ["training trace", "tokens/record", "noise floor", "sw_avg", "hindsight floor", "closable",
        "probe: tokens/record", "noise floor", "sw_avg", "hindsight floor", "closable",
        "noise floor ratio", "closable ratio"]


def pairs() -> list[tuple[str, str]]:
    """(training trace, probe trace) of every built-in probe trace, in id order."""
    from datasets_registry import registry, storage

    out = []
    for entry in registry.entries():
        if entry.kind != "builtin":
            continue
        probe_of = storage.read_card(entry.folder).extra.get("probe_of")
        if probe_of:
            out.append((probe_of["id"], entry.id))
    return sorted(out)


def floors(dataset: str) -> dict[str, float]:
    """sw_avg's error rate, the noise floor and the hindsight floor at :data:`HORIZON` (fractions); tokens a record."""
    from bench.api import run
    from datasets_registry import registry, storage

    h = run("sw_avg", dataset, horizons=[HORIZON], track=False).horizons[HORIZON]
    card = storage.read_card(registry.resolve(dataset).folder)
    values = {m: h.value(m) for m in ("error_rate", "noise_floor", "hindsight_floor")}
    return {**values, "closable": 1 - values["hindsight_floor"] / values["error_rate"],
            "tokens": card.model.tokens_per_step}


def row(training: str, probe: str) -> list[str]:
    t, p = floors(training), floors(probe)

    def pct(x: float) -> str:
        return f"{100 * x:.3f}%"

    def side(f: dict) -> list[str]:
        return [f"{f['tokens']:,}", pct(f["noise_floor"]), pct(f["error_rate"]), pct(f["hindsight_floor"]),
                f"{100 * f['closable']:.1f}%"]

    return ([f"`{training}`"] + side(t) + side(p)
            + [f"1/{t['noise_floor'] / p['noise_floor']:.1f}", f"{p['closable'] / t['closable']:.1f}x"])


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|---|" + "---:|" * (len(HEAD) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def shown_rows() -> dict[str, list[str]]:
    """The table docs/tracer.md shows, by training trace."""
    return {r[0].strip("`"): r for r in table_cells(DOC, "probes")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in docs/tracer.md")
    args = parser.parse_args(argv)
    text = table([row(t, p) for t, p in pairs()])
    print(text, end="")
    if args.write:
        write_table(DOC, "probes", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
