"""Loading speed of the canonical on-disk form: a trace of about 100 MB of counts.

Measures save size and `datasets_registry.storage.load` (decompress, validate, fingerprint)
against a bare `np.load` of the same counts as an uncompressed .npy, measured in the same run.
The counts are SYNTHETIC multinomial samples, used only for their size.
Usage: python benchmarks/trace_load.py [--records 16000 --layers 12 --experts 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def best_of(n, fn):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=16000)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--experts", type=int, default=128)
    args = ap.parse_args()

    from datasets_registry import storage
    from datasets_registry.trace import Card, Trace

    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.ones(args.experts), size=args.layers)
    counts = np.stack([rng.multinomial(2 * 65536, q[l], size=args.records) for l in range(args.layers)], axis=1).astype(
        np.int32
    )
    trace = Trace.from_arrays(counts, np.arange(args.records) + 1, Card(id="synthetic-load", title="SYNTHETIC"))
    mb = counts.nbytes / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t_save, _ = best_of(1, lambda: storage.save(trace, tmp / "v1"))
        size = (tmp / "v1" / storage.TRACE_FILE).stat().st_size / 1e6
        np.save(tmp / "raw.npy", counts)
        t_raw, _ = best_of(3, lambda: np.load(tmp / "raw.npy", allow_pickle=False))
        t_load, back = best_of(3, lambda: storage.load(tmp / "v1"))
        assert back.fingerprint == trace.fingerprint
    print(
        f"trace {counts.shape}, {mb:.0f} MB of int32 counts; stored {size:.1f} MB compressed (saved in {t_save:.2f} s)"
    )
    print(f"storage.load (decompress + validate + fingerprint): {t_load:.2f} s")
    print(
        f"np.load of the uncompressed .npy (baseline):        {t_raw:.2f} s   load / baseline = {t_load / t_raw:.1f}x"
    )


if __name__ == "__main__":
    main()
