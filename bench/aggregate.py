"""From per-origin, per-layer rows to the numbers people compare.

Aggregation follows the protocol: mean over origins, then over layers, per horizon, three ways
(all, transient, stable); an origin belongs to the state of its layer at the origin. A layer
with no origin in a state does not count towards that state's mean.
"""

from __future__ import annotations

import math

import numpy as np

from .placement import derive

STATES = ("all", "transient", "stable")


def _mean_over_origins_then_layers(df, metric: str) -> float:
    if df.empty:
        return math.nan
    per_layer = df.groupby("layer")[metric].mean()
    return float(per_layer.mean())


def summarize(frame, failures: list[dict], horizons, metrics: list[str]) -> dict:
    """{"1000": {metric: {all, transient, stable}, n_origins, failures}, ...}."""
    out = {}
    for H in horizons:
        df = frame[frame["horizon"] == H] if not frame.empty else frame
        n_failed = sum(1 for f in failures if f["horizon"] == H)
        n_ok = int(df["origin"].nunique()) if not df.empty else 0
        entry = {}
        for m in metrics:
            entry[m] = {
                "all": _mean_over_origins_then_layers(df, m),
                "transient": _mean_over_origins_then_layers(df[df["state"] == "transient"] if not df.empty else df, m),
                "stable": _mean_over_origins_then_layers(df[df["state"] == "stable"] if not df.empty else df, m),
            }
        derive(entry)  # ratio metrics (gap closed, speed-ups) from the aggregated means of their parts
        entry["n_origins"] = n_ok + n_failed
        entry["failures"] = n_failed
        if not df.empty:
            first = df.drop_duplicates("origin")
            entry["origin_layers_by_state"] = {s: int((df["state"] == s).sum()) for s in ("transient", "stable")}
            entry["records_per_origin"] = int(first["records"].iloc[0])
        out[str(H)] = entry
    return out


def per_layer(frame, metric: str):
    """Table [layer x (horizon, state)] of the mean over origins."""
    import pandas as pd

    if frame.empty:
        return pd.DataFrame()
    allstate = frame.groupby(["layer_name", "horizon"])[metric].mean().unstack("horizon")
    allstate.columns = [f"h{c}/all" for c in allstate.columns]
    by_state = frame.groupby(["layer_name", "horizon", "state"])[metric].mean().unstack(["horizon", "state"])
    by_state.columns = [f"h{h}/{s}" for h, s in by_state.columns]
    table = allstate.join(by_state)
    order = list(dict.fromkeys(frame["layer_name"]))
    return table.reindex(order)[sorted(table.columns, key=lambda c: (int(c.split("/")[0][1:]), STATES.index(c.split("/")[1])))]


def finite_or_none(x):
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
