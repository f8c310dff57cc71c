"""What every importer shares: file hashes for the card, and building the validated trace."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..guards import open_regular
from ..token_sample import validate
from ..trace import SOURCE_COUNTS, Card, ModelInfo, Trace


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(paths: Iterable[Path], root: Path | None = None) -> dict[str, str]:
    """name (relative to `root`) -> sha256, sorted by name."""
    out = {}
    for p in paths:
        name = str(p.relative_to(root)) if root is not None and p != root else p.name
        out[name] = sha256_file(p)
    return dict(sorted(out.items()))


def build_trace(
    counts: Any,
    steps: Any,
    *,
    path: Path,
    fmt: str,
    files: dict[str, str],
    layer_names: list[str] | None = None,
    static: bool = False,
    model: ModelInfo | None = None,
    step_unit: str = "training iteration",
    notes: str = "",
    extra: dict[str, Any] | None = None,
    tokens: dict[str, np.ndarray] | None = None,
    source_counts: np.ndarray | None = None,
    sources: dict[str, Any] | None = None,
) -> Trace:
    """Validate arrays read by an importer and give them a card naming the format and files; `tokens`, a
    token-level sample of the records (:mod:`datasets_registry.token_sample`), becomes the trace's extras, and
    so does `source_counts` ``[T, L, S, E]``, the counts split by the rank or node the tokens came from, which
    `sources` (``{"count", "unit", "layout"}``) describes on the card."""
    counts = np.asarray(counts)
    if (source_counts is None) != (sources is None):
        raise ValueError("build_trace: source_counts and sources go together")
    card = Card(
        id=path.stem.split(".")[0].lower().replace(" ", "-") or "imported",
        source={"format": fmt, "path": str(path), "files": files},
        model=model or ModelInfo(),
        step_unit=step_unit,
        layer_names=list(layer_names or []),
        static=static,
        notes=notes,
        extra={**(extra or {}), **({"sources": sources} if sources is not None else {})},
    )
    extras = {SOURCE_COUNTS: source_counts} if source_counts is not None else {}
    trace = Trace.from_arrays(counts, steps, card, source=str(path), extras=extras)
    if tokens is None:
        return trace
    return Trace(trace.counts, trace.steps, trace.card, {**validate(tokens, trace.counts, path), **trace.extras},
                 source=str(path))
