"""Which ARIMA order the seed paper's procedure picks on a trace (models.arima.select_order).

    python benchmarks/arima_order.py [DATASET ...] [--window 1000] [--bin 10] [--series 96]

Per dataset, on the series the predictor fits (E * p averaged into points of `bin` iterations):
the whole trace, and trailing windows of `window` iterations ending at 25%, 50% and the end of
the trace. d by ADF + KPSS, (p, q) by AIC; the mode order of each setting and of the three
windows pooled.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np


def main() -> None:
    from datasets_registry import registry
    from datasets_registry.registry import DEFAULT_DATASET
    from models.arima import fitted_series, select_order

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=[DEFAULT_DATASET])
    ap.add_argument("--window", type=int, default=1000, help="iterations per window (the predictor's default)")
    ap.add_argument("--bin", type=int, default=10, help="iterations per point (the predictor's default)")
    ap.add_argument("--series", type=int, default=96, help="series sampled per setting")
    args = ap.parse_args()
    for ds in args.datasets:
        tr = registry.load(ds)
        T, L, E = tr.shape
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(L * E, size=min(L * E, args.series), replace=False))
        pooled: Counter = Counter()
        for label, end in (("whole", T), ("window@25%", T // 4), ("window@50%", T // 2), ("window@end", T)):
            window = int(tr.steps[-1] - tr.steps[0] + 1) if label == "whole" else args.window
            y = fitted_series(tr.proportions[:end], tr.steps[:end], window, args.bin)[pick]
            t0 = time.perf_counter()
            order, rep = select_order(y)
            rep["seconds"] = round(time.perf_counter() - t0, 1)
            top = dict(list(rep.get("orders", {}).items())[:4])
            if label != "whole":
                pooled.update(rep.get("orders", {}))
            print(
                json.dumps(
                    {
                        "dataset": ds,
                        "setting": label,
                        "points": y.shape[1],
                        "order": ",".join(map(str, order)),
                        "d_counts": rep.get("d"),
                        "top_orders": top,
                        "series": rep["series"],
                        "seconds": rep["seconds"],
                    }
                ),
                flush=True,
            )
        print(
            json.dumps(
                {
                    "dataset": ds,
                    "setting": "windows pooled",
                    "order": pooled.most_common(1)[0][0] if pooled else None,
                    "of": sum(pooled.values()),
                    "top_orders": dict(pooled.most_common(5)),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
