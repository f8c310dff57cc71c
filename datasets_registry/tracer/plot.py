"""Plot a trace's load proportions over steps, one panel per MoE layer (matplotlib, Agg)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..trace import Trace


def binned(trace: Trace, max_points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Proportions averaged over bins of consecutive records: (steps[B], p[B, L, E])."""
    T = trace.records
    width = max(1, math.ceil(T / max_points))
    nb = T // width or 1
    cut = min(T, nb * width)
    p = trace.proportions[:cut].reshape(nb, cut // nb, trace.layers, trace.experts).mean(axis=1)
    steps = trace.steps[:cut].reshape(nb, cut // nb).mean(axis=1)
    return steps, p


def plot_trace(
    trace: Trace, path: str | os.PathLike, max_points: int = 400, dpi: int = 72, max_layers: int = 12
) -> Path:
    """Draw each layer's per-expert load proportion (binned means) with the uniform share 1/E."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, p = binned(trace, max_points)
    L = min(trace.layers, max_layers)
    E = trace.experts
    cols = 2 if L > 1 else 1
    rows = math.ceil(L / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 1.9 * rows + 0.6), sharex=True, squeeze=False)
    cmap = plt.get_cmap("tab20" if E <= 20 else "viridis")
    for li in range(rows * cols):
        ax = axes[li // cols][li % cols]
        if li >= L:
            ax.axis("off")
            continue
        for e in range(E):
            ax.plot(
                steps,
                p[:, li, e],
                lw=0.8 if E <= 32 else 0.4,
                color=cmap(e % 20 if E <= 20 else e / max(1, E - 1)),
                alpha=0.9 if E <= 32 else 0.6,
            )
        ax.axhline(1.0 / E, color="black", lw=0.6, ls="--")
        name = trace.card.layer_names[li] if li < len(trace.card.layer_names) else f"layer{li}"
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, min(1.0, float(p[:, li, :].max()) * 1.1))
    for ax in axes[-1]:
        ax.set_xlabel(trace.card.step_unit, fontsize=8)
    m = trace.card.model
    fig.suptitle(
        f"{trace.id}: load proportion per expert ({E} experts, top-{m.top_k}, {m.router}, aux {m.aux_loss}); "
        f"mean of {math.ceil(trace.records / len(steps))} records per point",
        fontsize=8,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_paletted(fig, path, dpi)
    plt.close(fig)
    return path


def save_paletted(fig, path: Path, dpi: int) -> None:
    """Save as a PNG of 256 colours: a quarter of the bytes of matplotlib's RGBA output, the same to the eye
    (these plots are committed in docs/traces, one per built-in trace)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    buffer.seek(0)
    with Image.open(buffer) as image:
        paletted = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    paletted.save(path, format="PNG", optimize=True)
