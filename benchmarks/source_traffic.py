"""Where smartmoe-ae's tokens come from: its 16 source ranks, and the per-source scores of the baselines.

    python benchmarks/source_traffic.py            # print the tables and what the split costs a load
    python benchmarks/source_traffic.py --write    # replace them in docs/formats.md and docs/protocol.md

Table ``smartmoe-sources`` (docs/formats.md): per source rank of smartmoe-ae, the share of all routed tokens it
sends, the share of its own tokens that go to experts hosted on other ranks under the contiguous 16-rank layout
(expert e on rank floor(e * 16 / 32), docs/protocol.md "Per-source loads"), and the share of all tokens its two
experts receive. Table ``per-source-scores`` (docs/protocol.md): sw_avg, ema and last with ``--per-source`` on
smartmoe-ae at the 1,000-iteration horizon (default task, all origins): error_rate beside traffic_error,
source_error and remote_share. tests/test_source_traffic.py recomputes the first table and one row of the second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.doc_tables import table_cells, write_table  # noqa: E402

DATASET = "smartmoe-ae"
FORMATS_DOC = REPO / "docs" / "formats.md"
PROTOCOL_DOC = REPO / "docs" / "protocol.md"
HORIZON = 1000  # iterations
MODELS = ("sw_avg", "ema", "last")
SOURCES_HEAD = ["rank", "hosts experts", "share of the tokens it sends", "of them to other ranks' experts",
                "share of the tokens its experts receive"]
SCORES_HEAD = ["model", "error_rate", "traffic_error", "source_error", "remote_share"]


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def source_rows() -> list[list[str]]:
    """One row per source rank of :data:`DATASET` (sums over all records and layers)."""
    import numpy as np

    from bench.metrics import crossing, expert_hosts
    from datasets_registry import registry

    trace = registry.load(DATASET)
    sc = trace.source_counts.sum(axis=(0, 1))  # [S, E] tokens over the whole trace
    S, E = sc.shape
    hosts, cross = expert_hosts(S, E), crossing(S, E)
    total = sc.sum()
    rows = []
    for s in range(S):
        mine = np.flatnonzero(hosts == s)
        rows.append([str(s), ", ".join(str(e) for e in mine), pct(sc[s].sum() / total),
                     pct(sc[s, cross[s]].sum() / sc[s].sum()), pct(sc[:, mine].sum() / total)])
    return rows


def score_row(model: str) -> list[str]:
    """`model` with --per-source on :data:`DATASET` at :data:`HORIZON`: its point and per-source errors."""
    from bench.api import run

    h = run(model, DATASET, horizons=[HORIZON], track=False, per_source=True).horizons[HORIZON]
    return [model] + [pct(h.value(m)) for m in SCORES_HEAD[1:]]


def load_seconds() -> tuple[float, float]:
    """Best of 5 `storage.load` of :data:`DATASET` as stored (with its split), and of a copy without the split, saved
    in a temporary folder in the same run: what keeping the split costs every load."""
    import dataclasses
    import tempfile
    import time

    from datasets_registry import registry, storage
    from datasets_registry.trace import Trace

    folder = registry.resolve(DATASET).folder
    trace = storage.load(folder)
    extra = {k: v for k, v in trace.card.extra.items() if k != "sources"}
    plain = Trace(trace.counts, trace.steps, dataclasses.replace(trace.card, extra=extra))

    def best(path: Path) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            storage.load(path)
            times.append(time.perf_counter() - t0)
        return min(times)

    with tempfile.TemporaryDirectory() as tmp:
        return best(folder), best(storage.save(plain, Path(tmp) / "v1"))


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def shown(doc: Path, name: str) -> list[list[str]]:
    """The rows of table `name` that `doc` shows."""
    return table_cells(doc, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the tables in docs/formats.md and "
                                                             "docs/protocol.md")
    args = parser.parse_args(argv)
    sources = table(SOURCES_HEAD, source_rows())
    scores = table(SCORES_HEAD, [score_row(m) for m in MODELS])
    print(sources, scores, sep="\n", end="")
    with_split, without = load_seconds()
    print(f"\nstorage.load of {DATASET}: {with_split:.3f} s with its per-source split, {without:.3f} s without "
          f"({with_split / without:.1f}x; best of 5, same run)")
    if args.write:
        write_table(FORMATS_DOC, "smartmoe-sources", sources)
        write_table(PROTOCOL_DOC, "per-source-scores", scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
