"""From per-origin, per-layer rows to the numbers people compare.

Aggregation follows the protocol: mean over origins, then over layers, per horizon, three ways
(all, transient, stable); an origin belongs to the state of its layer at the origin. A layer
with no origin in a state does not count towards that state's mean.
"""

from __future__ import annotations

import math

from .placement import derive
from .probabilistic import DERIVED as PROBABILISTIC_DERIVED
from .results import ByState, HorizonResult
from .states import STATES

#: Metrics whose per-layer means a result keeps (the leaderboard's skill is a geometric mean over layers).
PER_LAYER_METRICS = ("error_rate", "window_error")


def _in_state(df, state: str):
    return df if state == "all" or df.empty else df[df["state"] == state]


def _layer_means(df, metric: str, layers: int) -> tuple[float | None, ...]:
    means = df.groupby("layer")[metric].mean() if not df.empty else {}
    return tuple(float(means[l]) if l in means and means[l] == means[l] else None for l in range(layers))


def _mean_of(values: tuple[float | None, ...]) -> float:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else math.nan


def summarize(frame, failures: list[dict], horizons, metrics: list[str], layers: int) -> dict[int, HorizonResult]:
    """One :class:`HorizonResult` per horizon from the rows of :meth:`bench.evaluate.Evaluation.frame`."""
    out = {}
    for H in horizons:
        df = frame[frame["horizon"] == H] if not frame.empty else frame
        entry: dict[str, dict[str, float]] = {}
        per_layer = {}
        for m in metrics:
            by_layer = {s: _layer_means(_in_state(df, s), m, layers) for s in STATES}
            entry[m] = {s: _mean_of(v) for s, v in by_layer.items()}
            if m in PER_LAYER_METRICS:
                per_layer[m] = by_layer
        derive(entry)  # ratio metrics (gap closed, speed-ups) from the aggregated means of their parts
        derive(entry, derived=PROBABILISTIC_DERIVED)  # the quantile loss scaled by the reference's
        n_failed = sum(1 for f in failures if f["horizon"] == H)
        out[int(H)] = HorizonResult(  # failed origins have rows too: their charged metrics
            horizon=int(H), metrics={m: ByState.of(v) for m, v in entry.items()},
            origins=int(df["origin"].nunique()) if not df.empty else n_failed, failures=n_failed,
            records_per_origin=int(df["records"].iloc[0]) if not df.empty else None,
            origin_layers={s: int((df["state"] == s).sum()) for s in STATES[1:]} if not df.empty else {},
            per_layer=per_layer)
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
    columns = sorted(table.columns, key=lambda c: (int(c.split("/")[0][1:]), STATES.index(c.split("/")[1])))
    return table.reindex(order)[columns]
