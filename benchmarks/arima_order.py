"""Which ARIMA order the seed paper's procedure picks on a trace (models.arima.select_order).

    python benchmarks/arima_order.py [DATASET ...] [--window 100] [--series 96]

Per dataset: the whole series, and trailing windows of `window` records ending at 25%, 50% and
the end of the trace (what the predictor fits). d by ADF + KPSS, (p, q) by AIC; the mode order.
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
    from models.arima import select_order

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="*", default=[DEFAULT_DATASET])
    ap.add_argument("--window", type=int, default=100, help="records per window (the predictor's default)")
    ap.add_argument("--series", type=int, default=96, help="series sampled per setting")
    args = ap.parse_args()
    for ds in args.datasets:
        tr = registry.load(ds)
        T, L, E = tr.shape
        rng = np.random.default_rng(0)
        pick = np.sort(rng.choice(L * E, size=min(L * E, args.series), replace=False))
        series = (tr.proportions * E).reshape(T, L * E).T[pick]
        pooled: Counter = Counter()
        for label, end in (("whole", None), ("window@25%", T // 4), ("window@50%", T // 2), ("window@end", T)):
            y = series if end is None else series[:, max(0, end - args.window):end]
            t0 = time.perf_counter()
            order, rep = select_order(y)
            rep["seconds"] = round(time.perf_counter() - t0, 1)
            top = dict(list(rep.get("orders", {}).items())[:4])
            if end is not None:
                pooled.update(rep.get("orders", {}))
            print(json.dumps({"dataset": ds, "setting": label, "records": y.shape[1], "order": ",".join(map(str, order)),
                              "d_counts": rep.get("d"), "top_orders": top, "series": rep["series"], "seconds": rep["seconds"]}))
        print(json.dumps({"dataset": ds, "setting": "windows pooled", "order": pooled.most_common(1)[0][0] if pooled else None,
                          "top_orders": dict(pooled.most_common(5))}))


if __name__ == "__main__":
    main()
