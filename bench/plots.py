"""The plots every run saves: error over training with states shaded, predicted vs actual load
of the hottest experts, and per-layer errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _shade_transient(ax, frame) -> None:
    """Shade the origins where most layers are in the transient state."""
    share = frame.groupby("origin_step")["state"].apply(lambda s: (s == "transient").mean())
    steps = share.index.to_numpy()
    if len(steps) == 0:
        return
    edges = np.r_[steps, steps[-1] + (steps[-1] - steps[-2] if len(steps) > 1 else 1)]
    for a, b, s in zip(edges[:-1], edges[1:], share.to_numpy()):
        if s > 0.5:
            ax.axvspan(a, b, color="tab:orange", alpha=0.15, lw=0)


def error_over_steps(frame, title: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for H, df in frame.groupby("horizon"):
        curve = df.groupby("origin_step")[["error_rate", "noise_floor"]].mean()
        ax.plot(curve.index, 100 * curve["error_rate"], label=f"error_rate, H={H}")
        ax.plot(curve.index, 100 * curve["noise_floor"], ls=":", label=f"noise floor, H={H}")
    _shade_transient(ax, frame[frame["horizon"] == frame["horizon"].min()])
    ax.set_xlabel("training step of the origin")
    ax.set_ylabel("error (%), mean over layers")
    ax.set_title(f"{title}  (shaded: transient)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def hottest_experts(
    origin_steps, predicted, actual, layer_name: str, experts: list[int], horizon: int, title: str, path: Path
) -> Path:
    """Horizon-mean load share of the hottest experts of one layer: forecast vs what happened."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for j, e in enumerate(experts):
        color = f"C{j}"
        ax.plot(origin_steps, 100 * actual[:, e], color=color, label=f"expert {e} actual")
        ax.plot(origin_steps, 100 * predicted[:, e], color=color, ls="--", label=f"expert {e} forecast")
    ax.set_xlabel("training step of the origin")
    ax.set_ylabel(f"mean share over next {horizon} it. (%)")
    ax.set_title(f"{title}: {layer_name}, hottest experts")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def per_layer_errors(frame, title: str, path: Path) -> Path:
    plt = _plt()
    horizons = sorted(frame["horizon"].unique())
    fig, axes = plt.subplots(1, len(horizons), figsize=(5 * len(horizons), 3.6), squeeze=False)
    names = list(dict.fromkeys(frame["layer_name"]))
    x = np.arange(len(names))
    for ax, H in zip(axes[0], horizons):
        df = frame[frame["horizon"] == H]
        for k, state in enumerate(("transient", "stable")):
            m = df[df["state"] == state].groupby("layer_name")["error_rate"].mean().reindex(names)
            ax.bar(x + (k - 0.5) * 0.4, 100 * m.to_numpy(), width=0.4, label=state)
        ax.set_xticks(x, names, rotation=90, fontsize=6)
        ax.set_title(f"H={H}")
        ax.set_ylabel("error_rate (%)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{title}: per-layer error")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
